"""Target registration error (TRE) in mm, summaries and tables.

TRE of a landmark = || (predicted - true) * spacing ||, with both points in voxel (z, y, x)
and the spacing in mm (z, y, x). This is the Learn2Reg / MedDIFT definition (axis-aligned
voxel grid; the direction matrix is a rotation and does not change lengths).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ..errors import MedDiftError

SUMMARY_KEYS = ("n", "mean", "std", "median", "p95", "max")


def _points(a, name: str) -> np.ndarray:
    p = np.asarray(a, dtype=np.float64)
    if p.ndim == 1 and p.shape == (3,):
        p = p[None]
    if p.ndim != 2 or p.shape[1] != 3:
        raise MedDiftError(f"{name} must be (N, 3) voxel points in (z, y, x) order, got shape {p.shape}")
    return p


def _spacing(spacing_zyx) -> np.ndarray:
    sp = np.asarray(spacing_zyx, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise MedDiftError(f"spacing must be three positive numbers in (z, y, x) mm, got {spacing_zyx}")
    return sp


def tre_mm(pred_zyx: ArrayLike, true_zyx: ArrayLike, spacing_zyx: ArrayLike) -> np.ndarray:
    """Per-point target registration error: ``||(pred - true) * spacing||``.

    ``pred_zyx``: predicted voxel points, shape (N, 3) or (3,), (z, y, x), floats allowed.
    ``true_zyx``: true voxel points, same shape, on the same grid.
    ``spacing_zyx``: voxel spacing (z, y, x) in mm, three positive numbers.

    Returns TRE in mm, shape (N,), float64.

    Raises MedDiftError: wrong shapes, different point counts or a non-positive spacing.
    """
    pred = _points(pred_zyx, "predicted points")
    true = _points(true_zyx, "true points")
    if pred.shape != true.shape:
        raise MedDiftError(
            f"{pred.shape[0]} predicted points but {true.shape[0]} true points; give one prediction per landmark"
        )
    return np.linalg.norm((pred - true) * _spacing(spacing_zyx), axis=1)


def json_ready(obj):
    """``obj`` with NaN/inf floats as None, so ``json.dumps`` writes valid JSON (``null``, never ``NaN``)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def summarize(errors: ArrayLike) -> dict[str, float]:
    """Summary statistics of per-point errors.

    ``errors``: per-point errors in mm, any shape (flattened), e.g. from :func:`tre_mm`.

    Returns ``{"n", "mean", "std" (population, ddof=0), "median", "p95", "max"}``, all in mm but
    ``n``; an empty input gives n=0 and NaN statistics.

    Raises MedDiftError: an error value is NaN or infinite.
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if e.size == 0:
        return {"n": 0, **{k: float("nan") for k in SUMMARY_KEYS[1:]}}
    if not np.all(np.isfinite(e)):
        raise MedDiftError(
            f"{int(np.sum(~np.isfinite(e)))} error value(s) are NaN/inf; drop unmatched points before summarising"
        )
    return {
        "n": int(e.size),
        "mean": float(e.mean()),
        "std": float(e.std()),
        "median": float(np.median(e)),
        "p95": float(np.percentile(e, 95)),
        "max": float(e.max()),
    }


def tre_table(
    pred_zyx: ArrayLike, true_zyx: ArrayLike, spacing_zyx: ArrayLike, source_zyx: ArrayLike | None = None
) -> list[dict]:
    """One row per landmark, for CSV output and the landmark widget.

    ``pred_zyx``: predicted voxel points (N, 3), (z, y, x).
    ``true_zyx``: true voxel points (N, 3), (z, y, x).
    ``spacing_zyx``: voxel spacing (z, y, x) in mm.
    ``source_zyx``: the points before registration/matching (N, 3), e.g. the fixed landmarks when
    ``true_zyx`` are the moving ones; adds ``initial_mm``, the identity TRE.

    Returns rows ``{"index", "true_x", "true_y", "true_z", "pred_x", "pred_y", "pred_z", "tre_mm"}``
    (voxel coordinates, TRE in mm), plus ``"initial_mm"`` with ``source_zyx``.
    """
    pred = _points(pred_zyx, "predicted points")
    true = _points(true_zyx, "true points")
    err = tre_mm(pred, true, spacing_zyx)
    init = None
    if source_zyx is not None:
        init = tre_mm(_points(source_zyx, "source points"), true, spacing_zyx)
    rows = []
    for i in range(pred.shape[0]):
        row = {
            "index": i,
            "true_x": float(true[i, 2]), "true_y": float(true[i, 1]), "true_z": float(true[i, 0]),
            "pred_x": float(pred[i, 2]), "pred_y": float(pred[i, 1]), "pred_z": float(pred[i, 0]),
            "tre_mm": float(err[i]),
        }
        if init is not None:
            row["initial_mm"] = float(init[i])
        rows.append(row)
    return rows


def format_summary_table(rows: dict[str, dict], digits: int = 2) -> str:
    """A Markdown table, one line per method.

    ``rows``: ``{method: summary}`` with summaries from :func:`summarize`.
    ``digits``: decimals of the mm columns.

    Returns the table (header, separator, one row per method: n, mean, std, median, p95, max in mm),
    ending in a newline.

    Raises MedDiftError: a summary lacks one of the keys.
    """
    head = "| method | n | mean (mm) | std (mm) | median (mm) | p95 (mm) | max (mm) |"
    sep = "|---|---:|---:|---:|---:|---:|---:|"
    lines = [head, sep]
    for method, s in rows.items():
        missing = [k for k in SUMMARY_KEYS if k not in s]
        if missing:
            raise MedDiftError(f"summary for '{method}' lacks {', '.join(missing)}; build it with summarize()")
        vals = [f"{float(s[k]):.{digits}f}" for k in SUMMARY_KEYS[1:]]
        lines.append(f"| {method} | {int(s['n'])} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def region_summary(errors, points_zyx, mask=None, superior_axis: int = 0, superior_sign: float = 1.0) -> dict:
    """TRE summaries (``summarize``) per region of the true points ``points_zyx`` (N, 3) voxels.

    Height: thirds of the lung's cranio-caudal extent along voxel axis ``superior_axis``
    (``superior_sign`` +1 when the index grows superiorly), from ``mask`` (a boolean lung mask on
    the same grid) or, without one, from the points' own extent: ``upper third`` (apex),
    ``middle third``, ``lower third`` (base, near the diaphragm). With a mask also ``inside lung
    mask`` / ``outside lung mask`` (nearest voxel). An empty region is ``{"n": 0}``.
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    p = _points(points_zyx, "true points")
    if p.shape[0] != e.size:
        raise MedDiftError(f"{e.size} errors but {p.shape[0]} points; give one error per landmark")
    h = p[:, superior_axis] * float(np.sign(superior_sign) or 1.0)
    if mask is not None:
        m = np.asarray(mask, bool)
        idx = np.nonzero(m.any(axis=tuple(a for a in range(3) if a != superior_axis)))[0]
        if idx.size == 0:
            raise MedDiftError("the lung mask is empty; give the mask of the image the truth points are in")
        ends = np.array([idx.min(), idx.max()], float) * float(np.sign(superior_sign) or 1.0)
        lo, hi = ends.min(), ends.max()
    else:
        lo, hi = (float(h.min()), float(h.max())) if h.size else (0.0, 1.0)
    t1, t2 = lo + (hi - lo) / 3.0, lo + 2.0 * (hi - lo) / 3.0
    regions = {"upper third": h >= t2, "middle third": (h >= t1) & (h < t2), "lower third": h < t1}
    if mask is not None:
        near = np.clip(np.rint(p).astype(np.int64), 0, np.array(m.shape) - 1)
        inside = m[near[:, 0], near[:, 1], near[:, 2]]
        regions.update({"inside lung mask": inside, "outside lung mask": ~inside})
    return {name: summarize(e[sel]) if sel.any() else {"n": 0} for name, sel in regions.items()}
