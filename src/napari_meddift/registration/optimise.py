"""ConvexAdam's two optimisers on a descriptor cost volume (Siebert, Hansen, Heinrich 2021).

1. Coupled convex optimisation: the per-node best displacement of the cost volume is smoothed;
   then, for a rising coupling weight, each node takes the displacement minimising its own cost
   plus the squared distance to the smoothed field, and the field is smoothed again. Global,
   discrete, no local minima from the data term.
2. Instance optimisation with Adam: a displacement lattice is refined sub-voxel, maximising the
   fused cosine between source descriptors and target descriptors sampled (trilinearly, exactly
   as the method upsamples them) at the displaced positions, with a diffusion or bending penalty.

Fields here are (3, Kz, Ky, Kx) in TARGET voxels on a regular source lattice whose nodes sit at
``o + g * k`` (``o = g // 2``, see :func:`napari_meddift.registration.cost.lattice`).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import ProgressCallback
from ..matching import EPS


#: the coupling weights of ConvexAdam's schedule (displacements in units of the search step)
COUPLING = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def smooth3(u: torch.Tensor, times: int = 1) -> torch.Tensor:
    """3x3x3 box filter with edge replication over the last three axes of (C, z, y, x)."""
    x = u[None]
    for _ in range(times):
        x = F.avg_pool3d(F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x[0]


def coupled_convex(similarity: torch.Tensor, offsets: np.ndarray, step: int,
                   coupling: Sequence[float] = COUPLING, progress: ProgressCallback | None = None,
                   chunk: int = 4096) -> torch.Tensor:
    """(Kz, Ky, Kx, D, D, D) fused similarity -> smooth displacement (3, Kz, Ky, Kx) in voxels."""
    kz, ky, kx, nd = similarity.shape[:4]
    k = kz * ky * kx
    cost = (1.0 - similarity).reshape(kz, ky, kx, nd**3).permute(3, 0, 1, 2)
    # aggregate the cost over neighbouring nodes (patch-wise matching), channels in chunks
    cost = torch.cat([smooth3(cost[i:i + 512]) for i in range(0, nd**3, 512)], 0)
    cost = cost.reshape(nd**3, k).T.contiguous()  # (K, D^3)
    o = torch.as_tensor(offsets / float(step), dtype=torch.float32, device=similarity.device)
    dvec = torch.stack(torch.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)  # (D^3, 3) in steps
    dn2 = (dvec**2).sum(1)

    def field(idx: torch.Tensor) -> torch.Tensor:
        return smooth3(dvec[idx].T.reshape(3, kz, ky, kx))

    u = field(cost.argmin(1))
    for j, c in enumerate(coupling):
        us = u.reshape(3, k).T  # (K, 3)
        idx = torch.empty(k, dtype=torch.long, device=cost.device)
        for s in range(0, k, chunk):
            e = min(k, s + chunk)
            # ||d - u||^2 = |d|^2 - 2 d.u + |u|^2 (the last term does not change the argmin)
            coupled = cost[s:e] + c * (dn2[None] - 2.0 * us[s:e] @ dvec.T)
            idx[s:e] = coupled.argmin(1)
        u = field(idx)
        if progress is not None:
            progress(j + 1, len(coupling), "coupled convex optimisation")
    return u * float(step)


def sample_lattice(u: torch.Tensor, spacing: int, positions: torch.Tensor) -> torch.Tensor:
    """Trilinear value of lattice field u (C, Kz, Ky, Kx) at voxel positions (3, ...) (edge-clamped)."""
    g = float(spacing)
    o = float(int(spacing) // 2)
    ks = u.shape[1:]
    coords = []
    for a in (2, 1, 0):  # grid_sample wants x, y, z
        idx = (positions[a] - o) / g
        coords.append(2.0 * idx / (ks[a] - 1) - 1.0 if ks[a] > 1 else torch.zeros_like(idx))
    grid = torch.stack(coords, -1).reshape(1, 1, 1, -1, 3)
    out = F.grid_sample(u[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape((u.shape[0],) + tuple(positions.shape[1:]))


def lattice_positions(nodes: Sequence[np.ndarray], device) -> torch.Tensor:
    """(3, Kz, Ky, Kx) voxel positions of a lattice given its per-axis node indices."""
    axes = [torch.as_tensor(n, dtype=torch.float32, device=device) for n in nodes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def inverse_consistency(forward: torch.Tensor, backward: torch.Tensor, spacing: int,
                        nodes_f: Sequence[np.ndarray], nodes_b: Sequence[np.ndarray], iterations: int = 15
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetrise a forward (source lattice) and a backward (target lattice) field, as ConvexAdam.

    Each step replaces u_f by (u_f - u_b(x + u_f)) / 2 and u_b by (u_b - u_f(y + u_b)) / 2;
    a pair of exact inverses is a fixed point.
    """
    pf = lattice_positions(nodes_f, forward.device)
    pb = lattice_positions(nodes_b, backward.device)
    for _ in range(int(iterations)):
        f_new = 0.5 * (forward - sample_lattice(backward, spacing, pf + forward))
        b_new = 0.5 * (backward - sample_lattice(forward, spacing, pb + backward))
        forward, backward = f_new, b_new
    return forward, backward


def _regulariser(u: torch.Tensor, spacing: int, kind: str) -> torch.Tensor:
    g = float(spacing)
    if kind == "bending":
        terms = [((u[:, 2:] - 2 * u[:, 1:-1] + u[:, :-2]) / g**2).pow(2).mean(),
                 ((u[:, :, 2:] - 2 * u[:, :, 1:-1] + u[:, :, :-2]) / g**2).pow(2).mean(),
                 ((u[:, :, :, 2:] - 2 * u[:, :, :, 1:-1] + u[:, :, :, :-2]) / g**2).pow(2).mean()]
        return sum(t for t in terms if torch.isfinite(t)) * 10.0  # comparable scale to diffusion
    terms = [((u[:, 1:] - u[:, :-1]) / g).pow(2).mean(), ((u[:, :, 1:] - u[:, :, :-1]) / g).pow(2).mean(),
             ((u[:, :, :, 1:] - u[:, :, :, :-1]) / g).pow(2).mean()]
    return sum(t for t in terms if torch.isfinite(t))


def instance_optimise(
    source_levels: Mapping[str, torch.Tensor],
    target_levels: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    source_shape: Sequence[int],
    target_shape: Sequence[int],
    nodes: Sequence[np.ndarray],
    base: torch.Tensor,
    init: torch.Tensor,
    spacing: int,
    iterations: int,
    smoothness: float,
    regulariser: str = "diffusion",
    learning_rate: float = 0.2,
    smoothing: int = 1,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Adam refinement of a lattice field (3, Az, Ay, Ax) in target voxels; returns the smoothed field.

    ``base``: (3, Az, Ay, Ax) target voxel each node's displacement starts from; ``init``: the
    starting displacement on the same lattice; ``smoothing``: 3x3x3 box passes applied to the
    parameters before use (ConvexAdam uses 2 on a finer lattice). Loss: mean(1 - fused cosine) + smoothness * penalty.
    """
    from .cost import fused_descriptors

    total = sum(weights.values())
    with torch.no_grad():
        parts = {}
        for name, lv in source_levels.items():
            d = fused_descriptors({name: lv}, {name: 1.0}, source_shape, *nodes)
            parts[name] = d * math.sqrt(weights[name] / total)
    tgt = {n: v[None] for n, v in target_levels.items()}
    tshape = torch.as_tensor([float(s) for s in target_shape], device=base.device).view(3, 1, 1, 1)
    u = torch.nn.Parameter(init.clone())
    opt = torch.optim.Adam([u], lr=float(learning_rate))
    for it in range(int(iterations)):
        opt.zero_grad(set_to_none=True)
        us = smooth3(u, times=smoothing) if smoothing else u
        pos = base + us
        norm = (2.0 * pos + 1.0) / tshape - 1.0  # align_corners=False: image voxel -> [-1, 1]
        grid = norm.flip(0).permute(1, 2, 3, 0)[None]  # (1, Az, Ay, Ax, 3) as x, y, z
        sim = 0.0
        for name, q in parts.items():
            f = F.grid_sample(tgt[name], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
            f = F.normalize(f, dim=0, eps=EPS) * math.sqrt(weights[name] / total)
            sim = sim + (f * q).sum(0)
        loss = (1.0 - sim).mean() + float(smoothness) * _regulariser(us, spacing, regulariser)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(it + 1, int(iterations), f"instance optimisation (loss {float(loss.detach()):.4f})")
    with torch.no_grad():
        return smooth3(u.detach(), times=smoothing) if smoothing else u.detach()
