"""Exact correspondence search from native-resolution descriptor levels.

The method (``docs/method.md``) defines a voxel's descriptor at image resolution as the
trilinear upsampling (``align_corners=False``) of each native level, L2-normalised over
channels. Holding that for a 192x192x208 scan costs ~29 GB, so we never build it. Instead we
use that trilinear interpolation is linear:

* the dot product of a unit query ``q`` with the interpolated target feature ``f(v)`` is the
  trilinear interpolation of ``P[n] = q . F[n]`` taken on the native nodes;
* ``||f(v)||^2 = sum_{a,b} w_a w_b F[a].F[b]`` over the 8 corners, i.e. a separable weighting of
  banded Gram arrays ``K_d[n] = F[n].F[n+d]`` for ``d`` in ``{-1,0,1}^3``; it depends on the
  target only, so full-image maps are cached per level once they are worth having.

Both are evaluated with small separable matrix products, in float32, on only the native nodes
that support the window; the result equals the dense reference to float precision (see
``tests/test_matching.py`` against ``tests/dense_reference.py``).

Index conventions follow PyTorch: for output index ``o`` of an axis with ``n`` native nodes and
``N`` image voxels, ``src = max((o + 0.5) * n / N - 0.5, 0)``, ``i0 = floor(src)``,
``lam = src - i0``; the native grid is edge-padded by one node at the high end of every axis so
the second tap ``i0 + 1`` always exists (it equals PyTorch's clamped ``min(i0 + 1, n - 1)``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._global_search import GlobalSearch
from .errors import MedDiftError
from .progress import ProgressCallback

if TYPE_CHECKING:
    from .io.store import LevelSource

#: Same epsilon as ``torch.nn.functional.normalize``: zero features give cosine 0, not nan.
EPS = 1e-12

# The 14 Gram offsets we compute; the other 13 follow from K_{-d}[n + d] = K_d[n].
_HALF_DELTAS = [
    (dz, dy, dx)
    for dz in (-1, 0, 1)
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
    if (dz, dy, dx) >= (0, 0, 0)
]




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
# results


@dataclass
class SimilarityResult:
    """A fused cosine map over a target region; ``box`` places it in the target (z, y, x)."""

    box: tuple[slice, slice, slice]
    fused: np.ndarray
    per_level: dict[str, np.ndarray]
    center_zyx: tuple[int, int, int]

    @property
    def offset(self) -> tuple[int, int, int]:
        """Target index of ``fused[0, 0, 0]``."""
        return tuple(int(s.start) for s in self.box)  # type: ignore[return-value]

    def best(self, exclusion: int = 2) -> tuple[tuple[int, int, int], float, float]:
        """(target voxel, score, ambiguity) of this map by the matcher's own rule: first of ties in
        C order, rival taken outside the exclusion cube. Lets a viewer reuse the map it shows."""
        box = [(s.start, s.stop) for s in self.box]
        tgt, score, amb = Matcher._best(torch.from_numpy(np.array(self.fused, np.float32))[None], box, exclusion)
        return tuple(int(v) for v in tgt[0]), float(score[0]), float(amb[0])  # type: ignore[return-value]


@dataclass
class Match:
    """Best target voxel for one source voxel, with the cues that tell a good match from a guess.

    ``ambiguity`` is the best fused score outside the cube of half-width ``exclusion`` around the
    match divided by the match score (near 1: a rival as good exists; nan: no voxel outside).
    ``fb_distance`` is the voxel distance between the source point and the back-match of the
    target point (target -> source, same radius); ``consistent`` is ``fb_distance <= threshold``,
    or None when consistency was not checked.
    """

    source_zyx: tuple[int, int, int]
    target_zyx: tuple[int, int, int]
    score: float
    ambiguity: float
    fb_distance: float = math.nan
    consistent: bool | None = None


@dataclass
class MatchTable:
    """Batch matches as arrays (row i belongs to ``source_zyx[i]``)."""

    source_zyx: np.ndarray  # (N, 3) int64
    target_zyx: np.ndarray  # (N, 3) int64
    score: np.ndarray  # (N,) float32
    ambiguity: np.ndarray  # (N,) float32
    fb_distance: np.ndarray  # (N,) float32, nan when not checked
    consistent: np.ndarray  # (N,) bool, False when not checked
    checked: bool = True  # whether forward-backward consistency was computed

    def __len__(self) -> int:
        return int(self.target_zyx.shape[0])

    def to_rows(self) -> list[dict]:
        """Plain dicts (one per point) for CSV writers and tables; indices are z, y, x."""
        rows = []
        for i in range(len(self)):
            s, t = self.source_zyx[i], self.target_zyx[i]
            rows.append(
                {
                    "source_z": int(s[0]),
                    "source_y": int(s[1]),
                    "source_x": int(s[2]),
                    "target_z": int(t[0]),
                    "target_y": int(t[1]),
                    "target_x": int(t[2]),
                    "score": float(self.score[i]),
                    "ambiguity": float(self.ambiguity[i]),
                    "fb_distance": float(self.fb_distance[i]),
                    "consistent": bool(self.consistent[i]) if self.checked else None,
                }
            )
        return rows


# --------------------------------------------------------------------------------------
# per-axis interpolation tables


def axis_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's align_corners=False taps: (i0, lambda) per output index (i0 + 1 on the padded grid)."""
    # float32 arithmetic in PyTorch's order, so lambdas agree with F.interpolate to the last bit
    scale = np.float32(n_in) / np.float32(n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float64)
    if n_in == n_out:  # PyTorch's identity shortcut
        i0, lam = np.arange(n_out, dtype=np.int64), np.zeros(n_out)
    return i0, lam


class _Axis:
    """Interpolation matrices of one axis; windows take views of them (no per-query setup)."""

    def __init__(self, n_in: int, n_out: int, device: torch.device):
        i0, lam = axis_taps(n_in, n_out)
        self.i0, self.lam = i0, lam
        cols = np.arange(n_out)
        m = np.zeros((n_in + 1, n_out), np.float64)
        m[i0, cols] += 1.0 - lam
        m[i0 + 1, cols] += lam
        # Gram weights by offset d (index d + 1): pairs of taps (a, b) with b - a = d, weighted
        # w_a * w_b and attributed to the pair's first node a (K_d[a] = F[a] . F[a + d]).
        g = np.zeros((3, n_in + 1, n_out), np.float64)
        g[1, i0, cols] += (1.0 - lam) ** 2
        g[1, i0 + 1, cols] += lam**2
        g[2, i0, cols] += (1.0 - lam) * lam
        g[0, i0 + 1, cols] += lam * (1.0 - lam)
        self.M = torch.as_tensor(m, dtype=torch.float32, device=device)
        self.G = torch.as_tensor(g, dtype=torch.float32, device=device)
        # two-tap form for whole-axis passes (a dense matrix would do ~n/2 times the work)
        self.i0_t = torch.as_tensor(i0, device=device)
        self.i1_t = torch.as_tensor(i0 + 1, device=device)
        self.lam_t = torch.as_tensor(lam, dtype=torch.float32, device=device)
        self.c00 = torch.as_tensor((1.0 - lam) ** 2, dtype=torch.float32, device=device)
        self.c11 = torch.as_tensor(lam**2, dtype=torch.float32, device=device)
        self.c01 = torch.as_tensor((1.0 - lam) * lam, dtype=torch.float32, device=device)

    def lerp(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Interpolate node axis ``dim`` of t to this axis' output voxels (two taps each)."""
        shape = [1] * t.ndim
        shape[dim] = -1
        return torch.lerp(t.index_select(dim, self.i0_t), t.index_select(dim, self.i1_t), self.lam_t.view(shape))

    def gram_stage(self, k: torch.Tensor, r_dim: int, node_dim: int) -> torch.Tensor:
        """Contract Gram offset axis r_dim with node axis node_dim into output voxels (two taps)."""
        k0, k1, k2 = k.unbind(r_dim)
        nd = node_dim - 1 if node_dim > r_dim else node_dim
        shape = [1] * k1.ndim
        shape[nd] = -1
        out = k1.index_select(nd, self.i0_t).mul_(self.c00.view(shape))
        out.addcmul_(k1.index_select(nd, self.i1_t), self.c11.view(shape))
        cross = k2.index_select(nd, self.i0_t).add_(k0.index_select(nd, self.i1_t))
        return out.addcmul_(cross, self.c01.view(shape))

    def nodes(self, o0: int, o1: int) -> tuple[int, int]:
        """Padded-grid node range [a0, a1) that supports output voxels [o0, o1)."""
        return int(self.i0[o0]), int(self.i0[o1 - 1]) + 2


# --------------------------------------------------------------------------------------
# exact kernels


def _interp3(p: torch.Tensor, mz: torch.Tensor, my: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
    """Separable trilinear interpolation of node values p (B, a, b, c) -> (B, Z, Y, X)."""
    bsz, a, b, c = p.shape
    t = (p.reshape(bsz * a * b, c) @ mx).reshape(bsz, a, b, -1)  # (B, a, b, X)
    t = torch.matmul(my.T, t)  # (B, a, Y, X)
    ny, nx = t.shape[-2], t.shape[-1]
    t = torch.matmul(mz.T, t.reshape(bsz, a, ny * nx))  # (B, Z, Y*X)
    return t.reshape(bsz, -1, ny, nx)


def _gram(f: torch.Tensor, chunk_elems: int = 1 << 18) -> torch.Tensor:
    """Banded Gram arrays K[d + 1][n] = f[n] . f[n + d] of a channels-last block f (a, b, c, C).

    Layout (3, 3, 3, a, b, c). On the flattened block an offset d is a constant shift s of the
    flat index, so every product is between two contiguous row ranges (cache-friendly chunks).
    Entries whose n + d wraps across a row hold finite junk: the Gram weights of ``_Axis.G`` are
    zero there, because both taps of every output voxel lie inside the block.
    """
    a, b, c, ch = f.shape
    n = a * b * c
    x = f.reshape(n, ch)
    k = f.new_zeros((3, 3, 3, n))
    step = max(1, chunk_elems // max(1, ch))
    shifts = [(d, d[0] * b * c + d[1] * c + d[2]) for d in _HALF_DELTAS]  # s > 0 except d = 0 (b, c >= 2)
    for m0 in range(0, n, step):  # chunks outermost: the 14 shifted reads of a chunk hit cache
        for (dz, dy, dx), s in shifts:
            m1 = min(n - s, m0 + step)
            if m1 <= m0:
                continue
            prod = (x[m0:m1] * x[m0 + s : m1 + s]).sum(1)
            k[dz + 1, dy + 1, dx + 1, m0:m1] = prod
            if s:
                k[1 - dz, 1 - dy, 1 - dx, m0 + s : m1 + s] = prod
    return k.reshape(3, 3, 3, a, b, c)


def _inv_norm(k: torch.Tensor, gz: torch.Tensor, gy: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """1 / max(||f(v)||, eps) from Gram arrays, weighting x, then y, then z (27 -> 9 -> 3 -> 1)."""
    a9 = torch.einsum("pqrabc,rcX->pqabX", k, gx)
    b3 = torch.einsum("pqabX,qbY->paYX", a9, gy)
    del a9
    n2 = torch.einsum("paYX,paZ->ZYX", b3, gz)
    return n2.clamp_(min=0.0).sqrt_().clamp_(min=EPS).reciprocal_()


# --------------------------------------------------------------------------------------
# one level on one side


class _Level:
    """A native level as edge-padded, channels-last float32 plus axis tables and a lazy norm map.

    Channels-last makes a window's node block a set of long contiguous runs, the query
    dot products a matrix-vector product, and the Gram shifts row offsets.
    """

    def __init__(self, name: str, array, image_shape: tuple[int, int, int], device: torch.device):
        t = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))
        if t.ndim != 4:
            raise MedDiftError(f"descriptor level {name!r} must have shape (C, z, y, x), got {tuple(t.shape)}")
        t = t.detach().to(device=device, dtype=torch.float32)
        self.name = name
        self.channels = int(t.shape[0])
        self.native = tuple(int(s) for s in t.shape[1:])
        padded = F.pad(t[None], (0, 1, 0, 1, 0, 1), mode="replicate")[0]
        self.f = padded.permute(1, 2, 3, 0).contiguous()  # (z+1, y+1, x+1, C)
        del padded
        self.axes = [_Axis(n, s, device) for n, s in zip(self.native, image_shape)]
        self.inv_norm_full: torch.Tensor | None = None

    def full_inv_norm(self) -> torch.Tensor:
        """Cached image-resolution 1/||f||: pays once for global search and batch matching."""
        if self.inv_norm_full is None:
            az, ay, ax = self.axes
            k = _gram(self.f)  # (3, 3, 3, a, b, c)
            k = ax.gram_stage(k, 2, 5)  # (3, 3, a, b, X)
            k = ay.gram_stage(k, 1, 3)  # (3, a, Y, X)
            n2 = az.gram_stage(k, 0, 1)  # (Z, Y, X)
            del k
            self.inv_norm_full = n2.clamp_(min=0.0).sqrt_().clamp_(min=EPS).reciprocal_()
        return self.inv_norm_full

    def queries(self, pts: np.ndarray) -> torch.Tensor:
        """Unit source descriptors (N, C) at integer voxels pts (N, 3): 8 nodes, then normalise."""
        i0 = [ax.i0[pts[:, d]] for d, ax in enumerate(self.axes)]
        lam = [ax.lam[pts[:, d]] for d, ax in enumerate(self.axes)]
        wz, wy, wx = (np.stack([1.0 - v, v], axis=1) for v in lam)  # (N, 2) each
        w = (wz[:, :, None, None] * wy[:, None, :, None] * wx[:, None, None, :]).reshape(-1, 8)
        w = torch.as_tensor(w, dtype=torch.float32, device=self.f.device)
        if len(pts) == 1:
            z, y, x = (int(v[0]) for v in i0)
            corners = self.f[z : z + 2, y : y + 2, x : x + 2].reshape(1, 8, self.channels)
        else:
            o = np.arange(2)
            iz = torch.as_tensor(i0[0][:, None, None, None] + o[None, :, None, None], device=self.f.device)
            iy = torch.as_tensor(i0[1][:, None, None, None] + o[None, None, :, None], device=self.f.device)
            ix = torch.as_tensor(i0[2][:, None, None, None] + o[None, None, None, :], device=self.f.device)
            corners = self.f[iz, iy, ix].reshape(len(pts), 8, self.channels)
        q = torch.bmm(w[:, None, :], corners)[:, 0]  # (N, C)
        return F.normalize(q, dim=1, eps=EPS)

    def window_cos(self, q: torch.Tensor, box: Sequence[tuple[int, int]], use_cache: bool) -> torch.Tensor:
        """Exact cosine map of unit queries q (B, C) over box [(o0, o1)] * 3 -> (B, *box shape)."""
        nodes = [ax.nodes(o0, o1) for ax, (o0, o1) in zip(self.axes, box)]
        (za, zb), (ya, yb), (xa, xb) = nodes
        full = (za, ya, xa) == (0, 0, 0) and (zb, yb, xb) == tuple(self.f.shape[:3])
        sub = self.f if full else self.f[za:zb, ya:yb, xa:xb].contiguous()
        p = sub.reshape(-1, self.channels) @ q.T  # (nodes, B)
        p = p.T.reshape(q.shape[0], zb - za, yb - ya, xb - xa)
        ms = [ax.M[a:b, o0:o1] for ax, (a, b), (o0, o1) in zip(self.axes, nodes, box)]
        dot = _interp3(p, *ms)
        if use_cache or self.inv_norm_full is not None:
            inv = self.full_inv_norm()[box[0][0] : box[0][1], box[1][0] : box[1][1], box[2][0] : box[2][1]]
        else:
            gs = [ax.G[:, a:b, o0:o1] for ax, (a, b), (o0, o1) in zip(self.axes, nodes, box)]
            inv = _inv_norm(_gram(sub), *gs)
        return dot.mul_(inv)

    def accumulate_global(self, q: torch.Tensor, weight: float, out: torch.Tensor, slab: int = 8) -> None:
        """out (B, Z, Y, X) += weight * cosine over the whole image, in z-slabs.

        The z stage is where the output gets big; a dense (nodes x Z) matrix would waste ~a/2
        multiplications per voxel, so each slab of output planes uses only the few nodes that
        support it, and its weighted cosine is added while the slab is still in cache.
        """
        az, ay, ax = self.axes
        nz, ny, nx = self.f.shape[:3]
        bsz = q.shape[0]
        p = self.f.reshape(-1, self.channels) @ q.T  # (nodes, B)
        p = p.T.reshape(bsz, nz, ny, nx)
        t = ay.lerp(ax.lerp(p, 3), 2)  # (B, nz, Y, X)
        zy = t.shape[2] * t.shape[3]
        t = t.reshape(bsz, nz, zy)
        inv = self.full_inv_norm().reshape(out.shape[1], zy)
        out3 = out.reshape(bsz, out.shape[1], zy)
        for o0 in range(0, out.shape[1], slab):
            o1 = min(out.shape[1], o0 + slab)
            a, b = az.nodes(o0, o1)
            val = torch.matmul(az.M[a:b, o0:o1].T, t[:, a:b])  # (B, slab, Y*X)
            out3[:, o0:o1].addcmul_(val, inv[o0:o1], value=weight)


class _Side:
    """One volume's levels, built (padded, upcast) lazily so unused levels cost nothing."""

    def __init__(self, levels: Mapping, shape, device: torch.device):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise MedDiftError(f"image shape must be three positive sizes (z, y, x), got {shape!r}")
        self.raw = dict(levels)
        self.device = device
        self.built: dict[str, _Level] = {}

    def level(self, name: str) -> _Level:
        if name not in self.built:
            self.built[name] = _Level(name, self.raw[name], self.shape, self.device)
        return self.built[name]

    def channels(self, name: str) -> int:
        if name in self.built:
            return self.built[name].channels
        return int(self.raw[name].shape[0])


# --------------------------------------------------------------------------------------
# the matcher


class Matcher:
    """Source -> target search over fused per-level cosine similarity, exact and memory-light.

    ``levels``: names to fuse (default: every level both sides hold, in source order);
    ``weights``: per-level weights (missing ones count 1; default equal = mean of cosines).
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
    ):
        self.device = torch.device(device)
        #: torch intra-op threads for the matcher's CPU work; None keeps torch's setting. One by
        #: default: the work is many small or memory-bound ops, and on a small shared CPU the
        #: thread pool's fork/join made queries 4-40x slower (docs/performance.md); raise it on
        #: an idle many-core machine for faster global search.
        self.cpu_threads: int | None = 1
        self._init_global()
        self._src = _Side(source_levels, source_shape, self.device)
        self._tgt = _Side(target_levels, target_shape, self.device)
        self._backward: Matcher | None = None
        self.levels: list[str] = []
        self.weights: dict[str, float] = {}
        self.set_levels(levels, weights)

    def _init_global(self) -> None:
        #: how global (radius=None) matches are searched; both give the same matches:
        #: "stream" (default): batches of points, their maps summed slab by slab and never held;
        #: "dense": one whole map per point (a few at a time), the original search.
        self.global_search = "stream"
        #: points per batch of the "stream" search (None: 16 on the CPU, 64 on a GPU); memory
        #: grows ~29 MB per point at MAISI's sizes for a 192x192x208 target
        self.global_batch: int | None = None
        #: CPU threads of the "stream" search (None: torch's current setting, by default one per
        #: core). Unlike a windowed query it is a few large passes per batch, which cores shorten.
        self.global_threads: int | None = None

    @classmethod
    def _from_sides(cls, src: _Side, tgt: _Side, levels, weights) -> "Matcher":
        m = cls.__new__(cls)
        m.device, m._src, m._tgt, m._backward = src.device, src, tgt, None
        m.cpu_threads = 1
        m._init_global()
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
    ) -> Matcher:
        """Build from two descriptor stores (anything with ``.image_shape`` and ``.load_levels``)."""
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
        return cls(src, tgt, src_store.image_shape, tgt_store.image_shape, levels, weights, device)

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
        self._backward.cpu_threads = self.cpu_threads
        self._backward.global_search, self._backward.global_batch = self.global_search, self.global_batch
        self._backward.global_threads = self.global_threads
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
            raise MedDiftError(f"point (z, y, x) = {tuple(int(v) for v in ri[bad][0])} lies outside the volume of shape (z, y, x) {tuple(shape)}")
        return ri

    def _centers(self, pts: np.ndarray) -> np.ndarray:
        """Source voxel -> target voxel of the window centre: identity for equal shapes, else scaled."""
        s, t = np.asarray(self._src.shape), np.asarray(self._tgt.shape)
        if np.array_equal(s, t):
            return pts.copy()
        c = np.floor((pts + 0.5) * t / s - 0.5 + 0.5).astype(np.int64)
        return np.clip(c, 0, t - 1)

    def _box(self, center: np.ndarray, radius: int | None) -> list[tuple[int, int]]:
        t = self._tgt.shape
        if radius is None:
            return [(0, n) for n in t]
        r = int(radius)
        if r < 0:
            raise MedDiftError(f"search radius must be >= 0 voxels, got {radius}")
        return [(max(0, int(c) - r), min(n, int(c) + r + 1)) for c, n in zip(center, t)]

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

    @staticmethod
    def _best(fused: torch.Tensor, box, exclusion: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Argmax (first of ties, C order), score and ambiguity of each map in fused (B, *box)."""
        bsz = fused.shape[0]
        shp = fused.shape[1:]
        flat = fused.reshape(bsz, -1)
        score, idx = flat.max(dim=1)
        idx = idx.cpu().numpy()
        score = score.cpu().numpy().astype(np.float32)
        loc = np.stack(np.unravel_index(idx, shp), axis=1)  # (B, 3) in box coordinates
        amb = np.full(bsz, np.nan, np.float32)
        e = int(exclusion)
        for i in range(bsz):
            sl = tuple(slice(max(0, int(c) - e), int(c) + e + 1) for c in loc[i])
            m = fused[i]
            keep = m[sl].clone()  # blank the exclusion cube in place, then restore it
            m[sl] = -math.inf
            rival = float(m.max())
            m[sl] = keep
            if rival != -math.inf and score[i] != 0:
                amb[i] = rival / float(score[i])
        offset = np.array([b[0] for b in box], np.int64)
        return loc + offset, score, amb

    def _match_many(self, pts: np.ndarray, radius, exclusion, progress, done0, total, use_cache=None):
        n = len(pts)
        tgt = np.zeros((n, 3), np.int64)
        score = np.zeros(n, np.float32)
        amb = np.full(n, np.nan, np.float32)
        if n == 0:
            return tgt, score, amb
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
                use_cache = n * (2 * int(radius) + 1) ** 3 >= int(np.prod(self._tgt.shape)) // 4
            bsz = 1
        label = "global" if radius is None else f"radius {radius}"
        with self._compute():
            if use_cache:
                for name in self.levels:
                    self._tgt.level(name).full_inv_norm()
            for s in range(0, n, bsz):
                e = min(n, s + bsz)
                box = self._box(centers[s], radius)
                fused, _ = self._fused({k: v[s:e] for k, v in q.items()}, box, use_cache)
                tgt[s:e], score[s:e], amb[s:e] = self._best(fused, box, exclusion)
                if progress is not None:
                    progress(done0 + e, total, f"matching points ({label})")
        return tgt, score, amb

    def _match_global(self, pts: np.ndarray, exclusion, progress, done0, total):
        """Exact global matches of many points, a batch at a time (``_global_search``)."""
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

    def similarity(self, voxel_zyx, radius: int | None, per_level: bool = False) -> SimilarityResult:
        """Fused cosine map of a source voxel over the window (or, radius=None, the whole target)."""
        pts = self._check_points(voxel_zyx, self._src.shape)[:1]
        center = self._centers(pts)[0]
        box = self._box(center, radius)
        with self._compute():
            fused, per = self._fused(self._queries(pts), box, use_cache=radius is None, keep_levels=per_level)
        return SimilarityResult(
            box=tuple(slice(a, b) for a, b in box),  # type: ignore[arg-type]
            fused=fused[0].cpu().numpy().astype(np.float32, copy=False),
            per_level={n: v[0].cpu().numpy().astype(np.float32, copy=False) for n, v in per.items()},
            center_zyx=tuple(int(c) for c in center),  # type: ignore[arg-type]
        )

    def match(
        self,
        voxel_zyx,
        radius: int | None,
        exclusion: int = 2,
        check_consistency: bool = True,
        fb_threshold: float = 1.5,
    ) -> Match:
        """Best target voxel for one source voxel, with ambiguity and forward-backward consistency."""
        pts = self._check_points(voxel_zyx, self._src.shape)[:1]
        tgt, score, amb = self._match_many(pts, radius, exclusion, None, 0, 1, use_cache=radius is None)
        fb, ok = math.nan, None
        if check_consistency:
            back, _, _ = self.backward._match_many(tgt, radius, exclusion, None, 0, 1, use_cache=radius is None)
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
        radius: int | None = None,
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


__all__ = ["Matcher", "Match", "MatchTable", "SimilarityResult", "axis_taps"]
