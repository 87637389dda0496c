"""The explorer's state and compute steps, free of Qt (the view lives in ``_explorer.py``).

``ExplorerState`` is an evented dataclass (psygnal): the widget binds its controls to it and
re-runs the current query when levels, weights or the radius change. ``ExplorerEngine`` wraps a
:class:`~napari_meddift.matching.Matcher` and turns one request into a :class:`QueryResult`;
the matcher does all the search work (similarity map, best voxel, back-match).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from psygnal import evented

__all__ = ["ExplorerState", "QueryRequest", "QueryResult", "ExplorerEngine", "pick_along_ray", "format_status",
           "suggest_map_range"]


@evented
@dataclass
class ExplorerState:
    """What the user set in the explorer. ``radius`` None searches the whole target."""

    levels: tuple[str, ...] = ()
    weights: dict = field(default_factory=dict)
    radius: int | None = 16
    following: bool = True
    per_level: bool = False
    exclusion: int = 2


@dataclass(frozen=True)
class QueryRequest:
    """One search: a source voxel with the settings it runs under (a snapshot of the state)."""

    query_zyx: tuple[int, int, int]
    levels: tuple[str, ...]
    weights: tuple[tuple[str, float], ...]
    radius: int | None
    exclusion: int = 2
    consistency: bool = True
    t_event: float = field(default_factory=time.perf_counter)
    tag: str = "mouse"


@dataclass
class QueryResult:
    """What the view shows for one request."""

    request: QueryRequest
    target_zyx: tuple[int, int, int]
    score: float
    ambiguity: float
    offset: tuple[int, int, int]  # target voxel of fused[0, 0, 0]
    fused: np.ndarray
    per_level: dict[str, np.ndarray]
    fb_distance: float = math.nan
    consistent: bool | None = None
    compute_ms: float = 0.0


class ExplorerEngine:
    """Runs requests against one matcher; thread-safe (one lock around the matcher)."""

    def __init__(self, matcher):
        self.matcher = matcher
        self._lock = threading.Lock()

    @property
    def available_levels(self) -> list[str]:
        return list(self.matcher.available_levels)

    def request(self, query_zyx, state: ExplorerState, tag: str = "mouse", t_event: float | None = None) -> QueryRequest:
        levels = tuple(state.levels) or tuple(self.available_levels)
        weights = tuple((n, float(state.weights.get(n, 1.0))) for n in levels)
        return QueryRequest(
            query_zyx=tuple(int(v) for v in query_zyx),  # type: ignore[arg-type]
            levels=levels,
            weights=weights,
            radius=state.radius,
            exclusion=state.exclusion,
            tag=tag,
            t_event=time.perf_counter() if t_event is None else t_event,
        )

    def _configure(self, req: QueryRequest) -> None:
        m = self.matcher
        w = dict(req.weights)
        if list(m.levels) != list(req.levels) or any(abs(m.weights.get(n, 1.0) - v) > 0 for n, v in w.items()):
            m.set_levels(list(req.levels), w)

    def compute(self, req: QueryRequest) -> QueryResult:
        """Similarity map (fused and per level) and the best voxel in it."""
        t0 = time.perf_counter()
        with self._lock:
            self._configure(req)
            sim = self.matcher.similarity(req.query_zyx, req.radius, per_level=True)
            # best voxel of the map just computed, without searching a second time
            target_zyx, score, ambiguity = sim.best(req.exclusion)
        return QueryResult(
            request=req,
            target_zyx=target_zyx,
            score=score,
            ambiguity=ambiguity,
            offset=sim.offset,
            fused=sim.fused,
            per_level=sim.per_level,
            compute_ms=(time.perf_counter() - t0) * 1e3,
        )

    def consistency(self, result: QueryResult, fb_threshold: float = 1.5) -> tuple[float, bool]:
        """Forward-backward check: match the found target voxel back into the source."""
        req = result.request
        with self._lock:
            self._configure(req)
            back = self.matcher.backward.match(result.target_zyx, req.radius, exclusion=req.exclusion,
                                               check_consistency=False)
        fb = float(np.linalg.norm(np.subtract(back.target_zyx, req.query_zyx, dtype=np.float64)))
        return fb, bool(fb <= fb_threshold)

    def match_points(self, points_zyx, radius, progress=None):
        with self._lock:
            return self.matcher.match_points(points_zyx, radius, progress=progress)

    def set_levels(self, levels: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        """Validate a level choice now (raises MedDiftError), so the widget can refuse it."""
        with self._lock:
            self.matcher.set_levels(list(levels), dict(weights or {}))


def suggest_map_range(engine: "ExplorerEngine", ranges: Mapping[str, tuple[float, float]], radius: int | None,
                      fractions: Sequence[float] = (0.35, 0.65), quantile: float = 25.0) -> str:
    """The narrowest of ``ranges`` (name -> (low, high)) that shows the maps of this pair.

    Trained descriptors are alike over a whole window (on the demo pair a map's cosines lie
    between ~0.8 and 1 for most voxels), so a [-1, 1] colour range paints every map one colour;
    random or untrained ones spread around 0 and need [-1, 1].
    Samples the fused maps at the centre and a few grid points of the source (window ``radius``,
    at most 16; the whole-target setting is sampled with 16) and returns the narrowest range whose
    low end lies under the median of their ``quantile``-th percentiles. Chosen once per pair, so
    the maps stay comparable while the user explores.
    """
    shape = engine.matcher.source_shape
    r = 16 if radius is None else min(int(radius), 16)
    pts = [tuple(int(n) // 2 for n in shape)]
    pts += [tuple(int(f * (n - 1)) for f, n in zip(fs, shape))
            for fs in ((a, b, c) for a in fractions for b in fractions for c in fractions)]
    lows = []
    with engine._lock:
        for p in pts:
            f = engine.matcher.similarity(p, r).fused
            f = f[np.isfinite(f)]
            if f.size:
                lows.append(float(np.percentile(f, quantile)))
    if not lows:
        return next(iter(ranges))
    low = float(np.median(lows))
    fitting = [(hi - lo, name) for name, (lo, hi) in ranges.items() if lo <= low]
    return min(fitting)[1] if fitting else max((hi - lo, name) for name, (lo, hi) in ranges.items())[1]


def pick_along_ray(data, start, end, rendering: str = "mip", threshold: float | None = None, n: int | None = None):
    """The voxel a click in 3D means: along the ray from ``start`` to ``end`` (data coords).

    'iso' rendering: the first voxel at or above ``threshold``; 'minip': the darkest voxel;
    anything else (mip, attenuated_mip, translucent, average): the brightest voxel.
    Returns an integer (z, y, x) index or None when the ray misses the volume.
    """
    if start is None or end is None:
        return None
    start = np.asarray(start, float)[-3:]
    end = np.asarray(end, float)[-3:]
    shape = np.asarray(np.shape(data)[-3:])
    length = float(np.linalg.norm(end - start))
    n = n or max(2, int(math.ceil(length * 2)) + 1)
    pts = start[None] + np.linspace(0.0, 1.0, n)[:, None] * (end - start)[None]
    idx = np.clip(np.rint(pts).astype(np.int64), 0, shape - 1)
    vals = np.asarray(data[idx[:, 0], idx[:, 1], idx[:, 2]], dtype=np.float64)
    if rendering == "iso" and threshold is not None:
        hit = np.nonzero(vals >= threshold)[0]
        if hit.size == 0:
            return None
        k = int(hit[0])
    elif rendering == "minip":
        k = int(np.argmin(vals))
    else:
        k = int(np.argmax(vals))
    return tuple(int(v) for v in idx[k])


def _fmt_mm(v) -> str:
    return "(" + ", ".join(f"{x:.1f}" for x in v) + ") mm"


def format_status(result: QueryResult, src_mm, tgt_mm, pending_fb: bool = False) -> str:
    """The explorer's status line (voxels in z, y, x; mm in world z, y, x)."""
    q, t = result.request.query_zyx, result.target_zyx
    amb = "n/a" if not math.isfinite(result.ambiguity) else f"{result.ambiguity:.2f}"
    if pending_fb:
        fb = "checking..."
    elif result.consistent is None:
        fb = "not checked"
    else:
        fb = f"{'consistent' if result.consistent else 'INCONSISTENT'} (back-match {result.fb_distance:.1f} vox)"
    return (
        f"query {tuple(q)} vox {_fmt_mm(src_mm)}  ->  match {tuple(t)} vox {_fmt_mm(tgt_mm)}\n"
        f"score {result.score:.3f}   ambiguity {amb}   forward-backward: {fb}"
    )
