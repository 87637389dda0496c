"""Exact descriptors at chosen voxels and the fused cosine cost volume over a displacement range.

A voxel's descriptor is, per level, the trilinear upsampling (``align_corners=False``) of the
native level to the image grid, L2-normalised over channels (docs/method.md). Trilinear
interpolation is separable, so the descriptors at a lattice of voxels (any index sets per
axis) are computed exactly by interpolating one axis at a time, only at the wanted indices, with
the matcher's own per-axis taps (:func:`napari_meddift.matching.axis_taps`). Nothing at full
image resolution is ever materialised: the cost volume works on one slab of source nodes at a
time and only on the target voxels its displacements reach.

Fusion: the fused similarity is ``sum_l w_l cos_l`` with weights normalised to sum 1, so the
per-level unit descriptors are concatenated with ``sqrt(w_l)`` on each side and one dot product
gives the fused cosine.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MedDiftError
from ..progress import ProgressCallback
from ..matching import EPS, axis_taps



def _taps(n_in: int, n_out: int, idx: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    i0, lam = axis_taps(n_in, n_out)
    idx = np.asarray(idx, np.int64)
    a = i0[idx]
    b = np.minimum(a + 1, n_in - 1)  # PyTorch's clamped second tap (= the matcher's edge padding)
    return (torch.as_tensor(a, device=device), torch.as_tensor(b, device=device),
            torch.as_tensor(lam[idx], dtype=torch.float32, device=device))


def sample_level(level: torch.Tensor, image_shape: Sequence[int], iz, iy, ix) -> torch.Tensor:
    """Image-resolution descriptor (not normalised) of one level at voxels iz x iy x ix.

    ``level`` is (C, nz, ny, nx) native; ``iz, iy, ix`` are integer voxel indices per axis.
    Returns (C, len(iz), len(iy), len(ix)) float32, equal to ``F.interpolate(level, image_shape,
    mode='trilinear', align_corners=False)[:, iz][:, :, iy][:, :, :, ix]`` to float precision.
    """
    t = level
    for dim, (n_out, idx) in enumerate(zip(image_shape, (iz, iy, ix)), start=1):
        # order x, y, z would be cheapest for coarse levels; any order gives the same numbers
        a, b, lam = _taps(t.shape[dim], int(n_out), idx, t.device)
        shape = [1] * t.ndim
        shape[dim] = -1
        t = torch.lerp(t.index_select(dim, a), t.index_select(dim, b), lam.view(shape))
    return t


def fused_descriptors(levels: Mapping[str, torch.Tensor], weights: Mapping[str, float], image_shape,
                      iz, iy, ix) -> torch.Tensor:
    """Concatenated ``sqrt(w_l) * unit descriptor_l`` at the voxel lattice: (sum C, nz, ny, nx).

    The dot product of two such vectors is the matcher's fused cosine.
    """
    total = sum(weights.values())
    parts = []
    for name, lv in levels.items():
        d = sample_level(lv, image_shape, iz, iy, ix)
        d = F.normalize(d, dim=0, eps=EPS)
        parts.append(d * math.sqrt(weights[name] / total))
    return torch.cat(parts, 0)


def lattice(n: int, spacing: int) -> np.ndarray:
    """Node voxel indices of a regular lattice along an axis of n voxels: g//2, g//2 + g, ... (< n)."""
    g = max(1, int(spacing))
    return np.arange(g // 2, n, g, dtype=np.int64)


def displacement_offsets(radius: int, step: int) -> np.ndarray:
    """Per-axis displacement values in voxels: -P*step .. P*step (P = radius // step), holding 0."""
    r = int(radius) // int(step) * int(step)
    return np.arange(-r, r + 1, int(step), dtype=np.int64)


def _lattice_residue(bases: np.ndarray, step: int) -> tuple[int, np.ndarray]:
    """(residue r, lattice index j) with bases rounded onto the step lattice r + step * j."""
    b = np.asarray(bases, np.int64)
    r = int(b[0]) % step if len(b) else 0
    return r, np.rint((b - r) / step).astype(np.int64)


def cost_volume(
    source_levels: Mapping[str, torch.Tensor],
    target_levels: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    source_shape: Sequence[int],
    target_shape: Sequence[int],
    nodes: Sequence[np.ndarray],
    bases: Sequence[np.ndarray],
    radius: int,
    step: int,
    progress: ProgressCallback | None = None,
    block: tuple[int, int, int] = (2, 2, 4),
    budget_floats: int = 1 << 25,
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Fused cosine SIMILARITY of source nodes against target voxels base + d, for every d.

    ``nodes``: source voxel indices per axis (z, y, x); ``bases``: the integer target voxel each
    node's displacements start from, per axis. Displacements are ``-P*step .. P*step`` per axis
    (``P = radius // step``). Bases are put on the target's step lattice (rounded when they are
    not on one already); the bases used are returned. Returns ((Kz, Ky, Kx, D, D, D) float32 with
    D = 2P + 1, bases used). Target voxels outside the image score 0 (no descriptor there).

    Exact: the same numbers as the matcher's window maps at those voxels. Work: the target
    descriptors at the step lattice are sampled slab by slab (never the full image), and the dot
    products of a small block of nodes against the lattice region its windows cover are one
    matrix product.
    """
    dev = next(iter(source_levels.values())).device
    step = int(step)
    pad = int(radius) // step
    nd = 2 * pad + 1
    tshape = [int(s) for s in target_shape]
    kz, ky, kx = (len(n) for n in nodes)
    res, jb = zip(*(_lattice_residue(b, step) for b in bases))
    lat = [np.arange(r, n, step, dtype=np.int64) for r, n in zip(res, tshape)]  # voxel of lattice index
    used = [r + step * j for r, j in zip(res, jb)]
    out = torch.zeros((kz, ky, kx, nd, nd, nd), dtype=torch.float32, device=dev)
    csum = sum(int(v.shape[0]) for v in target_levels.values())
    ly, lx = len(lat[1]) + 2 * pad, len(lat[2]) + 2 * pad
    span_z = int(jb[0].max() - jb[0].min()) if kz else 0
    rows = max(1, min(kz, int(budget_floats // max(1, csum * ly * lx)) - nd))
    rows = max(block[0], rows // block[0] * block[0])
    slabs = list(range(0, kz, rows))
    d_ar = torch.arange(nd, device=dev)
    for si, z0 in enumerate(slabs):
        z1 = min(kz, z0 + rows)
        q = fused_descriptors(source_levels, weights, source_shape, nodes[0][z0:z1], nodes[1], nodes[2])
        # target lattice planes this slab's windows reach, as padded lattice indices [a, b)
        a, b = int(jb[0][z0:z1].min()), int(jb[0][z0:z1].max()) + 2 * pad + 1  # padded = lattice + pad
        zz = np.arange(a - pad, b - pad)  # lattice indices (may leave the image)
        inside = (zz >= 0) & (zz < len(lat[0]))
        t = torch.zeros((csum, len(zz), ly, lx), dtype=torch.float32, device=dev)
        if inside.any():
            t[:, np.flatnonzero(inside)[0]: np.flatnonzero(inside)[-1] + 1, pad:ly - pad, pad:lx - pad] = \
                fused_descriptors(target_levels, weights, tshape, lat[0][zz[inside]], lat[1], lat[2])
        for bz in range(z0, z1, block[0]):
            ez = min(z1, bz + block[0])
            for by in range(0, ky, block[1]):
                ey = min(ky, by + block[1])
                for bx in range(0, kx, block[2]):
                    ex = min(kx, bx + block[2])
                    jz, jy, jx = jb[0][bz:ez] - a, jb[1][by:ey], jb[2][bx:ex]  # window starts (padded)
                    oz, oy, ox = int(jz.min()), int(jy.min()), int(jx.min())
                    region = t[:, oz:int(jz.max()) + nd, oy:int(jy.max()) + nd, ox:int(jx.max()) + nd]
                    mz, my, mx = region.shape[1:]
                    qb = q[:, bz - z0:ez - z0, by:ey, bx:ex].reshape(csum, -1).T  # (B, C)
                    s = (qb @ region.reshape(csum, -1)).reshape(-1, mz, my, mx)
                    nb = (ez - bz, ey - by, ex - bx)
                    iz = torch.as_tensor(jz - oz, device=dev)[:, None] + d_ar  # (nbz, D)
                    iy = torch.as_tensor(jy - oy, device=dev)[:, None] + d_ar
                    ix = torch.as_tensor(jx - ox, device=dev)[:, None] + d_ar
                    bi = torch.arange(s.shape[0], device=dev).view(*nb, 1, 1, 1)
                    gz = iz.view(nb[0], 1, 1, nd, 1, 1)
                    gy = iy.view(1, nb[1], 1, 1, nd, 1)
                    gx = ix.view(1, 1, nb[2], 1, 1, nd)
                    out[bz:ez, by:ey, bx:ex] = s[bi, gz, gy, gx]
        if progress is not None:
            progress(si + 1, len(slabs), "cost volume")
    del span_z
    return out, used


def check_pair(source_levels: Mapping, target_levels: Mapping, levels: Sequence[str] | None,
               weights: Mapping[str, float] | None) -> tuple[list[str], dict[str, float]]:
    """Levels both sides hold with equal channels, and normalised-later weights (one clear error otherwise)."""
    avail = [n for n in source_levels if n in target_levels]
    use = list(avail if levels is None else levels)
    if not use:
        raise MedDiftError("the source and target hold no common descriptor level; extract both with the same backbone")
    bad = [n for n in use if n not in avail]
    if bad:
        raise MedDiftError(
            f"level(s) {', '.join(bad)} not held by both stores; available: {', '.join(avail) or 'none'}"
        )
    for n in use:
        cs, ct = int(source_levels[n].shape[0]), int(target_levels[n].shape[0])
        if cs != ct:
            raise MedDiftError(f"level {n!r} has {cs} channels in the source but {ct} in the target; "
                               "extract both volumes with the same backbone")
    w = {n: float((weights or {}).get(n, 1.0)) for n in use}
    if any(not math.isfinite(v) or v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise MedDiftError(f"level weights must be non-negative with a positive sum, got {w}")
    return use, w
