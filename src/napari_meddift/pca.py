"""PCA views of descriptor levels: the first three components as RGB, fitted jointly.

The standard way to look at DIFT-style features: project every voxel's descriptor on the
first three principal components and show them as red, green and blue. Fitting the PCA on
*both* volumes at once (and colour-scaling both with the same limits) makes colours
correspond: the same anatomy gets the same colour in source and target.

Plain numpy/torch, no Qt. Levels are (C, z, y, x) arrays at their native resolution that span
the whole image as ``F.interpolate(..., size=image_shape, mode="trilinear",
align_corners=False)`` does. A "fused" descriptor is the concatenation of the L2-normalised
levels (each scaled by sqrt(weight / sum of weights), so its dot products are the fused cosine
similarity the matcher uses).

The RGB volume is computed on a *display grid* (by default the finest native grid of the chosen
levels, at most ``max_grid`` per axis) and comes with the ``scale`` and ``translate`` that put
it over the image in world (mm) coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PCAView", "display_grid", "grid_geometry", "sample_fused", "joint_pca_rgb", "pca_rgb"]


@dataclass
class PCAView:
    """RGB volumes (grid z, y, x, 3) in [0, 1], one per input, and their common PCA."""

    rgb: list[np.ndarray]
    components: np.ndarray  # (3, C) principal axes
    mean: np.ndarray  # (C,)
    explained: np.ndarray  # (3,) fraction of variance of each component
    levels: tuple[str, ...]
    grids: list[tuple[int, int, int]]


def display_grid(levels: Mapping[str, object], names: Sequence[str], image_shape, max_grid: int = 128):
    """The finest native grid among ``names``, capped at ``image_shape`` and ``max_grid`` per axis."""
    shapes = [tuple(int(s) for s in np.shape(levels[n])[1:]) for n in names]
    finest = tuple(max(s[a] for s in shapes) for a in range(3))
    return tuple(int(max(1, min(f, i, max_grid))) for f, i in zip(finest, image_shape))


def grid_geometry(grid_shape, image_shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    """(scale, translate) in world units of a grid spanning the image the align_corners=False way.

    Grid node i sits at image voxel (i + 0.5) * f - 0.5 with f = image / grid.
    """
    f = np.asarray(image_shape, float) / np.asarray(grid_shape, float)
    spacing = np.asarray(spacing, float)
    scale = f * spacing
    translate = np.asarray(origin, float) + (0.5 * f - 0.5) * spacing
    return tuple(float(s) for s in scale), tuple(float(t) for t in translate)


def _norm_coords(n_out: int) -> torch.Tensor:
    # output node d of an n_out grid in grid_sample's normalised coords (align_corners=False):
    # source position (d + 0.5) * n_in / n_out - 0.5 maps to 2 (d + 0.5) / n_out - 1 for any n_in.
    return (2.0 * (torch.arange(n_out, dtype=torch.float32) + 0.5) / n_out) - 1.0


def _level_weights(names: Sequence[str], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        weights = [1.0] * len(names)
    w = np.asarray(weights, float)
    if len(w) != len(names) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("level weights must be non-negative, one per level, not all zero")
    return list(np.sqrt(w / w.sum()))


def _as_tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().float().cpu()
    return torch.from_numpy(np.asarray(a, dtype=np.float32))


def sample_fused(levels: Mapping[str, object], names: Sequence[str], zyx_norm: torch.Tensor,
                 weights: Sequence[float] | None = None) -> torch.Tensor:
    """Fused descriptors (N, C) at points given in grid_sample coords (N, 3) ordered z, y, x."""
    ws = _level_weights(names, weights)
    grid = zyx_norm.flip(-1).reshape(1, 1, 1, -1, 3).float()  # grid_sample wants x, y, z
    out = []
    for name, w in zip(names, ws):
        lev = _as_tensor(levels[name])[None]  # 1, C, z, y, x
        v = F.grid_sample(lev, grid, mode="bilinear", padding_mode="border", align_corners=False)
        v = v.reshape(lev.shape[1], -1).T  # N, C
        out.append(F.normalize(v, dim=1) * w)
    return torch.cat(out, dim=1)


def _grid_coords(grid_shape, z0: int, z1: int) -> torch.Tensor:
    gz, gy, gx = (_norm_coords(n) for n in grid_shape)
    zz, yy, xx = torch.meshgrid(gz[z0:z1], gy, gx, indexing="ij")
    return torch.stack([zz, yy, xx], dim=-1).reshape(-1, 3)


def _fit(samples: torch.Tensor, n_components: int = 3):
    mean = samples.mean(0)
    centred = samples - mean
    # economy SVD of the (N, C) sample matrix; rows of vh are the principal axes
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    var = s**2
    k = min(n_components, vh.shape[0])
    comps = vh[:k]
    if k < n_components:  # fewer channels than components: pad with zeros
        comps = torch.cat([comps, torch.zeros(n_components - k, vh.shape[1])], 0)
        var = torch.cat([var, torch.zeros(n_components - k)])
    # fix the sign so results are reproducible: largest |loading| positive
    idx = comps.abs().argmax(dim=1)
    signs = torch.sign(comps[torch.arange(n_components), idx])
    signs[signs == 0] = 1
    comps = comps * signs[:, None]
    explained = (var[:n_components] / var.sum().clamp_min(1e-12)).numpy()
    return mean, comps, explained


def joint_pca_rgb(
    level_sets: Sequence[Mapping[str, object]],
    image_shapes: Sequence[Sequence[int]],
    levels: Sequence[str],
    weights: Sequence[float] | None = None,
    max_grid: int = 128,
    n_fit: int = 20000,
    seed: int = 0,
    percentiles: tuple[float, float] = (1.0, 99.0),
    chunk_voxels: int = 1 << 16,
) -> PCAView:
    """First three PCA components of the fused ``levels`` as RGB, fitted jointly over all inputs.

    ``level_sets[i]`` is {name: (C, z, y, x)} of volume i with image shape ``image_shapes[i]``.
    One level in ``levels`` gives that level's own PCA. The PCA is fitted on ``n_fit`` random
    display-grid voxels of each volume; every volume is projected on the same axes and mapped
    to [0, 1] with the same per-component limits (``percentiles`` of all projections).
    """
    levels = tuple(levels)
    if not levels:
        raise ValueError("choose at least one level")
    for ls in level_sets:
        missing = [n for n in levels if n not in ls]
        if missing:
            raise ValueError(f"levels {missing} not in the descriptors (have {sorted(ls)})")
    gen = torch.Generator().manual_seed(seed)
    grids = [display_grid(ls, levels, shp, max_grid) for ls, shp in zip(level_sets, image_shapes)]

    # fit on random display-grid voxels of every volume
    fit = []
    for ls, grid in zip(level_sets, grids):
        n = int(np.prod(grid))
        take = torch.randperm(n, generator=gen)[: min(n_fit, n)]
        zi, rem = take // (grid[1] * grid[2]), take % (grid[1] * grid[2])
        yi, xi = rem // grid[2], rem % grid[2]
        coords = torch.stack(
            [_norm_coords(grid[0])[zi], _norm_coords(grid[1])[yi], _norm_coords(grid[2])[xi]], dim=-1
        )
        fit.append(sample_fused(ls, levels, coords, weights))
    mean, comps, explained = _fit(torch.cat(fit, 0))

    # project every voxel of every display grid, in z slabs
    projs = []
    for ls, grid in zip(level_sets, grids):
        out = torch.empty(grid[0], grid[1], grid[2], 3)
        slab = max(1, chunk_voxels // (grid[1] * grid[2]))
        for z0 in range(0, grid[0], slab):
            z1 = min(grid[0], z0 + slab)
            feats = sample_fused(ls, levels, _grid_coords(grid, z0, z1), weights)
            out[z0:z1] = ((feats - mean) @ comps.T).reshape(z1 - z0, grid[1], grid[2], 3)
        projs.append(out)

    allp = torch.cat([p.reshape(-1, 3) for p in projs], 0)
    if allp.shape[0] > 2_000_000:  # quantiles on a subsample (torch.quantile has a size limit)
        allp = allp[torch.randperm(allp.shape[0], generator=gen)[:2_000_000]]
    lo = torch.quantile(allp, percentiles[0] / 100.0, dim=0)
    hi = torch.quantile(allp, percentiles[1] / 100.0, dim=0)
    span = (hi - lo).clamp_min(1e-12)
    rgb = [((p - lo) / span).clamp_(0, 1).numpy().astype(np.float32) for p in projs]
    return PCAView(rgb=rgb, components=comps.numpy(), mean=mean.numpy(), explained=explained,
                   levels=levels, grids=grids)


def pca_rgb(levels: Mapping[str, object], image_shape, names: Sequence[str], **kw) -> PCAView:
    """PCA view of one volume's descriptors (see :func:`joint_pca_rgb`)."""
    return joint_pca_rgb([levels], [image_shape], names, **kw)
