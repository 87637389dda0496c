"""Similarity maps for display, and how sure a match is: display modes and the rivalry measure.

Trained descriptors are alike over a whole search window (on the demo pair mini's best score is
0.993-0.999 at 90% of the landmarks, with much of the window just below it), so a raw cosine map
in a fixed range looks flat near its peak and the usual ratio "best rival / best score" sits at
0.990-1.000 everywhere. Both are fixed here by measuring *within the window*:

* display modes: ``raw cosine`` (unchanged), ``min-max in window`` ((s - min) / (max - min)) and
  ``rank (percentile)`` (the fraction of the window's voxels scoring lower), the last two in [0, 1];
* rivalry (``peak_stats``): with s1 the best score, s2 the best score *outside a sphere of
  radius r voxels* around the best voxel, and m the window's median score,

      rivalry = 1 - (s1 - s2) / (s1 - m)        (clipped to [0, 1])

  0: the peak stands alone (every rival is no better than the median); 1: a rival elsewhere in
  the window is as good as the match. It does not change when all scores are scaled or shifted
  together, so it means the same for MAISI, mini or MIND. Peak-to-sidelobe ratio
  ``psr = (s1 - mean(outside)) / std(outside)`` is reported beside it. (The matcher's
  ``ambiguity``, what ``meddift match`` writes, is the plain ratio s2 / s1 over a cube: another
  measure, hence another name.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .state import DISPLAY_MODES

__all__ = ["PeakStats", "peak_stats", "display_map", "display_limits", "suggest_map_range"]


@dataclass(frozen=True)
class PeakStats:
    """How a map's best voxel stands out: scores and the derived rivalry / PSR."""

    best: float
    rival: float  # best score outside the exclusion sphere (nan: no voxel outside)
    median: float
    rivalry: float  # in [0, 1]; nan when there is no rival
    psr: float  # peak-to-sidelobe ratio; nan when undefined


def _outside_sphere(shape: Sequence[int], center: Sequence[int], radius: float) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d2 = (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2
    return d2 > float(radius) ** 2


def peak_stats(fused: np.ndarray, best_local_zyx: Sequence[int], exclusion: float = 3.0) -> PeakStats:
    """Rivalry and PSR of map ``fused`` (z, y, x) whose best voxel is ``best_local_zyx``
    (an index into ``fused``); rivals are sought outside a sphere of ``exclusion`` voxels."""
    f = np.asarray(fused, dtype=np.float32)
    b = tuple(int(v) for v in best_local_zyx)
    s1 = float(f[b])
    finite = np.isfinite(f)
    outside = _outside_sphere(f.shape, b, exclusion) & finite
    if not outside.any() or not math.isfinite(s1):
        return PeakStats(s1, math.nan, math.nan, math.nan, math.nan)
    side = f[outside]
    s2 = float(side.max())
    med = float(np.median(f[finite]))
    spread = s1 - med
    amb = 1.0 if spread <= 1e-12 else float(np.clip(1.0 - (s1 - s2) / spread, 0.0, 1.0))
    sd = float(side.std())
    psr = float((s1 - float(side.mean())) / sd) if sd > 1e-12 else math.nan
    return PeakStats(s1, s2, med, amb, psr)


def display_map(values: np.ndarray, mode: str) -> np.ndarray:
    """``values`` (a map, NaN where undefined) painted by ``mode`` (one of ``DISPLAY_MODES``);
    float32, NaN kept. Raw: unchanged; min-max and rank: in [0, 1] within the map."""
    if mode not in DISPLAY_MODES:
        raise ValueError(f"unknown display mode {mode!r}; use one of {', '.join(DISPLAY_MODES)}")
    v = np.asarray(values, dtype=np.float32)
    if mode == DISPLAY_MODES[0]:
        return v
    out = np.full(v.shape, np.nan, np.float32)
    finite = np.isfinite(v)
    x = v[finite]
    if x.size == 0:
        return out
    if mode == DISPLAY_MODES[1]:
        lo, hi = float(x.min()), float(x.max())
        out[finite] = (x - lo) / (hi - lo) if hi > lo else 0.5
    else:
        order = np.argsort(x, kind="stable")
        ranks = np.empty(x.size, np.float32)
        ranks[order] = np.arange(x.size, dtype=np.float32)
        out[finite] = ranks / max(1, x.size - 1)
    return out


def display_limits(mode: str, raw_range: tuple[float, float]) -> tuple[float, float]:
    """Colour limits for ``mode``: the chosen fixed range for raw cosine, [0, 1] otherwise."""
    return tuple(raw_range) if mode == DISPLAY_MODES[0] else (0.0, 1.0)  # type: ignore[return-value]


def suggest_map_range(engine, ranges: Mapping[str, tuple[float, float]], radius,
                      fractions: Sequence[float] = (0.35, 0.65), quantile: float = 25.0) -> str:
    """The narrowest of ``ranges`` (name -> (low, high)) that shows raw maps of this pair.

    Samples the fused maps at the centre and a grid of source points (window ``radius``: any form
    the matcher takes, at most 16 voxels per axis) and returns the narrowest range whose low end lies
    under the median of their ``quantile``-th percentiles. Chosen once per pair, so raw maps stay
    comparable.
    """
    shape = engine.matcher.source_shape
    vox = engine.matcher.voxel_radius(radius)
    r = (16, 16, 16) if vox is None else tuple(min(int(v), 16) for v in vox)
    pts = [tuple(int(n) // 2 for n in shape)]
    pts += [tuple(int(f * (n - 1)) for f, n in zip(fs, shape))
            for fs in ((a, b, c) for a in fractions for b in fractions for c in fractions)]
    lows = []
    for p in pts:
        f = engine.similarity(p, r).fused
        f = f[np.isfinite(f)]
        if f.size:
            lows.append(float(np.percentile(f, quantile)))
    if not lows:
        return next(iter(ranges))
    low = float(np.median(lows))
    fitting = [(hi - lo, name) for name, (lo, hi) in ranges.items() if lo <= low]
    return min(fitting)[1] if fitting else max((hi - lo, name) for name, (lo, hi) in ranges.items())[1]
