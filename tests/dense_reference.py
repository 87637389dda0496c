"""Independent dense implementation of MedDIFT similarity, for tests and benchmarks only.

It does literally what the method text says (and what the reference code holds in memory):
upsample every level to the image shape with ``F.interpolate(trilinear, align_corners=False)``,
L2-normalise over channels, scale level l by sqrt(w_l / sum w) and concatenate, so that a plain
dot product is the weighted mean of per-level cosines. Nothing here is shared with
``napari_meddift.matching``: agreement between the two is evidence, not tautology.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def dense_level(feat, image_shape) -> torch.Tensor:
    """(C, z, y, x) native -> (C, Z, Y, X) unit descriptors at image resolution (float32)."""
    t = torch.as_tensor(np.asarray(feat) if not isinstance(feat, torch.Tensor) else feat).float()
    up = F.interpolate(t[None], size=tuple(image_shape), mode="trilinear", align_corners=False)[0]
    return F.normalize(up, dim=0)


def dense_descriptors(levels: dict, image_shape, names, weights=None) -> torch.Tensor:
    """Weighted concatenation of the chosen levels' dense unit descriptors."""
    weights = {n: 1.0 for n in names} if weights is None else {n: float(weights.get(n, 1.0)) for n in names}
    total = sum(weights.values())
    parts = [dense_level(levels[n], image_shape) * (weights[n] / total) ** 0.5 for n in names]
    return torch.cat(parts, dim=0)


def window_box(voxel, source_shape, target_shape, radius):
    """Window of half-width radius around the source voxel mapped into the target, clipped."""
    voxel = [int(v) for v in voxel]
    if tuple(source_shape) == tuple(target_shape):
        center = voxel
    else:
        center = [
            min(max(int(np.floor((u + 0.5) * t / s - 0.5 + 0.5)), 0), t - 1)
            for u, s, t in zip(voxel, source_shape, target_shape)
        ]
    if radius is None:
        return tuple(slice(0, t) for t in target_shape), tuple(center)
    return tuple(slice(max(0, c - radius), min(t, c + radius + 1)) for c, t in zip(center, target_shape)), tuple(center)


class DenseMatcher:
    """Holds dense descriptors of both volumes (memory: sum C * Z*Y*X * 4 bytes each)."""

    def __init__(self, src_levels, tgt_levels, src_shape, tgt_shape, names=None, weights=None):
        names = list(src_levels) if names is None else list(names)
        self.names, self.src_shape, self.tgt_shape = names, tuple(src_shape), tuple(tgt_shape)
        self.weights = weights
        self.src = dense_descriptors(src_levels, src_shape, names, weights)
        self.tgt = dense_descriptors(tgt_levels, tgt_shape, names, weights)
        self._src_levels = {n: dense_level(src_levels[n], src_shape) for n in names}
        self._tgt_levels = {n: dense_level(tgt_levels[n], tgt_shape) for n in names}

    def similarity(self, voxel, radius):
        """(box, fused map over box, {level: cosine map over box})."""
        box, _ = window_box(voxel, self.src_shape, self.tgt_shape, radius)
        z, y, x = (int(v) for v in voxel)
        q = self.src[:, z, y, x]
        fused = torch.einsum("c,czyx->zyx", q, self.tgt[(slice(None),) + box])
        per = {}
        for n in self.names:
            qn = self._src_levels[n][:, z, y, x]
            per[n] = torch.einsum("c,czyx->zyx", qn, self._tgt_levels[n][(slice(None),) + box]).numpy()
        return box, fused.numpy(), per

    def match(self, voxel, radius):
        """(target voxel, score) by argmax of the fused map (first maximum in C order)."""
        box, fused, _ = self.similarity(voxel, radius)
        idx = np.unravel_index(int(np.argmax(fused)), fused.shape)
        return tuple(int(i + b.start) for i, b in zip(idx, box)), float(fused[idx])


def dense_global_argmax(src_desc: torch.Tensor, tgt_desc: torch.Tensor, points) -> tuple[np.ndarray, np.ndarray]:
    """Global argmax of many source points against a dense target (as the reference does)."""
    c = tgt_desc.shape[0]
    flat = tgt_desc.reshape(c, -1)
    out, score = [], []
    for z, y, x in np.asarray(points, dtype=np.int64):
        s = src_desc[:, z, y, x] @ flat
        v, i = s.max(0)
        out.append(np.unravel_index(int(i), tgt_desc.shape[1:]))
        score.append(float(v))
    return np.asarray(out, np.int64), np.asarray(score, np.float32)
