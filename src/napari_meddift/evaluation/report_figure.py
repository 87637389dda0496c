"""The feature-quality report as heatmaps: configurations x timesteps, one panel per metric.

``draw_report(fig, report)`` draws into a matplotlib Figure (the CLI's PNG and the napari dock
share it); ``save_report_figure(report, path)`` writes the PNG. matplotlib is optional
(``pip install matplotlib``, in the ``napari`` and ``all`` extras).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedDiftError
from .report import METRICS, FeatureReport

__all__ = ["draw_report", "save_report_figure", "panel_metrics", "Panel"]


@dataclass
class Panel:
    """One heatmap: its axes and metric; row i is ``report.configurations[i]``, column j ``report.timesteps[j]``."""

    axes: Any
    metric: str


def panel_metrics(report: FeatureReport) -> list[str]:
    """The metrics drawn: TRE mean and % within 2 mm with truth, then consistency and ambiguity."""
    out = ["tre_mean_mm", "within_2mm_pct"] if report.has_truth else []
    return out + ["fb_consistent_pct", "ambiguity_mean"]


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the install
        raise MedDiftError("the report's heatmap needs matplotlib: pip install matplotlib "
                           "(or, from the clone, pip install -e \".[all]\")") from None


def _fmt(v: float, metric: str) -> str:
    if not math.isfinite(v):
        return ""
    if metric.endswith("_pct"):
        return f"{v:.0f}"
    if metric == "ambiguity_mean":  # near 1 on trained features: three decimals, no leading zero
        return f"{v:.3f}".removeprefix("0")
    return f"{v:.2f}"


def _column(report: FeatureReport, t) -> str:
    """``t=20`` and, where known, the noise/signal ratio under it (the title says so)."""
    head = "t=?" if t is None else f"t={t}"
    ns = next((r["noise_signal"] for r in report.rows if r["timestep"] == t), math.nan)
    return head if not math.isfinite(ns) else f"{head}\n{ns:.2f}"


def draw_report(fig, report: FeatureReport, radius=..., region: str = "all", metrics=None,
                colors: dict | None = None, title: str | None = None, ncols: int | None = None,
                fontsize: float = 8) -> list[Panel]:
    """Draw one heatmap per metric into ``fig`` (cleared first); returns the panels.

    ``radius``: which search (None: global; not given: the report's first); ``colors``: ``{"text", "background"}``
    (e.g. napari's theme) for labels and the figure face; ``ncols``: panels per row (default 2,
    a narrow dock takes 1). Each cell is annotated with its value;
    the colour scale runs from worse (dark) to better (bright) for every metric.
    """
    _require_matplotlib()
    colors = dict(colors or {})
    text, face = colors.get("text", "black"), colors.get("background", "white")
    metrics = list(metrics or panel_metrics(report))
    fig.clear()
    fig.set_facecolor(face)
    rows = [c.name for c in report.configurations]
    cols = [_column(report, t) for t in report.timesteps]
    panels = []
    n = len(metrics)
    ncols = max(1, min(n, ncols or 2))
    nrows = int(math.ceil(n / ncols))
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.set_facecolor(face)
        data = report.grid(metric, radius, region)
        label, lower_better = METRICS[metric]
        cmap = "viridis_r" if lower_better else "viridis"
        finite = data[np.isfinite(data)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if vmax <= vmin:
            vmax = vmin + 1e-9
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                       interpolation="nearest")
        ax.set_xticks(range(len(cols)), cols, color=text, fontsize=fontsize - 1)
        ax.set_yticks(range(len(rows)), rows if k % ncols == 0 else [""] * len(rows), color=text, fontsize=fontsize)
        ax.set_title(label, color=text, fontsize=fontsize + 1)
        ax.tick_params(colors=text, length=0)
        for s in ax.spines.values():
            s.set_visible(False)
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                v = data[i, j]
                if math.isfinite(v):
                    bright = (v - vmin) / (vmax - vmin)
                    bright = 1.0 - bright if lower_better else bright
                    ax.text(j, i, _fmt(v, metric), ha="center", va="center", fontsize=fontsize - 1,
                            color="black" if bright > 0.6 else "white")
        cb = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
        cb.ax.tick_params(colors=text, labelsize=fontsize - 1)
        cb.outline.set_visible(False)
        panels.append(Panel(ax, metric))
    radius = report.radii[0] if radius is ... else radius
    search = "global search" if radius is None else f"window radius {radius}"
    head = title or (f"{report.meta.get('n_points', '')} landmarks, {search}"
                     + ("" if region == "all" else f", region {region}"))
    fig.suptitle(head + "\ncolumns: timestep t and its noise/signal", color=text, fontsize=fontsize + 1)
    # a layout engine, not one tight_layout call: a canvas resized later (a dock) lays out again
    fig.set_layout_engine("tight", rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return panels


def save_report_figure(report: FeatureReport, path, radius=..., region: str = "all", dpi: int = 120) -> Path:
    """Write the heatmaps of ``report`` as a PNG (no display needed)."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    rows, n = len(report.configurations), len(panel_metrics(report))
    fig = Figure(figsize=(max(8.0, 1.6 * len(report.timesteps) + 4), 1.2 + (0.32 * rows + 0.9) * math.ceil(n / 2)))
    draw_report(fig, report, radius, region)
    path = Path(path)
    fig.savefig(path, dpi=dpi, facecolor=fig.get_facecolor())
    return path
