"""Feature quality: which levels and which timestep work on this pair, one click from the explorer.

The dock runs the feature-quality report (``evaluation/report.py``) over the explorer's pair
and landmarks: the stores of each timestep are taken from the cache (extracted there with the
connected stores' backbone and settings where missing), then every configuration (each level,
the fused default, every pair, the fusions typed in) is matched at every timestep, on a napari
worker with progress and Cancel (``_task_panel.TaskPanel``). The heatmaps (matplotlib, napari's
theme colours) show configurations x timesteps, one panel per metric. Clicking a cell sets the
explorer to that configuration's levels, weights and timestep (its public ``state`` and
``session``), re-colours the landmarks by that configuration's errors and takes both viewers to
its worst landmark.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from magicgui.widgets import Container, Label, LineEdit
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QScrollArea, QVBoxLayout, QWidget

from ..errors import MedDiftError
from ..matching.window import Radius, radius_tag
from ._task_panel import TaskPanel
from .explorer import explorer_in

__all__ = ["FeatureQualityWidget"]


def _theme_colors(viewer) -> dict:
    """napari's theme (background, text) for the figure; plain colours when it cannot be read."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(getattr(viewer, "theme", "dark"))
        return {"background": theme.background.as_hex(), "text": theme.text.as_hex()}
    except Exception:  # pragma: no cover - a cosmetic fallback
        return {"background": "#262930", "text": "#f0f1f2"}


class FeatureQualityWidget(QWidget):
    """The "Feature quality" dock (see the module docstring).

    ``run(run_async=True)`` starts the report; ``report`` holds the last one; ``choose(name, t)``
    applies a cell to the explorer (what a click on the heatmap does); ``cell_chosen`` fires
    after it with ``(configuration, timestep)``; ``report_ready`` when a report is drawn.
    """

    report_ready = Signal(object)
    cell_chosen = Signal(object)

    def __init__(self, napari_viewer, explorer=None, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._explorer = explorer
        self.report = None
        self.pairs: dict = {}
        self.panels: list = []
        self.chosen: tuple | None = None
        self.timesteps = LineEdit(label="Timesteps", value="0,20,50,100,200",
                                  tooltip="timesteps to compare; missing stores are extracted into the cache")
        self.fusions = LineEdit(label="Fusions", value="",
                                tooltip="extra fusions, separated by spaces: up0+up2 up0:2+up1:1")
        self.panel = TaskPanel("Feature quality report", "Run report",
                               cancel_note="the stores extracted so far stay in the cache")
        self.panel.run_button.changed.connect(lambda *_: self.run())
        self.hint = Label(value="Runs over the explorer's pair and landmarks. Click a cell: the explorer "
                                "switches to that configuration and shows its worst landmark.")
        self.hint.native.setWordWrap(True)
        self.form = Container(widgets=[self.timesteps, self.fusions, *self.panel.widgets, self.hint])
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(5, 5))
        self.colors = _theme_colors(napari_viewer)
        self.figure.set_facecolor(self.colors["background"])
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(320)
        self.canvas.mpl_connect("button_press_event", self._on_click)
        self.scroll = QScrollArea()  # a tall report scrolls inside the dock
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.canvas)
        lay = QVBoxLayout(self)
        lay.addWidget(self.form.native)
        lay.addWidget(self.scroll, 1)

    # ------------------------------------------------------------------ the explorer

    @property
    def explorer(self):
        if self._explorer is None or getattr(self._explorer, "closed", False):
            self._explorer = explorer_in(self.viewer)
        return self._explorer

    def _inputs(self):
        """What the report runs on, checked before any work: (explorer, timesteps, fusions)."""
        from ..evaluation.report import configurations
        from ..explorer import parse_timesteps

        ex = self.explorer
        if ex is None or ex.engine is None:
            raise MedDiftError("connect a pair in the Correspondence explorer first")
        session = ex.session
        if session.landmarks is None or len(session.landmarks) == 0:
            raise MedDiftError("load landmark pairs (Landmarks dock) first: the report matches them")
        if session.stores is None:
            raise MedDiftError("connect the pair from descriptor stores (their backbone and settings are reused)")
        ts = parse_timesteps(self.timesteps.value)
        fusions = [f for f in str(self.fusions.value).replace(";", " ").split() if f]
        configurations(session.stores[0].level_names, fusions)  # a mistyped fusion: one line, now
        return ex, ts, fusions

    # ------------------------------------------------------------------ running

    def run(self, run_async: bool = True, cache_dir=None, pairs: dict | None = None):
        """Run the report in the background (progress, Cancel); None when refused (red line).

        ``pairs``: ``{timestep: (source_store, target_store)}`` to report on instead of the
        timesteps typed in (default: those, from the cache, extracted where missing)."""
        from ..evaluation.report import feature_report
        from ..explorer import extract_timesteps
        from ..io.cache import default_cache_dir
        from ._layers import layer_to_volume

        try:
            ex, ts, fusions = self._inputs()
        except MedDiftError as exc:
            self.panel.refuse(str(exc))
            return None
        given = dict(pairs) if pairs is not None else None
        if given is not None:
            ts = tuple(given)
        session = ex.session
        lm = session.landmarks
        ref = session.stores[0]
        vols = layer_to_volume(ex.source_layer), layer_to_volume(ex.target_layer)
        # the explorer's search window: state.radius is millimetres (None: the whole target)
        radius = None if ex.state.radius is None else Radius.mm(ex.state.radius)
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        have = set(session.engines)

        def work(progress):
            from ..matching import Matcher

            last = [0.0]

            def stage(first, share):
                # per mille of the whole job, at most ten steps a second: each step is a queued
                # GUI update, and thousands of them (one per landmark and configuration) queued
                # faster than the GUI drains them overflowed the stack of napari's progress bar
                def relay(d, n, m):
                    now = time.perf_counter()
                    if now - last[0] >= 0.1 or d >= n:
                        last[0] = now
                        progress(first + int(share * d / max(n, 1)), 1000, m)
                return relay

            if given is not None:
                pairs = given
            else:  # the connected stores serve their own timestep; the others come from the cache
                own = session.connected_timestep
                pairs = extract_timesteps(vols[0], vols[1], ref, [t for t in ts if t != own], cache,
                                          progress=stage(0, 300)) if set(ts) - {own} else {}
                if own in ts:
                    pairs[own] = tuple(session.stores)
            report = feature_report(pairs, lm.source_zyx, lm.target_zyx, fusions=fusions, radii=(radius,),
                                    progress=stage(300, 650))
            progress(950, 1000, "loading the timesteps for the explorer")
            matchers = {t: Matcher.from_stores(*pairs[t]) for t in ts if t not in have}
            return report, pairs, matchers

        def done(out):
            report, pairs, matchers = out
            for t, m in matchers.items():
                if t not in session.engines:
                    session.add_timestep(t, m)
            self.show_report(report, pairs)
            best = report.best("tre_mean_mm") if report.has_truth else report.best("fb_consistent_pct")
            self.panel.done(f"best: {best['configuration']} at t={best['timestep']}"
                            + (f" (TRE mean {best['tre_mean_mm']:.2f} mm)" if report.has_truth else ""))

        if not run_async:
            done(work(lambda *a: None))
            return None
        return self.panel.start(work, done)

    def show_report(self, report, pairs=None) -> None:
        """Draw ``report`` (and keep its stores per timestep)."""
        from ..evaluation.report_figure import draw_report, panel_metrics

        self.report = report
        self.pairs = dict(pairs or {})
        rows, n = len(report.configurations), len(panel_metrics(report))
        inches = 0.6 + n * (0.9 + 0.24 * rows)  # one panel per row: readable in a narrow dock
        self.figure.set_size_inches(self.figure.get_figwidth(), inches)
        self.canvas.setMinimumHeight(int(inches * self.figure.dpi / (self.canvas.device_pixel_ratio or 1)))
        self.panels = draw_report(self.figure, report, colors=self.colors, ncols=1, fontsize=7)
        self.canvas.draw()
        self.report_ready.emit(report)

    # ------------------------------------------------------------------ choosing a cell

    def cell_at(self, panel_index: int, row: int, col: int) -> tuple[str, int | None]:
        """(configuration, timestep) of heatmap cell (row, col) (the same in every panel)."""
        return self.report.configurations[row].name, self.report.timesteps[col]

    def _on_click(self, event) -> None:
        if self.report is None or event.inaxes is None or event.xdata is None:
            return
        for k, p in enumerate(self.panels):
            if p.axes is event.inaxes:
                row, col = int(round(event.ydata)), int(round(event.xdata))
                if 0 <= row < len(self.report.configurations) and 0 <= col < len(self.report.timesteps):
                    self.choose(*self.cell_at(k, row, col))
                return

    def choose(self, configuration: str, timestep) -> None:
        """Set the explorer to this cell: levels, weights and timestep; landmarks coloured by this
        configuration's errors; both viewers at its worst landmark."""
        from ..explorer import LandmarkSet

        rep, ex = self.report, self.explorer
        if rep is None or ex is None or ex.engine is None:
            return
        config = rep.configuration(configuration)
        if timestep in ex.session.engines:
            ex.state.timestep = timestep
        if not ex.set_levels(config.levels, config.weight_map):
            return
        table = rep.matches[(configuration, timestep, rep.radii[0])]
        old = ex.session.landmarks
        lm = LandmarkSet(rep.source_points, rep.target_points if rep.has_truth else old.target_zyx,
                         old.spacing_zyx, predicted=table.target_zyx.astype(float),
                         score=table.score.astype(float),
                         settings={"levels": list(config.levels), "weights": config.weight_map,
                                   "radius": radius_tag(rep.radii[0]), "timestep": timestep,
                                   "source": "feature quality report"})
        ex.session.apply_landmarks(lm)
        err = lm.errors_mm
        self.chosen = (configuration, timestep)
        self._mark(configuration, timestep)
        if np.isfinite(err).any():
            worst = int(np.nanargmax(err))
            ex.go_to_landmark(worst)
            self.panel.message.value = (f"{configuration} at t={timestep}: worst landmark #{worst} "
                                        f"({err[worst]:.1f} mm)")
        self.cell_chosen.emit(self.chosen)

    def _mark(self, configuration, timestep) -> None:
        """A frame around the chosen cell in every panel."""
        from matplotlib.patches import Rectangle

        row = [c.name for c in self.report.configurations].index(configuration)
        col = list(self.report.timesteps).index(timestep)
        for p in self.panels:
            for patch in list(p.axes.patches):
                patch.remove()
            p.axes.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="#ff3030", linewidth=2))
        self.canvas.draw_idle()

    def cell_center(self, panel_index: int, configuration: str, timestep) -> tuple[float, float]:
        """Display (pixel) coordinates of a cell's centre in panel ``panel_index`` (for tests)."""
        row = [c.name for c in self.report.configurations].index(configuration)
        col = list(self.report.timesteps).index(timestep)
        x, y = self.panels[panel_index].axes.transData.transform((col, row))
        return float(x), float(y)

