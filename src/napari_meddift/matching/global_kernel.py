"""Fused CPU kernel of the batch global search (numba): whole fused maps reduced plane by plane.

The fused similarity of unit query ``b`` at voxel ``(z, y, x)`` (``global_search``) is

    S_b(z, y, x) = sum_l  w_l * inv_l(z, y, x) * trilinear(P_l[b])(z, y, x)

with ``P_l[b]`` the node dot products of level ``l`` (padded node grid) and ``inv_l`` the
query-independent ``1 / ||f_l||`` at image resolution (the levels' cached maps, not copied).
Trilinear interpolation is separable, so per level the kernel interpolates in x once per node
row (:func:`x_rows`); then for every output plane z it interpolates those rows in z and the
result in y, multiplies by ``w_l * inv_l`` and adds it to a plane accumulator that stays in cache.
Every bs planes are reduced at once to the running first maximum (C order) and to the maxima of
``bs``^3 blocks; no map is ever written to memory. With eager tensor operations the same sum
costs about ten passes over memory per level; here it is one read of the ``inv_l`` planes,
shared by all the queries of a batch.

Work is split over slabs of z (``numba.prange``; tasks of about 12 planes, whole block rows),
each task holding its own first maximum per query; the tasks are merged in z order, so ties go
to the first voxel in C order as in ``np.argmax``. The rival (:func:`rivals`) takes the block
maxima clear of the exclusion cube and evaluates the voxels of the blocks it touches exactly.
Values agree with the tensor path to float32 rounding (the taps are summed in another order).
"""

from __future__ import annotations

import threading

import numpy as np
import torch

try:  # numba is a dependency; without it the tensor path (``global_search``) runs alone
    import numba
except ImportError:  # pragma: no cover - exercised only where numba cannot be installed
    numba = None

#: one batch at a time: numba's default thread pool is not safe for concurrent callers
_LOCK = threading.Lock()


def available() -> bool:
    """Whether the fused CPU kernel can run (numba importable)."""
    return numba is not None


if numba is not None:

    @numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
    def x_rows(pt, p_off, p_dims, ix, lx, h_off, h):  # pragma: no cover - compiled
        """h[b, h_off[l] + k * ny + r] (X,) = node row (k, r) of level l interpolated in x.

        pt (nodes, B) node dots of all levels, level l's padded grid (nz, ny, nx) flattened at
        p_off[l] (the layout the matrix products write); ix/lx (L, X) first node and second-node
        weight per output column."""
        bsz = pt.shape[1]
        nl = p_off.shape[0]
        xdim = ix.shape[1]
        one = np.float32(1.0)
        nrows = 0
        for lv in range(nl):
            nrows += p_dims[lv, 0] * p_dims[lv, 1]
        for row in numba.prange(nrows):  # rows of all levels, in h's order
            lv = 0
            while lv + 1 < nl and row >= h_off[lv + 1]:
                lv += 1
            nx = p_dims[lv, 2]
            start = p_off[lv] + (row - h_off[lv]) * nx
            src = pt[start : start + nx]  # (nx, B): a few KB, in L1
            i0 = ix[lv]
            w1 = lx[lv]
            for b in range(bsz):
                dst = h[b, row]
                for x in range(xdim):
                    i = i0[x]
                    dst[x] = (one - w1[x]) * src[i, b] + w1[x] * src[i + 1, b]

    @numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
    def rivals(pt, p_off, p_dims, iz, lz, iy, ly, ix, lx, invs, wl, loc, e, bs, bmax, out):  # pragma: no cover
        """out[b] = best fused value farther than e (Chebyshev) from loc[b] (-inf if none).

        Blocks clear of the exclusion cube count by their maxima (bmax (B, nbz, nby, nbx)); the
        voxels of the blocks it touches are evaluated exactly from the node dots pt (nodes, B)."""
        bsz = loc.shape[0]
        nl = len(invs)
        zdim, ydim, xdim = invs[0].shape
        nbz, nby, nbx = bmax.shape[1], bmax.shape[2], bmax.shape[3]
        one = np.float32(1.0)
        for b in numba.prange(bsz):
            c = loc[b]
            lo = np.empty(3, np.int64)
            hi = np.empty(3, np.int64)
            dims = (zdim, ydim, xdim)
            for d in range(3):
                lo[d] = max(0, c[d] - e) // bs
                hi[d] = min(dims[d] - 1, c[d] + e) // bs
            r = -np.inf
            for jz in range(nbz):
                inz = lo[0] <= jz <= hi[0]
                for jy in range(nby):
                    inside = inz and lo[1] <= jy <= hi[1]
                    row = bmax[b, jz, jy]
                    for jx in range(nbx):
                        if not (inside and lo[2] <= jx <= hi[2]):
                            r = max(r, row[jx])
            for z in range(lo[0] * bs, min(zdim, (hi[0] + 1) * bs)):
                for y in range(lo[1] * bs, min(ydim, (hi[1] + 1) * bs)):
                    for x in range(lo[2] * bs, min(xdim, (hi[2] + 1) * bs)):
                        if abs(z - c[0]) <= e and abs(y - c[1]) <= e and abs(x - c[2]) <= e:
                            continue
                        v = np.float32(0.0)
                        for lv in range(nl):
                            ny, nx = p_dims[lv, 1], p_dims[lv, 2]
                            kz, ky, kx = iz[lv, z], iy[lv, y], ix[lv, x]
                            wz, wy, wx = lz[lv, z], ly[lv, y], lx[lv, x]
                            n00 = p_off[lv] + (kz * ny + ky) * nx + kx  # node (kz, ky, kx)
                            n01 = n00 + nx
                            n10 = n00 + ny * nx
                            n11 = n10 + nx
                            d0 = (one - wy) * ((one - wx) * pt[n00, b] + wx * pt[n00 + 1, b]) + wy * (
                                (one - wx) * pt[n01, b] + wx * pt[n01 + 1, b])
                            d1 = (one - wy) * ((one - wx) * pt[n10, b] + wx * pt[n10 + 1, b]) + wy * (
                                (one - wx) * pt[n11, b] + wx * pt[n11 + 1, b])
                            v += wl[lv] * invs[lv][z, y, x] * ((one - wz) * d0 + wz * d1)
                        r = max(r, v)
            out[b] = r

    @numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
    def reduce_planes(h, h_off, p_dims, iz, lz, iy, ly, invs, wl, bs, task, best, best_idx, bmax):  # pragma: no cover
        """Fused maps of a batch reduced to per-task first maxima and block maxima.

        h (B, rows, X) x-rows from :func:`x_rows` (level l's node row (k, r) at
        h_off[l] + k * ny + r); iz/lz (L, Z) and iy/ly (L, Y) first node and second-node weight per
        output voxel; invs L arrays (Z, Y, X) of 1/||f_l||; wl (L,) level weights; ``task`` planes
        per parallel task (a multiple of bs). Outputs, all written here: best, best_idx (T, B)
        first maximum of each task and its flat voxel index; bmax (B, nbz, nby, nbx) block maxima.
        Per plane every level's rows are first interpolated in z
        (``hz``); then each output row sums all levels while it sits in L1, is kept in ``acc``
        (bs planes, for the argmax) and folded into its block row's column maxima (``cmax``), so
        the block maxima cost one small pass per bs planes.
        """
        bsz = h.shape[0]
        nl = len(invs)
        zdim, ydim, xdim = invs[0].shape
        nby, nbx = bmax.shape[2], bmax.shape[3]
        ntask = best.shape[0]
        one = np.float32(1.0)
        ninf = np.float32(-np.inf)
        rows = 0
        for lv in range(nl):
            rows += p_dims[lv, 1]
        # per level and output row: weights of its two z-interpolated rows (level weight included)
        wy0 = np.empty((nl, ydim), np.float32)
        wy1 = np.empty((nl, ydim), np.float32)
        ry = np.empty((nl, ydim), np.int64)
        start = 0
        for lv in range(nl):
            for y in range(ydim):
                wy0[lv, y] = wl[lv] * (one - ly[lv, y])
                wy1[lv, y] = wl[lv] * ly[lv, y]
                ry[lv, y] = start + iy[lv, y]
            start += p_dims[lv, 1]
        for t in numba.prange(ntask):
            acc = np.empty((bs, ydim, xdim), np.float32)
            hz = np.empty((rows, xdim), np.float32)  # every level's z-interpolated rows, stacked
            cmax = np.empty((nby, xdim), np.float32)
            z0 = t * task
            z1 = min(zdim, z0 + task)
            for b in range(bsz):
                hb = h[b]
                bv = ninf
                bi = 0
                for zb in range(z0, z1, bs):
                    ze = min(z1, zb + bs)
                    cmax[:] = ninf
                    for z in range(zb, ze):
                        r0 = 0
                        for lv in range(nl):
                            ny = p_dims[lv, 1]
                            lam = lz[lv, z]
                            lam0 = one - lam
                            a0 = h_off[lv] + iz[lv, z] * ny
                            for r in range(ny):
                                h0 = hb[a0 + r]
                                h1 = hb[a0 + ny + r]
                                d = hz[r0 + r]
                                for x in range(xdim):
                                    d[x] = lam0 * h0[x] + lam * h1[x]
                            r0 += ny
                        ap = acc[z - zb]
                        for y in range(ydim):
                            a = ap[y]
                            r = ry[0, y]
                            m0 = wy0[0, y]
                            m = wy1[0, y]
                            w = invs[0][z, y]
                            g0 = hz[r]
                            g1 = hz[r + 1]
                            for x in range(xdim):
                                a[x] = w[x] * (m0 * g0[x] + m * g1[x])
                            for lv in range(1, nl):
                                r = ry[lv, y]
                                m0 = wy0[lv, y]
                                m = wy1[lv, y]
                                w = invs[lv][z, y]
                                g0 = hz[r]
                                g1 = hz[r + 1]
                                for x in range(xdim):
                                    a[x] += w[x] * (m0 * g0[x] + m * g1[x])
                            c = cmax[y // bs]
                            for x in range(xdim):
                                c[x] = max(c[x], a[x])
                    jz = zb // bs
                    rowbest = ninf
                    for jy in range(nby):
                        c = cmax[jy]
                        bm = bmax[b, jz, jy]
                        for jx in range(nbx):
                            x0 = jx * bs
                            v = c[x0]
                            for x in range(x0 + 1, min(xdim, x0 + bs)):
                                v = max(v, c[x])
                            bm[jx] = v
                            rowbest = max(rowbest, v)
                    if rowbest > bv:
                        first = zdim * ydim * xdim
                        for jy in range(nby):
                            for jx in range(nbx):
                                if bmax[b, jz, jy, jx] == rowbest:
                                    for z in range(zb, ze):
                                        for y in range(jy * bs, min(ydim, jy * bs + bs)):
                                            for x in range(jx * bs, min(xdim, jx * bs + bs)):
                                                if acc[z - zb, y, x] == rowbest:
                                                    first = min(first, (z * ydim + y) * xdim + x)
                        bv = rowbest
                        bi = first
                best[t, b] = bv
                best_idx[t, b] = bi


class FusedPlanes:
    """Query-independent tables of one target side for :func:`reduce_planes` (built once)."""

    def __init__(self, levels: dict, weights: dict[str, float], image_shape, bs: int, task: int | None = None):
        zdim, ydim, xdim = (int(s) for s in image_shape)
        names = list(weights)
        self.names = names
        self.bs = int(bs)
        #: planes per parallel task: a multiple of bs near 12 (the x-rows of a batch are read from
        #: memory about once per task; the inv planes of a task stay in the last-level cache)
        self.task = int(task or max(1, 12 // self.bs) * self.bs)
        dims = [tuple(int(s) for s in levels[n].f.shape[:3]) for n in names]
        self.p_dims = np.array(dims, np.int64)
        sizes = [a * b * c for a, b, c in dims]
        self.p_off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        rows = [a * b for a, b, _ in dims]
        self.h_off = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
        self.h_rows = int(sum(rows))
        taps = [[levels[n].axes[d] for n in names] for d in range(3)]
        self.iz, self.lz = _taps(taps[0])
        self.iy, self.ly = _taps(taps[1])
        self.ix, self.lx = _taps(taps[2])
        # the levels' cached 1/||f|| maps, shared (no copy)
        self.invs = tuple(levels[n].full_inv_norm().numpy() for n in names)
        self.wl = np.array([weights[n] for n in names], np.float32)
        self.feats = {n: levels[n].f.reshape(-1, levels[n].channels) for n in names}  # (nodes, C) views
        self.shape = (zdim, ydim, xdim)
        self.nb = tuple(-(-s // self.bs) for s in self.shape)
        self.ntask = -(-zdim // self.task)

    def search(self, q: dict, exclusion: int, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit queries q {level: (B, C) float32 CPU tensor} -> target voxel (B, 3) (first maximum
        in C order), its score (B,) and the rival (B,): the best score farther than ``exclusion``
        voxels (Chebyshev) from it, -inf if none."""
        bsz = next(iter(q.values())).shape[0]
        pt = np.empty((self.p_off[-1] + int(np.prod(self.p_dims[-1])), bsz), np.float32)
        pt_t = torch.from_numpy(pt)
        for i, n in enumerate(self.names):  # node dots, written where the kernels read them
            f = self.feats[n]
            torch.mm(f, q[n].T, out=pt_t[self.p_off[i] : self.p_off[i] + f.shape[0]])
        h = np.empty((bsz, self.h_rows, self.shape[2]), np.float32)
        best = np.empty((self.ntask, bsz), np.float32)
        idx = np.empty((self.ntask, bsz), np.int64)
        bmax = np.empty((bsz,) + self.nb, np.float32)
        rival = np.empty(bsz, np.float32)
        with _LOCK:
            old = numba.get_num_threads()
            numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
            try:
                x_rows(pt, self.p_off, self.p_dims, self.ix, self.lx, self.h_off, h)
                reduce_planes(h, self.h_off, self.p_dims, self.iz, self.lz, self.iy, self.ly, self.invs, self.wl,
                              self.bs, self.task, best, idx, bmax)
                t = np.argmax(best, axis=0)  # first task (lowest z) holding the maximum: C-order ties
                cols = np.arange(bsz)
                score, flat = best[t, cols], idx[t, cols]
                loc = np.stack(np.unravel_index(flat, self.shape), axis=1).astype(np.int64)
                rivals(pt, self.p_off, self.p_dims, self.iz, self.lz, self.iy, self.ly, self.ix, self.lx,
                       self.invs, self.wl, loc, int(exclusion), self.bs, bmax, rival)
            finally:
                numba.set_num_threads(old)
        return loc, score, rival


def _taps(axes) -> tuple[np.ndarray, np.ndarray]:
    """(L, n_out) int64 first node and float32 weight of the second node, per level."""
    return (np.stack([a.i0 for a in axes]).astype(np.int64),
            np.stack([a.lam for a in axes]).astype(np.float32))
