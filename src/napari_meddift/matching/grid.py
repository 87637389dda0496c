"""Native descriptor levels and the exact interpolation machinery the matcher searches with.

A level is held as edge-padded, channels-last float32 with per-axis tap tables; a window's
cosine map is the separable interpolation of node dot products times the inverse interpolated
norm (``matching/__init__.py`` has the derivation).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MedDiftError

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


def best_in_maps(fused: torch.Tensor, box, exclusion: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
