"""Distinctive keypoints inside the lungs (Förstner-style 3D corner measure).

As lung-CT keypoint detectors do (e.g. the Förstner operator used for the Learn2Reg corrField
keypoints): the image is smoothed, its gradient outer products are averaged with a Gaussian
(the structure tensor S), and the distinctiveness is ``det(S) / trace(S)`` - large only where
the intensity varies in all three directions (vessel branchings, fissure/vessel crossings),
not along tubes or sheets. Local maxima inside the eroded lung mask, separated by at least
``min_distance_mm``, strongest first. Fully deterministic (ties broken by voxel index).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def forstner_measure(image: np.ndarray, spacing=(1.0, 1.0, 1.0), sigma_mm: float = 1.0,
                     rho_mm: float = 2.0) -> np.ndarray:
    """Förstner's corner measure ``det(S) / trace(S)`` of the 3D structure tensor ``S``.

    ``image``: the CT, shape (z, y, x), in HU.
    ``spacing``: voxel spacing (z, y, x) in mm.
    ``sigma_mm``: Gaussian pre-smoothing in mm.
    ``rho_mm``: Gaussian integration scale of the tensor in mm.

    Returns the measure, shape (z, y, x), float32 (gradients in HU/mm); high at corner-like voxels.
    """
    sp = np.asarray(spacing, dtype=float)
    img = ndi.gaussian_filter(np.asarray(image, dtype=np.float32), sigma_mm / sp)
    g = np.gradient(img, *sp)
    S = {}
    for i in range(3):
        for j in range(i, 3):
            S[i, j] = ndi.gaussian_filter(g[i] * g[j], rho_mm / sp)
    det = (
        S[0, 0] * (S[1, 1] * S[2, 2] - S[1, 2] ** 2)
        - S[0, 1] * (S[0, 1] * S[2, 2] - S[1, 2] * S[0, 2])
        + S[0, 2] * (S[0, 1] * S[1, 2] - S[1, 1] * S[0, 2])
    )
    tr = S[0, 0] + S[1, 1] + S[2, 2]
    return (det / (tr + 1e-6)).astype(np.float32)


def lung_keypoints(
    image: np.ndarray,
    lungs: np.ndarray,
    spacing=(1.0, 1.0, 1.0),
    n: int = 300,
    min_distance_mm: float = 7.0,
    erode_mm: float = 5.0,
    sigma_mm: float = 1.0,
    rho_mm: float = 2.0,
) -> np.ndarray:
    """Distinctive keypoints inside the lungs: local maxima of :func:`forstner_measure`.

    ``image``: the CT, shape (z, y, x), in HU.
    ``lungs``: boolean lung mask, shape (z, y, x).
    ``spacing``: voxel spacing (z, y, x) in mm.
    ``n``: the most keypoints returned, strongest first.
    ``min_distance_mm``: the least distance between two keypoints, in mm.
    ``erode_mm``: the mask is eroded by this much first, so keypoints keep off the lung surface.
    ``sigma_mm``, ``rho_mm``: scales of :func:`forstner_measure`.

    Returns up to ``n`` voxel indices, shape (M, 3), (z, y, x), int.
    """
    sp = np.asarray(spacing, dtype=float)
    iters = np.maximum(1, np.round(erode_mm / sp)).astype(int)
    inner = np.asarray(lungs, dtype=bool)
    # anisotropic erosion: erode each axis by its own number of voxels
    for ax in range(3):
        st = np.zeros((3, 3, 3), dtype=bool)
        st[1, 1, 1] = True
        idx = [1, 1, 1]
        idx[ax] = 0
        st[tuple(idx)] = True
        idx[ax] = 2
        st[tuple(idx)] = True
        inner = ndi.binary_erosion(inner, structure=st, iterations=int(iters[ax]))
    if not inner.any():
        return np.zeros((0, 3), dtype=np.int64)
    m = forstner_measure(image, sp, sigma_mm, rho_mm)
    size = np.maximum(3, 2 * np.round(min_distance_mm / 2 / sp).astype(int) + 1)
    is_max = (m == ndi.maximum_filter(m, size=tuple(int(s) for s in size))) & inner & (m > 0)
    cand = np.argwhere(is_max)
    vals = m[is_max]
    order = np.lexsort((np.arange(len(vals)), -vals))  # strongest first, then index order
    cand = cand[order]
    chosen: list[np.ndarray] = []
    min_d2 = min_distance_mm ** 2
    taken = np.zeros((0, 3))
    for c in cand:
        pm = c * sp
        if len(taken) and (((taken - pm) ** 2).sum(1) < min_d2).any():
            continue
        chosen.append(c)
        taken = np.vstack([taken, pm])
        if len(chosen) >= n:
            break
    return np.asarray(chosen, dtype=np.int64).reshape(-1, 3)
