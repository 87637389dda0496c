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
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CancelledError, MedDiftError  # noqa: F401 - CancelledError is raised by callbacks
from ..matching import EPS, axis_taps

ProgressCallback = Callable[[int, int, str], None]


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
    """Per-axis displacement values in voxels: -r .. r in steps (always holding 0)."""
    r = int(radius) // int(step) * int(step)
    return np.arange(-r, r + 1, int(step), dtype=np.int64)


def cost_volume(
    source_levels: Mapping[str, torch.Tensor],
    target_levels: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    source_shape: Sequence[int],
    target_shape: Sequence[int],
    nodes: Sequence[np.ndarray],
    bases: Sequence[np.ndarray],
    offsets: np.ndarray,
    progress: ProgressCallback | None = None,
    budget_floats: int = 1 << 26,
) -> torch.Tensor:
    """Fused cosine SIMILARITY of source nodes against target voxels base + d, for every d.

    ``nodes``: source voxel indices per axis (z, y, x); ``bases``: the integer target voxel each
    node's displacement is measured from, per axis (same lengths); ``offsets``: displacement
    values per axis (voxels). Returns (Kz, Ky, Kx, D, D, D) float32, D = len(offsets); target
    voxels outside the image score 0 (no descriptor there). Exact: the same numbers as the
    matcher's window maps at those voxels.
    """
    dev = next(iter(source_levels.values())).device
    tshape = [int(s) for s in target_shape]
    kz, ky, kx = (len(n) for n in nodes)
    nd = len(offsets)
    out = torch.zeros((kz, ky, kx, nd, nd, nd), dtype=torch.float32, device=dev)
    csum = sum(int(v.shape[0]) for v in target_levels.values())

    # per axis: target index of (node, offset), and its row in the sampled lattice (last row = zero)
    def table(base: np.ndarray, n: int):
        t = base[:, None] + offsets[None, :]
        inside = (t >= 0) & (t < n)
        uniq = np.unique(t[inside])
        pos = np.searchsorted(uniq, np.clip(t, 0, n - 1))
        pos[~inside] = len(uniq)
        return uniq, pos

    uy, py = table(np.asarray(bases[1]), tshape[1])
    ux, px = table(np.asarray(bases[2]), tshape[2])
    per_plane = csum * (len(uy) + 1) * (len(ux) + 1)
    rows = max(1, int(budget_floats // max(1, per_plane * (1 + nd))))
    slabs = list(range(0, kz, rows))
    px_t = torch.as_tensor(px, device=dev)
    py_t = torch.as_tensor(py, device=dev)
    for si, z0 in enumerate(slabs):
        z1 = min(kz, z0 + rows)
        q = fused_descriptors(source_levels, weights, source_shape, nodes[0][z0:z1], nodes[1], nodes[2])
        uz, pz = table(np.asarray(bases[0][z0:z1]), tshape[0])
        if len(uz):
            t = fused_descriptors(target_levels, weights, tshape, uz, uy, ux)
        else:
            t = torch.zeros((csum, 0, len(uy), len(ux)), device=dev)
        t = F.pad(t, (0, 1, 0, 1, 0, 1))  # the zero row/column/plane for outside voxels
        pz_t = torch.as_tensor(pz, device=dev)
        for a in range(nd):
            tz = t.index_select(1, pz_t[:, a])  # (C, kz', Uy+1, Ux+1)
            for b in range(nd):
                tzy = tz.index_select(2, py_t[:, b])  # (C, kz', Ky, Ux+1)
                g = tzy[:, :, :, px_t]  # (C, kz', Ky, Kx, D)
                out[z0:z1, :, :, a, b, :] = torch.einsum("czyx,czyxd->zyxd", q, g)
        if progress is not None:
            progress(si + 1, len(slabs), "cost volume")
    return out


def check_pair(source_levels: Mapping, target_levels: Mapping, levels: Sequence[str] | None,
               weights: Mapping[str, float] | None) -> tuple[list[str], dict[str, float]]:
    """Levels both sides hold with equal channels, and normalised-later weights (one clear error otherwise)."""
    avail = [n for n in source_levels if n in target_levels]
    use = list(avail if levels is None else levels)
    if not use:
        raise MedDiftError("the source and target hold no common descriptor level; extract both with the same backbone")
    bad = [n for n in use if n not in avail]
    if bad:
        raise MedDiftError(f"level(s) {', '.join(bad)} not held by both stores; available: {', '.join(avail) or 'none'}")
    for n in use:
        cs, ct = int(source_levels[n].shape[0]), int(target_levels[n].shape[0])
        if cs != ct:
            raise MedDiftError(f"level {n!r} has {cs} channels in the source but {ct} in the target; "
                               "extract both volumes with the same backbone")
    w = {n: float((weights or {}).get(n, 1.0)) for n in use}
    if any(not math.isfinite(v) or v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise MedDiftError(f"level weights must be non-negative with a positive sum, got {w}")
    return use, w
