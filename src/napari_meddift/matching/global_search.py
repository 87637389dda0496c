"""Exact global search for a batch of queries, without holding any similarity map.

The fused similarity of a unit query ``q`` at target voxel ``v`` is
``S(v) = sum_l w_l * dot_l(v) * inv_l(v)``, with ``dot_l`` the trilinear interpolation of the
node dot products ``P_l[n] = q_l . F_l[n]`` and ``inv_l = 1 / ||f_l||`` (``matching.py``).
For B queries at once (``GlobalSearch.stream``):

1. ``P_l`` for all B by one matrix product per level (the native levels are read once per
   batch, not once per point);
2. the x and y interpolation once per level on the native z planes (B x nz x Y x X);
3. slab by slab of output z planes, every level's z taps, norm and weight are summed into one
   cache-sized slab (B x S x Y x X). Its first maximum (C order) updates the running match and
   its block maxima (``block_size``^3 voxels) are kept: the full B x Z x Y x X maps never exist;
4. the ambiguity's rival (best score outside the exclusion cube around the match) is the best
   maximum of the blocks clear of the cube, or an exact value from the few blocks the cube
   touches, evaluated again voxel by voxel (``evaluate``).

Steps 2-4 are the tensor path, which any device runs (a GPU always). On the CPU the same sum
and reductions run by default in one fused pass per batch (``global_kernel``, numba): the maps
are formed row by row in cache instead of in slabs in memory, about 4x faster on two cores
(``GlobalSearch.cpu_kernel``).

The answer is the whole-map search's: same argmax (first of ties in C order), score and rival,
up to float32 rounding. Everything stays on the queries' device; the caller reads the results
back once per batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import global_kernel as _global_kernel


class BlockTables:
    """Per-level tables to evaluate blocks of bs^3 voxels (``block_size``) of one target level
    exactly (cached).

    Per axis ``d``, with nb blocks along it: ``start[d]`` (nb,) first node of a fixed-width window
    of ``widths[d]`` nodes that supports the block, and ``mat[d]`` (nb, bs, widths[d]) the
    interpolation weights of the block's voxels on it (zero rows past the image edge);
    ``inv_blocks`` (nblocks, bs^3): 1/||f|| of each block's voxels (0 past the edge).
    """

    def __init__(self, level, block_size: int):
        bs = block_size
        dev = level.f.device
        self.block_size = bs
        self.node_shape = tuple(int(s) for s in level.f.shape[:3])
        self.start, self.mat, self.widths = [], [], []
        for ax, n_pad in zip(level.axes, self.node_shape):
            n_out = len(ax.i0)
            nb = -(-n_out // bs)
            spans = [ax.nodes(j * bs, min(n_out, (j + 1) * bs)) for j in range(nb)]
            r = max(b - a for a, b in spans)
            start = np.array([min(a, n_pad - r) for a, _ in spans], np.int64)
            mat = np.zeros((nb, bs, r), np.float64)
            for j in range(nb):
                for o in range(bs):
                    v = j * bs + o
                    if v >= n_out:
                        break
                    mat[j, o, ax.i0[v] - start[j]] += 1.0 - ax.lam[v]
                    mat[j, o, ax.i0[v] + 1 - start[j]] += ax.lam[v]
            self.start.append(torch.as_tensor(start, device=dev))
            self.mat.append(torch.as_tensor(mat, dtype=torch.float32, device=dev))
            self.widths.append(r)
        inv = level.full_inv_norm()
        nb = self.blocks_per_axis = tuple(-(-s // bs) for s in inv.shape)
        pad = [0, nb[2] * bs - inv.shape[2], 0, nb[1] * bs - inv.shape[1], 0, nb[0] * bs - inv.shape[0]]
        blk = F.pad(inv, pad).reshape(nb[0], bs, nb[1], bs, nb[2], bs)
        self.inv_blocks = blk.permute(0, 2, 4, 1, 3, 5).reshape(-1, bs**3).contiguous()

    def values(self, p: torch.Tensor, jz: torch.Tensor, jy: torch.Tensor, jx: torch.Tensor) -> torch.Tensor:
        """Exact cosine (B, K, bs, bs, bs) in blocks (jz, jy, jx) (B, K each) from node dots p (B, nodes)."""
        bsz, k = jz.shape
        wz, wy, wx = self.widths
        _, ny, nx = self.node_shape
        dev = p.device
        sz = self.start[0][jz][..., None, None, None] + torch.arange(wz, device=dev)[:, None, None]
        sy = self.start[1][jy][..., None, None, None] + torch.arange(wy, device=dev)[None, :, None]
        sx = self.start[2][jx][..., None, None, None] + torch.arange(wx, device=dev)[None, None, :]
        idx = (sz * ny + sy) * nx + sx  # (B, K, wz, wy, wx)
        sub = torch.gather(p, 1, idx.reshape(bsz, -1)).reshape(bsz, k, wz, wy, wx)
        bs = self.block_size
        m = bsz * k
        # three small batched products, one per axis: (wz*wy, wx) -> x, then y, then z
        t = torch.bmm(sub.reshape(m, wz * wy, wx), self.mat[2][jx].reshape(m, bs, wx).transpose(1, 2))
        t = torch.einsum("mzyx,mby->mzbx", t.reshape(m, wz, wy, bs), self.mat[1][jy].reshape(m, bs, wy))
        t = torch.bmm(self.mat[0][jz].reshape(m, bs, wz), t.reshape(m, wz, bs * bs))  # (m, Z, Y*X)
        _, nby, nbx = self.blocks_per_axis
        flat = (jz * nby + jy) * nbx + jx
        return t.reshape(bsz, k, bs, bs, bs).mul_(self.inv_blocks[flat].reshape(bsz, k, bs, bs, bs))


class GlobalSearch:
    """Exact global argmax, score and rival for batches of queries against one target side."""

    #: block edge in voxels (block maxima for the rival)
    block = 4
    #: how the whole maps are summed and reduced on the CPU: "fused" (the numba kernel of
    #: ``global_kernel``, one pass in cache) or "tensor" (slabs of eager tensor operations, the
    #: path a GPU always takes). Both give the same matches up to float32 rounding.
    cpu_kernel = "fused"

    def __init__(self, levels: dict, weights: dict[str, float], image_shape, block_size: int | None = None):
        bs = int(block_size or self.block)
        #: name -> target _Level
        self.levels = levels
        total = sum(weights.values())
        #: the levels that count, their weights normalised to sum 1
        self.level_weights = {n: weights[n] / total for n in levels if weights[n] > 0}
        self.shape = tuple(int(s) for s in image_shape)
        #: block edge in voxels, and blocks per axis (z, y, x)
        self.block_size = bs
        self.blocks_per_axis = tuple(-(-s // bs) for s in self.shape)
        self._tabs: dict[str, BlockTables] | None = None
        self.device = next(iter(levels.values())).f.device
        #: 0 .. block_size - 1: a voxel's offset inside its block
        self.block_offsets = torch.arange(bs, device=self.device)
        self.shape_tensor = torch.as_tensor(self.shape, device=self.device)
        self._fused: _global_kernel.FusedPlanes | None = None
        #: threads of the fused CPU kernel
        self.threads = torch.get_num_threads()

    def fused(self) -> _global_kernel.FusedPlanes | None:
        """The fused CPU kernel's tables, or None where the tensor path runs (GPU, no numba)."""
        if self.device.type != "cpu" or self.cpu_kernel != "fused" or not _global_kernel.available():
            return None
        if self._fused is None:
            self._fused = _global_kernel.FusedPlanes(self.levels, self.level_weights, self.shape, self.block_size)
        return self._fused

    @property
    def tabs(self) -> dict[str, BlockTables]:
        """Per-level block tables of the tensor path's rival (built on first use and cached on the
        levels: the fused kernel never needs them, nor their blocked copy of 1/||f||)."""
        if self._tabs is None:
            self._tabs = {n: _tables(self.levels[n], self.block_size) for n in self.level_weights}
        return self._tabs

    def node_dots(self, q: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """P_l (B, nodes) = q_l . F_l[n] over each level's padded node grid (one GEMM per level)."""
        return {n: (q[n] @ self.levels[n].f.reshape(-1, self.levels[n].channels).T) for n in self.level_weights}

    def evaluate(self, p: dict[str, torch.Tensor], blocks: torch.Tensor):
        """Exact fused values (B, K, bs, bs, bs) in blocks (B, K) (flat block index) and the
        voxel coordinates along each axis, 3 x (B, K, bs); voxels past the image edge hold -inf."""
        nbz, nby, nbx = self.blocks_per_axis
        jz, rem = blocks // (nby * nbx), blocks % (nby * nbx)
        jy, jx = rem // nbx, rem % nbx
        val = None
        for n, w in self.level_weights.items():
            v = self.tabs[n].values(p[n], jz, jy, jx)
            val = v.mul_(w) if val is None else val.add_(v, alpha=w)
        ax = [j[..., None] * self.block_size + self.block_offsets for j in (jz, jy, jx)]  # 3 x (B, K, bs)
        inside = [a < n for a, n in zip(ax, self.shape)]
        val.masked_fill_(~_outer(*inside), -math.inf)
        return val, ax

    @staticmethod
    def _beyond(ax, loc: torch.Tensor, dist: int) -> torch.Tensor:
        """(B, K, bs, bs, bs) mask of voxels farther than dist (Chebyshev) from loc (B, 3)."""
        near = [(a - loc[:, d, None, None]).abs() <= dist for d, a in enumerate(ax)]
        return ~_outer(*near)

    def stream(self, q: dict[str, torch.Tensor], exclusion: int, slab: int = 8):
        """Whole-map search of a batch without holding its maps: (loc (B, 3), score, rival).

        On the CPU the fused kernel (``global_kernel``) does it all in one pass per batch. The
        tensor path (any device): per level the node dots are interpolated in x and y once (node
        planes, B x nz x Y x X); then slab by slab of output planes the levels' z stage, norm and
        weight are summed into one slab, whose max (first in C order) and per-block maxima are
        kept. Either way the rival is the best block maximum away from the match, or an exact
        value from the few blocks the exclusion cube touches.
        """
        kernel = self.fused()
        if kernel is not None:
            loc, best, rival = kernel.search(q, exclusion, self.threads)
            return torch.from_numpy(loc), torch.from_numpy(best), torch.from_numpy(rival)
        p = self.node_dots(q)
        loc, best, bmax = self._maps_tensor(p, slab)
        return loc, best, self._rival(p, loc, bmax, exclusion)

    def _maps_tensor(self, p: dict[str, torch.Tensor], slab: int):
        """First maximum (loc (B, 3), value (B,)) and block maxima (B, nbz, nby, nbx) by slabs of
        tensor operations (any device)."""
        bsz = next(iter(p.values())).shape[0]
        zdim, ydim, xdim = self.shape
        yx = ydim * xdim
        bs = self.block_size
        slab = max(bs, slab // bs * bs)
        planes = {}
        for n in self.level_weights:
            lv = self.levels[n]
            t = p[n].reshape((bsz,) + tuple(lv.f.shape[:3]))[:, :, :-1, :-1]  # y, x unpadded
            # PyTorch's bilinear kernel gives the reference's x and y taps in one pass (on the CPU
            # faster than gathers or products with the banded matrices)
            planes[n] = F.interpolate(t, size=(ydim, xdim), mode="bilinear", align_corners=False).reshape(bsz, -1, yx)
        best = torch.full((bsz,), -math.inf, device=self.device)
        best_idx = torch.zeros(bsz, dtype=torch.long, device=self.device)
        bmax = torch.empty((bsz,) + self.blocks_per_axis, device=self.device)
        for o0 in range(0, zdim, slab):
            o1 = min(zdim, o0 + slab)
            acc = None
            for n, w in self.level_weights.items():
                lv = self.levels[n]
                az = lv.axes[0]
                a, b = az.nodes(o0, o1)
                val = torch.matmul(az.M[a:b, o0:o1].T, planes[n][:, a:b])  # (B, S, Y*X)
                inv = lv.full_inv_norm().reshape(zdim, yx)[o0:o1]
                if acc is None:
                    acc = val.mul_(inv).mul_(w)
                else:
                    acc.addcmul_(val, inv, value=w)
            v, i = acc.reshape(bsz, -1).max(1)  # first maximum of the slab
            better = v > best  # strict: an earlier slab keeps its tie
            best = torch.where(better, v, best)
            best_idx = torch.where(better, i + o0 * yx, best_idx)
            zs = -(-(o1 - o0) // bs)
            rows = acc.reshape(bsz, o1 - o0, ydim, xdim)
            if zs * bs != o1 - o0:  # the last slab may end inside a block row: pad it with -inf
                rows = F.pad(rows, (0, 0, 0, 0, 0, zs * bs - (o1 - o0)), value=-math.inf)
            zmax = rows.reshape(bsz, zs, bs, ydim, xdim).amax(2)
            pooled = F.max_pool2d(zmax, bs, ceil_mode=True)
            bmax[:, o0 // bs : o0 // bs + pooled.shape[1]] = pooled
        loc = torch.stack([best_idx // yx, (best_idx // xdim) % ydim, best_idx % xdim], 1)
        return loc, best, bmax

    def _rival(self, p: dict[str, torch.Tensor], loc: torch.Tensor, bmax: torch.Tensor, exclusion: int):
        """Best score outside the exclusion cube around loc (B,): block maxima clear of the cube,
        and the blocks it touches evaluated exactly."""
        bsz = loc.shape[0]
        bs = self.block_size
        # rival: blocks clear of the exclusion cube by their maxima, the touched ones exactly
        e = int(exclusion)
        lo = (loc - e).clamp(min=0) // bs
        hi = torch.minimum(loc + e, self.shape_tensor - 1) // bs
        idx = [torch.arange(self.blocks_per_axis[d], device=self.device) for d in range(3)]
        touch = [(idx[d] >= lo[:, d, None]) & (idx[d] <= hi[:, d, None]) for d in range(3)]  # (B, nb_d)
        rival = bmax.masked_fill(_outer(*touch), -math.inf).reshape(bsz, -1).amax(1)
        span = e * 2 // bs + 2
        ks = torch.arange(span, device=self.device)
        js = [torch.minimum(lo[:, d, None] + ks, hi[:, d, None]) for d in range(3)]  # (B, span) repeats ok
        shp = (bsz, span, span, span)
        jz = js[0].reshape(bsz, span, 1, 1).expand(shp)
        jy = js[1].reshape(bsz, 1, span, 1).expand(shp)
        jx = js[2].reshape(bsz, 1, 1, span).expand(shp)
        _, nby, nbx = self.blocks_per_axis
        blocks = ((jz * nby + jy) * nbx + jx).reshape(bsz, -1)
        val, ax = self.evaluate(p, blocks)
        far = self._beyond(ax, loc, e)
        return torch.maximum(rival, val.masked_fill(~far, -math.inf).reshape(bsz, -1).amax(1))

def _outer(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(..., n) x 3 -> (..., n, n, n): a[i] & b[j] & c[k]."""
    return a[..., :, None, None] & b[..., None, :, None] & c[..., None, None, :]


def _tables(level, bs: int) -> BlockTables:
    cache = level.__dict__.setdefault("_block_tables", {})
    if bs not in cache:
        cache[bs] = BlockTables(level, bs)
    return cache[bs]
