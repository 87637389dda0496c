"""One search, snapshot to result: the explorer's compute step over a Matcher (no Qt, no napari).

A ``QueryRequest`` freezes the settings a search runs under (so a worker thread never reads a
state the user is changing); ``ExplorerEngine.compute`` turns it into a ``QueryResult``: the
fused and per-level cosine maps over the window (``Matcher.similarity``), the best voxel by the
matcher's own rule (``SimilarityResult.best``) and the rivalry of that map (``maps.peak_stats``).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .maps import PeakStats, peak_stats

__all__ = ["QueryRequest", "QueryResult", "ExplorerEngine", "pick_along_ray"]


@dataclass(frozen=True)
class QueryRequest:
    """One search: a source voxel (z, y, x) with the settings it runs under."""

    query_zyx: tuple[int, int, int]
    levels: tuple[str, ...]
    weights: tuple[tuple[str, float], ...]
    radius: object  # None (whole target) | voxels (int or (z, y, x)) | matching.window.Radius (mm)
    exclusion: int = 3
    timestep: int | None = None
    display_mode: str = "raw cosine"
    compare: tuple = ()  # timesteps whose maps go in the compare strip
    t_event: float = field(default_factory=time.perf_counter)
    tag: str = "mouse"


@dataclass
class QueryResult:
    """What the views show for one request. Maps are (z, y, x) over the target box starting at
    ``offset``; ``display`` holds them painted by the request's display mode."""

    request: QueryRequest
    target_zyx: tuple[int, int, int]
    score: float
    peak: PeakStats
    offset: tuple[int, int, int]
    fused: np.ndarray
    per_level: dict[str, np.ndarray]
    display: dict[str, np.ndarray] = field(default_factory=dict)  # 'fused', level names, 't=<k>'
    compare: dict[int, np.ndarray] = field(default_factory=dict)  # timestep -> fused map (raw)
    truth: object | None = None  # truth.TruthAnswer
    error_mm: float = math.nan
    fb_distance: float = math.nan
    consistent: bool | None = None
    compute_ms: float = 0.0

    @property
    def rivalry(self) -> float:
        return self.peak.rivalry


class ExplorerEngine:
    """Runs requests against one matcher; thread-safe (one lock around the matcher)."""

    def __init__(self, matcher):
        self.matcher = matcher
        # every mouse move is a window: read full-image norm maps, built once, instead of a Gram
        # pass over each window's nodes (3-6x the search). ``warm`` builds them ahead of the first
        # query (the session does it in the background); a query that comes first waits for it
        # (the engine's lock) or builds what it needs
        matcher.cache_norms = True
        self._lock = threading.Lock()
        self.warmed = threading.Event()

    def warm(self, source: bool = True) -> None:
        """Build the matcher's norm maps now: the target's (the live map), then with ``source``
        the source's (the consistency check). Sets ``warmed`` even when it fails (queries then
        build what they need)."""
        try:
            with self._lock:
                self.matcher.warm_norms(source=source)
        except Exception:  # noqa: BLE001  # pragma: no cover - the first query builds what it needs and reports
            pass
        finally:
            self.warmed.set()

    @property
    def available_levels(self) -> list[str]:
        return list(self.matcher.available_levels)

    def _configure(self, levels: Sequence[str], weights: Mapping[str, float]) -> None:
        m = self.matcher
        if list(m.levels) != list(levels) or any(abs(m.weights.get(n, 1.0) - v) > 0 for n, v in weights.items()):
            m.set_levels(list(levels), dict(weights))

    def similarity(self, query_zyx, radius, levels: Sequence[str] | None = None,
                   weights: Mapping[str, float] | None = None, per_level: bool = False):
        """``Matcher.similarity`` under a level choice (None: the matcher's current one)."""
        with self._lock:
            if levels:
                self._configure(levels, dict(weights or {}))
            return self.matcher.similarity(tuple(int(v) for v in query_zyx), radius, per_level=per_level)

    def compute(self, req: QueryRequest) -> QueryResult:
        """Similarity map (fused and per level), the best voxel in it and its rivalry."""
        t0 = time.perf_counter()
        sim = self.similarity(req.query_zyx, req.radius, req.levels, dict(req.weights), per_level=True)
        # best voxel of the map just computed (the matcher's rule), without a second search
        target_zyx, score, _ = sim.best(2)
        local = np.subtract(target_zyx, sim.offset)
        peak = peak_stats(sim.fused, local, req.exclusion)
        return QueryResult(request=req, target_zyx=target_zyx, score=score, peak=peak, offset=sim.offset,
                           fused=sim.fused, per_level=sim.per_level, compute_ms=(time.perf_counter() - t0) * 1e3)

    def consistency(self, result: QueryResult, fb_threshold: float = 1.5) -> tuple[float, bool]:
        """Forward-backward check: match the found target voxel back into the source."""
        req = result.request
        with self._lock:
            self._configure(req.levels, dict(req.weights))
            back = self.matcher.backward.match(result.target_zyx, req.radius, exclusion=2, check_consistency=False)
        fb = float(np.linalg.norm(np.subtract(back.target_zyx, req.query_zyx, dtype=np.float64)))
        return fb, bool(fb <= fb_threshold)

    def set_levels(self, levels: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        """Validate a level choice now (raises MedDiftError), so a control can refuse it."""
        with self._lock:
            self.matcher.set_levels(list(levels), dict(weights or {}))


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
