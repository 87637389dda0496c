"""The Matcher: windowed and global search of one source voxel or many, with consistency checks."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from ..errors import MedDiftError
from ..progress import ProgressCallback
from .global_search import GlobalSearch
from .grid import _Side, best_in_maps
from .results import Match, MatchTable, SimilarityResult
from .window import RadiusLike, voxel_radius

if TYPE_CHECKING:
    from ..io.store import LevelSource


@contextmanager
def _torch_threads(n: int | None):
    """Run a block with n intra-op threads (None: leave as is), restoring the setting after.

    A windowed query is a few hundred tiny ops and a global one is memory-bound; on a small
    shared CPU the per-op fork/join of a thread pool costs more than it gains.
    """
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------------------
# the matcher


@dataclass
class SearchSettings:
    """The knobs of a :class:`Matcher`'s search and their defaults, in one place.

    A matcher holds them as its own attributes (``matcher.cache_norms = True``); its
    :attr:`~Matcher.backward` matcher is given the same ones (:meth:`of`, :meth:`apply`).
    """

    #: torch intra-op threads for the matcher's CPU work; None keeps torch's setting. One by
    #: default: the work is many small or memory-bound ops, and on a small shared CPU the
    #: thread pool's fork/join made queries 4-40x slower (docs/performance.md); raise it on
    #: an idle many-core machine for faster global search.
    cpu_threads: int | None = 1
    #: how global (radius=None) matches are searched; both give the same matches:
    #: "stream" (default): batches of points, their maps summed slab by slab and never held;
    #: "dense": one whole map per point (a few at a time), the original search.
    global_search: str = "stream"
    #: points per batch of the "stream" search (None: 16 on the CPU, 64 on a GPU); memory
    #: grows ~29 MB per point at MAISI's sizes for a 192x192x208 target
    global_batch: int | None = None
    #: CPU threads of the "stream" search (None: torch's current setting, by default one per
    #: core). Unlike a windowed query it is a few large passes per batch, which cores shorten.
    global_threads: int | None = None
    #: windowed queries read each side's full-image 1/||f|| maps (built once, on the first
    #: query: ~4 bytes per voxel and level) instead of computing norms from the window's own
    #: nodes. Same values to float32 rounding; for interactive use, where thousands of
    #: windows follow (the explorer turns it on). Batches decide by their size either way.
    cache_norms: bool = False

    @classmethod
    def of(cls, matcher: "Matcher") -> "SearchSettings":
        """The settings a matcher holds now."""
        return cls(**{f.name: getattr(matcher, f.name) for f in fields(cls)})

    def apply(self, matcher: "Matcher") -> None:
        """Give a matcher these settings."""
        for f in fields(self):
            setattr(matcher, f.name, getattr(self, f.name))


class Matcher:
    """Source -> target search over fused per-level cosine similarity, exact and memory-light.

    ``levels``: names to fuse (default: every level both sides hold, in source order);
    ``weights``: per-level weights (missing ones count 1; default equal = mean of cosines);
    ``source_spacing``/``target_spacing``: voxel spacing (z, y, x) mm of each image, needed for
    windows in millimetres (``from_stores`` takes them from the stores).

    A search ``radius`` is None (the whole target), voxels (an int on every axis, or a per-axis
    (z, y, x) triple: the box searched is exactly ``center +- radius`` per axis, clipped to the
    image) or a :class:`~napari_meddift.matching.window.Radius` in mm, which becomes
    ``ceil(r / spacing)`` voxels per axis of the grid searched: the target's forwards, the
    source's for the forward-backward check.

    The search's knobs (``cpu_threads``, ``global_search``, ``global_batch``, ``global_threads``,
    ``cache_norms``) are plain attributes, documented with their defaults in :class:`SearchSettings`.
    """

    def __init__(
        self,
        source_levels: Mapping,
        target_levels: Mapping,
        source_shape: tuple[int, int, int],
        target_shape: tuple[int, int, int],
        levels: Sequence[str] | None = None,
        weights: Mapping[str, float] | None = None,
        device: str | torch.device = "cpu",
        source_spacing: Sequence[float] | None = None,
        target_spacing: Sequence[float] | None = None,
    ):
        self.device = torch.device(device)
        self.source_spacing = _spacing(source_spacing)
        self.target_spacing = _spacing(target_spacing)
        SearchSettings().apply(self)
        self._src = _Side(source_levels, source_shape, self.device)
        self._tgt = _Side(target_levels, target_shape, self.device)
        self._backward: Matcher | None = None
        self.levels: list[str] = []
        self.weights: dict[str, float] = {}
        self.set_levels(levels, weights)

    @classmethod
    def _from_sides(cls, src: _Side, tgt: _Side, levels, weights) -> "Matcher":
        m = cls.__new__(cls)
        m.device, m._src, m._tgt, m._backward = src.device, src, tgt, None
        m.source_spacing = m.target_spacing = None
        SearchSettings().apply(m)
        m.levels, m.weights = list(levels), dict(weights)
        return m

    @classmethod
    def from_stores(
        cls,
        src_store: LevelSource,
        tgt_store: LevelSource,
        levels: Sequence[str] | None = None,
        weights: Mapping[str, float] | None = None,
        device: str | torch.device = "cpu",
        allow_mixed: bool = False,
    ) -> Matcher:
        """Build from two descriptor stores (anything with ``.image_shape`` and ``.load_levels``).

        Stores of different backbones, weights, timesteps, backbone configurations or
        preprocessing are refused with one line unless ``allow_mixed``."""
        from ..io.metadata import check_same_extraction

        check_same_extraction(src_store, tgt_store, allow_mixed)
        if levels is not None:
            levels = list(levels)
            for which, store in (("source", src_store), ("target", tgt_store)):
                have = getattr(store, "level_names", None)
                if have is not None:
                    missing = [n for n in levels if n not in have]
                    if missing:
                        raise MedDiftError(
                            f"{which} store lacks level(s) {', '.join(missing)}; it has {', '.join(have)}"
                        )
        elif tuple(getattr(src_store, "level_names", ())) != tuple(getattr(tgt_store, "level_names", ())):
            raise MedDiftError(
                f"the source store holds levels {', '.join(src_store.level_names)} but the target holds "
                f"{', '.join(tgt_store.level_names)}; extract both with the same levels, or name the levels to fuse"
            )
        src = src_store.load_levels(levels)
        tgt = tgt_store.load_levels(levels)
        return cls(src, tgt, src_store.image_shape, tgt_store.image_shape, levels, weights, device,
                   getattr(src_store, "spacing", None), getattr(tgt_store, "spacing", None))

    # ---- configuration ------------------------------------------------------------

    @property
    def source_shape(self) -> tuple[int, int, int]:
        return self._src.shape

    @property
    def target_shape(self) -> tuple[int, int, int]:
        return self._tgt.shape

    @property
    def available_levels(self) -> list[str]:
        """Levels both sides hold, in source order."""
        return [n for n in self._src.raw if n in self._tgt.raw]

    def set_levels(self, levels: Sequence[str] | None, weights: Mapping[str, float] | None = None) -> None:
        """Change the fused levels/weights live: no recomputation, only lazily built levels are added."""
        avail = self.available_levels
        levels = list(avail if levels is None else levels)
        if not levels:
            raise MedDiftError("choose at least one descriptor level to match with")
        bad = [n for n in levels if n not in avail]
        if bad:
            raise MedDiftError(
                f"level(s) {', '.join(map(str, bad))} not held by both volumes; available: {', '.join(avail) or 'none'}"
            )
        if len(set(levels)) != len(levels):
            raise MedDiftError(f"levels repeat: {levels}")
        for n in levels:
            cs, ct = self._src.channels(n), self._tgt.channels(n)
            if cs != ct:
                raise MedDiftError(f"level {n!r} has {cs} channels in the source but {ct} in the target")
        weights = dict(weights or {})
        extra = [n for n in weights if n not in levels]
        if extra:
            raise MedDiftError(f"weights given for level(s) not in use: {', '.join(map(str, extra))}")
        w = {n: float(weights.get(n, 1.0)) for n in levels}
        if any(not math.isfinite(v) or v < 0 for v in w.values()) or sum(w.values()) <= 0:
            raise MedDiftError(f"level weights must be non-negative with a positive sum, got {w}")
        self.levels, self.weights = levels, w
        if self._backward is not None:
            self._backward.levels, self._backward.weights = list(levels), dict(w)

    @property
    def backward(self) -> "Matcher":
        """Target -> source matcher sharing this one's levels and caches (for consistency checks)."""
        if self._backward is None:
            self._backward = Matcher._from_sides(self._tgt, self._src, self.levels, self.weights)
        else:
            self._backward.levels, self._backward.weights = list(self.levels), dict(self.weights)
        self._backward.source_spacing, self._backward.target_spacing = self.target_spacing, self.source_spacing
        SearchSettings.of(self).apply(self._backward)
        return self._backward

    # ---- geometry -----------------------------------------------------------------

    def _check_points(self, pts, shape) -> np.ndarray:
        arr = np.asarray(pts)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise MedDiftError(f"points must be (z, y, x) triples, got shape {np.asarray(pts).shape}")
        if not np.all(np.isfinite(arr)):
            raise MedDiftError("points must be finite voxel indices")
        ri = np.rint(arr).astype(np.int64)
        if np.any(np.abs(arr - ri) > 1e-6):
            raise MedDiftError("points must be integer voxel indices (z, y, x)")
        bad = np.any((ri < 0) | (ri >= np.asarray(shape)), axis=1)
        if bad.any():
            raise MedDiftError(
                f"point (z, y, x) = {tuple(int(v) for v in ri[bad][0])} "
                f"lies outside the volume of shape (z, y, x) {tuple(shape)}"
            )
        return ri

    def _centers(self, pts: np.ndarray) -> np.ndarray:
        """Source voxel -> target voxel of the window centre: identity for equal shapes, else scaled."""
        s, t = np.asarray(self._src.shape), np.asarray(self._tgt.shape)
        if np.array_equal(s, t):
            return pts.copy()
        c = np.floor((pts + 0.5) * t / s - 0.5 + 0.5).astype(np.int64)
        return np.clip(c, 0, t - 1)

    def voxel_radius(self, radius: RadiusLike) -> tuple[int, int, int] | None:
        """The per-axis voxel radius (z, y, x) a ``radius`` searches in the target (None: all)."""
        return voxel_radius(radius, self.target_spacing)

    def _box(self, center: np.ndarray, radius: RadiusLike) -> list[tuple[int, int]]:
        t = self._tgt.shape
        r = self.voxel_radius(radius)
        if r is None:
            return [(0, n) for n in t]
        return [(max(0, int(c) - int(ri)), min(n, int(c) + int(ri) + 1)) for c, ri, n in zip(center, r, t)]

    # ---- core ---------------------------------------------------------------------

    def _queries(self, pts: np.ndarray) -> dict[str, torch.Tensor]:
        return {n: self._src.level(n).queries(pts) for n in self.levels}

    def _fused(self, q: dict[str, torch.Tensor], box, use_cache: bool, keep_levels: bool = False):
        """Fused map (B, *box) and, if asked, per-level cosine maps."""
        total = sum(self.weights.values())
        whole = all(b == (0, n) for b, n in zip(box, self._tgt.shape))
        if whole:  # slab-wise two-tap path; per-level maps only when asked (30 MB each)
            bsz = next(iter(q.values())).shape[0]
            fused = torch.zeros((bsz,) + self._tgt.shape, device=self.device)
            per = {}
            for n in self.levels:
                w = self.weights[n] / total
                if keep_levels:
                    per[n] = torch.zeros_like(fused)
                    self._tgt.level(n).accumulate_global(q[n], 1.0, per[n])
                    fused.add_(per[n], alpha=w)
                elif w > 0:
                    self._tgt.level(n).accumulate_global(q[n], w, fused)
            return fused, per
        fused, per = None, {}
        for n in self.levels:
            w = self.weights[n] / total
            cos = self._tgt.level(n).window_cos(q[n], box, use_cache)
            if keep_levels:
                per[n] = cos
            if w == 0.0:
                continue
            fused = cos * w if fused is None else fused.add_(cos, alpha=w)
        if fused is None:  # every weight zero is rejected in set_levels; keep the shape anyway
            fused = torch.zeros_like(cos)
        return fused, per

    def _match_many(self, pts: np.ndarray, radius, exclusion, progress, done0, total, use_cache=None):
        n = len(pts)
        tgt = np.zeros((n, 3), np.int64)
        score = np.zeros(n, np.float32)
        amb = np.full(n, np.nan, np.float32)
        if n == 0:
            return tgt, score, amb
        radius = self.voxel_radius(radius)
        if radius is None and self.global_search != "dense":
            return self._match_global(pts, exclusion, progress, done0, total)
        centers = self._centers(pts)
        with self._compute():
            q = self._queries(pts)
        if radius is None:
            use_cache = True
            vox = int(np.prod(self._tgt.shape))
            bsz = max(1, min(8, (1 << 25) // vox))  # a few full maps at a time
        else:
            if use_cache is None:
                use_cache = n * int(np.prod([2 * r + 1 for r in radius])) >= int(np.prod(self._tgt.shape)) // 4
            bsz = 1
        label = "global" if radius is None else f"radius {'x'.join(map(str, radius))} vox"
        with self._compute():
            if use_cache:
                for name in self.levels:
                    self._tgt.level(name).full_inv_norm()
            for s in range(0, n, bsz):
                e = min(n, s + bsz)
                box = self._box(centers[s], radius)
                fused, _ = self._fused({k: v[s:e] for k, v in q.items()}, box, use_cache)
                tgt[s:e], score[s:e], amb[s:e] = best_in_maps(fused, box, exclusion)
                if progress is not None:
                    progress(done0 + e, total, f"matching points ({label})")
        return tgt, score, amb

    def _match_global(self, pts: np.ndarray, exclusion, progress, done0, total):
        """Exact global matches of many points, a batch at a time (``global_search``)."""
        n = len(pts)
        tgt = np.zeros((n, 3), np.int64)
        score = np.zeros(n, np.float32)
        amb = np.full(n, np.nan, np.float32)
        bsz = self.global_batch or (16 if self.device.type == "cpu" else 64)
        threads = self.global_threads or torch.get_num_threads()  # the process' setting
        with self._compute(threads):
            search = GlobalSearch({k: self._tgt.level(k) for k in self.levels}, self.weights, self._tgt.shape)
            search.threads = threads
            for s in range(0, n, bsz):
                e = min(n, s + bsz)
                loc, sc, rv = search.stream(self._queries(pts[s:e]), exclusion)
                tgt[s:e], score[s:e], rv = loc.cpu().numpy(), sc.cpu().numpy(), rv.cpu().numpy()
                ok = np.isfinite(rv) & (score[s:e] != 0)  # as _best: no rival or zero score -> nan
                amb[s:e][ok] = (rv[ok].astype(np.float64) / score[s:e][ok]).astype(np.float32)
                if progress is not None:
                    progress(done0 + e, total, "matching points (global)")
        return tgt, score, amb

    def warm_norms(self, levels: Sequence[str] | None = None, source: bool = True) -> None:
        """Build the full-image 1/||f|| maps now, for ``levels`` (default: every level both sides
        hold): the target's (windows), then with ``source`` the source's (consistency checks), so
        that ``cache_norms`` queries need not build them."""
        with self._compute():
            for side in (self._tgt, self._src) if source else (self._tgt,):
                for name in self.available_levels if levels is None else levels:
                    side.level(name).full_inv_norm()

    @contextmanager
    def _compute(self, threads: int | None = None):
        """no_grad, and on the CPU ``threads`` (default: the ``cpu_threads`` setting)."""
        threads = (threads or self.cpu_threads) if self.device.type == "cpu" else None
        with torch.no_grad(), _torch_threads(threads):
            yield

    # ---- public API ---------------------------------------------------------------

    def query(self, voxel_zyx) -> dict[str, np.ndarray]:
        """Unit source descriptor per level at a voxel (what the similarity maps are taken against)."""
        pts = self._check_points(voxel_zyx, self._src.shape)[:1]
        with self._compute():
            return {n: v[0].cpu().numpy() for n, v in self._queries(pts).items()}

    def similarity(self, voxel_zyx, radius: RadiusLike, per_level: bool = False) -> SimilarityResult:
        """Fused cosine map of a source voxel over the window (or, radius=None, the whole target)."""
        pts = self._check_points(voxel_zyx, self._src.shape)[:1]
        center = self._centers(pts)[0]
        box = self._box(center, radius)
        with self._compute():
            fused, per = self._fused(self._queries(pts), box, use_cache=radius is None or self.cache_norms,
                                     keep_levels=per_level)
        return SimilarityResult(
            box=tuple(slice(a, b) for a, b in box),  # type: ignore[arg-type]
            fused=fused[0].cpu().numpy().astype(np.float32, copy=False),
            per_level={n: v[0].cpu().numpy().astype(np.float32, copy=False) for n, v in per.items()},
            center_zyx=tuple(int(c) for c in center),  # type: ignore[arg-type]
        )

    def match(
        self,
        voxel_zyx,
        radius: RadiusLike,
        exclusion: int = 2,
        check_consistency: bool = True,
        fb_threshold: float = 1.5,
    ) -> Match:
        """Best target voxel for one source voxel, with ambiguity and forward-backward consistency."""
        pts = self._check_points(voxel_zyx, self._src.shape)[:1]
        cached = radius is None or self.cache_norms
        tgt, score, amb = self._match_many(pts, radius, exclusion, None, 0, 1, use_cache=cached)
        fb, ok = math.nan, None
        if check_consistency:
            back, _, _ = self.backward._match_many(tgt, radius, exclusion, None, 0, 1, use_cache=cached)
            fb = float(np.linalg.norm((back[0] - pts[0]).astype(np.float64)))
            ok = bool(fb <= fb_threshold)
        return Match(
            source_zyx=tuple(int(v) for v in pts[0]),  # type: ignore[arg-type]
            target_zyx=tuple(int(v) for v in tgt[0]),  # type: ignore[arg-type]
            score=float(score[0]),
            ambiguity=float(amb[0]),
            fb_distance=fb,
            consistent=ok,
        )

    def match_points(
        self,
        points_zyx,
        radius: RadiusLike = None,
        progress: ProgressCallback | None = None,
        check_consistency: bool = True,
        exclusion: int = 2,
        fb_threshold: float = 1.5,
    ) -> MatchTable:
        """Match many source voxels (N, 3) (z, y, x); radius None searches the whole target.

        Global searches run in batches of ``global_batch`` points on the matcher's device (one
        read-back per batch); ``check_consistency`` adds the target -> source back-match.
        """
        arr = np.asarray(points_zyx)
        pts = np.zeros((0, 3), np.int64) if arr.size == 0 else self._check_points(arr, self._src.shape)
        n = len(pts)
        total = 2 * n if check_consistency else n
        tgt, score, amb = self._match_many(pts, radius, exclusion, progress, 0, total)
        fb = np.full(n, np.nan, np.float32)
        ok = np.zeros(n, bool)
        if check_consistency and n:
            back, _, _ = self.backward._match_many(tgt, radius, exclusion, progress, n, total)
            fb = np.linalg.norm((back - pts).astype(np.float64), axis=1).astype(np.float32)
            ok = fb <= fb_threshold
        return MatchTable(pts, tgt, score, amb, fb, ok, checked=check_consistency)


def _spacing(spacing) -> tuple[float, float, float] | None:
    return None if spacing is None else tuple(float(s) for s in spacing)  # type: ignore[return-value]


__all__ = ["Matcher", "SearchSettings"]
