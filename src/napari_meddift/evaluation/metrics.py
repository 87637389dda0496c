"""Target registration error (TRE) in mm, summaries and tables.

TRE of a landmark = || (predicted - true) * spacing ||, with both points in voxel (z, y, x)
and the spacing in mm (z, y, x). This is the Learn2Reg / MedDIFT definition (axis-aligned
voxel grid; the direction matrix is a rotation and does not change lengths).
"""

from __future__ import annotations

import numpy as np

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


def tre_mm(pred_zyx, true_zyx, spacing_zyx) -> np.ndarray:
    """Per-point TRE in mm: ``||(pred - true) * spacing||``; (N,) float64."""
    pred = _points(pred_zyx, "predicted points")
    true = _points(true_zyx, "true points")
    if pred.shape != true.shape:
        raise MedDiftError(f"{pred.shape[0]} predicted points but {true.shape[0]} true points; give one prediction per landmark")
    return np.linalg.norm((pred - true) * _spacing(spacing_zyx), axis=1)


def summarize(errors) -> dict:
    """n, mean, std (population, ddof=0), median, p95 and max of per-point errors (mm).

    An empty input gives n=0 and NaN statistics; NaN/inf errors are a MedDiftError.
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if e.size == 0:
        return {"n": 0, **{k: float("nan") for k in SUMMARY_KEYS[1:]}}
    if not np.all(np.isfinite(e)):
        raise MedDiftError(f"{int(np.sum(~np.isfinite(e)))} error value(s) are NaN/inf; drop unmatched points before summarising")
    return {
        "n": int(e.size),
        "mean": float(e.mean()),
        "std": float(e.std()),
        "median": float(np.median(e)),
        "p95": float(np.percentile(e, 95)),
        "max": float(e.max()),
    }


def tre_table(pred_zyx, true_zyx, spacing_zyx, source_zyx=None) -> list[dict]:
    """One row per landmark: index, true and predicted voxel x,y,z, TRE in mm.

    With ``source_zyx`` (the points before registration/matching, e.g. the fixed landmarks
    when true are the moving ones) each row also has ``initial_mm``, the identity TRE.
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
    """Markdown table, one line per method: n, mean, std, median, p95, max (mm)."""
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
