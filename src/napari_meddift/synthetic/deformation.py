"""Smooth, invertible breathing deformations with exact ground truth.

Convention (all arrays numpy order z, y, x):

* ``u`` is a displacement field in **mm**, shape (3, Z, Y, X), defined on the **exhale** grid.
  The exhale image is the inhale image pulled back through ``phi(x) = x + u(x)``:
  ``exhale(x) = inhale(x + u(x))`` (``x`` in mm, converted to voxels with the spacing).
* Cranio-caudal motion grows linearly from the lung apex (about 0) to the diaphragm (full
  amplitude): an exhale point near the diaphragm sits ``amplitude_si`` mm more cranially than
  its inhale position. A smaller antero-posterior component (anterior chest wall) is added,
  plus a random smooth perturbation (Gaussian-smoothed noise, seeded). The whole field is
  Gaussian-smoothed, limited to ``max_mm`` and scaled down until the Jacobian determinant of
  ``phi`` stays above ``min_jacobian`` everywhere (so the map is a diffeomorphism on the grid).
* Lung density follows mass preservation: an exhale lung voxel holds the tissue of an inhale
  region ``det J_phi`` times its size, so ``HU_ex + 1000 = (HU_in(phi(x)) + 1000) * det J_phi(x)``.
  This is the same as ``(HU + 1000) / det J - 1000`` with ``J`` the Jacobian of the inverse
  (inhale -> exhale) map. It is applied inside the (warped) lung mask only and clipped.
* Exact landmarks: an inhale point ``p`` corresponds to the exhale point ``p'`` solving
  ``p' + u(p') = p``, with ``u`` interpolated trilinearly (the interpolation the warp uses).
  :func:`inhale_to_exhale` solves it by Newton iteration with a fixed-point fallback
  to a residual below 1e-4 voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..errors import MedDiftError

HU_AIR = -1000.0


# --------------------------------------------------------------------------- anatomy helpers


def anatomical_axes(direction: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors pointing caudal and anterior, in array-axis components (z, y, x).

    ``direction``: ITK's 3x3 direction matrix (LPS world, columns = index axes i, j, k); None is
    the identity. Array axis a is index axis 2 - a; superior is +z in LPS, anterior -y.

    Returns ``(caudal, anterior)``, each shape (3,), unit length.
    """
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    caudal = np.array([-d[2, 2 - a] for a in range(3)])
    anterior = np.array([-d[1, 2 - a] for a in range(3)])
    return caudal / np.linalg.norm(caudal), anterior / np.linalg.norm(anterior)


def lung_mask(hu: np.ndarray, spacing=(1.0, 1.0, 1.0), si_axis: int = 0, threshold: float = -400.0,
              closing_mm: float = 5.0) -> np.ndarray:
    """Boolean lung mask: air-like voxels inside the body.

    Air components touching the in-plane faces of the volume (outside air) are dropped; of the
    rest the largest (and the second largest when it is at least 10 % of it: the other lung)
    are kept; then a small closing and a slice-wise hole filling take the vessels in.

    ``hu``: the CT, shape (z, y, x), in HU.
    ``spacing``: voxel spacing (z, y, x) in mm.
    ``si_axis``: the array axis closest to superior-inferior (its end faces are not "outside").
    ``threshold``: voxels below this many HU count as air.
    ``closing_mm``: radius of the closing in mm.

    Returns the mask, shape (z, y, x), bool; all False when there is no air inside the body.
    """
    hu = np.asarray(hu)
    air = hu < threshold
    lab, n = ndi.label(air)
    if n == 0:
        return np.zeros(hu.shape, dtype=bool)
    border = set()
    for ax in range(3):
        if ax == si_axis:
            continue
        for idx in (0, hu.shape[ax] - 1):
            border.update(np.unique(np.take(lab, idx, axis=ax)).tolist())
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    for b in border:
        sizes[b] = 0
    order = np.argsort(sizes)[::-1]
    keep = [order[0]] if sizes[order[0]] > 0 else []
    if len(order) > 1 and sizes[order[1]] >= 0.1 * max(sizes[order[0]], 1):
        keep.append(order[1])
    mask = np.isin(lab, keep)
    if not mask.any():
        return mask
    sp = np.asarray(spacing, dtype=float)
    r = np.maximum(1, np.round(closing_mm / sp)).astype(int)
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    ball = (zz / r[0]) ** 2 + (yy / r[1]) ** 2 + (xx / r[2]) ** 2 <= 1.0
    padded = np.pad(mask, [(int(k), int(k)) for k in r])
    closed = ndi.binary_closing(padded, structure=ball)
    mask = closed[r[0]:-r[0], r[1]:-r[1], r[2]:-r[2]]
    for k in range(mask.shape[si_axis]):  # slice-wise fill: vessels inside the lungs
        sl = [slice(None)] * 3
        sl[si_axis] = k
        mask[tuple(sl)] = ndi.binary_fill_holes(mask[tuple(sl)])
    return mask


# --------------------------------------------------------------------------- fields


def jacobian_determinant(u_mm: np.ndarray, spacing) -> np.ndarray:
    """Jacobian determinant of ``x -> x + u(x)`` (central differences).

    ``u_mm``: displacement field, shape (3, z, y, x), components (z, y, x) in mm.
    ``spacing``: voxel spacing (z, y, x) in mm.

    Returns ``det(I + du/dx)``, shape (z, y, x), dimensionless; below 0 where the map folds.
    """
    sp = np.asarray(spacing, dtype=float)
    grads = np.empty((3, 3) + u_mm.shape[1:], dtype=np.float64)
    for i in range(3):
        g = np.gradient(u_mm[i].astype(np.float64), *sp)
        for j in range(3):
            grads[i, j] = g[j]
    J = grads + np.eye(3)[:, :, None, None, None]
    return (
        J[0, 0] * (J[1, 1] * J[2, 2] - J[1, 2] * J[2, 1])
        - J[0, 1] * (J[1, 0] * J[2, 2] - J[1, 2] * J[2, 0])
        + J[0, 2] * (J[1, 0] * J[2, 1] - J[1, 1] * J[2, 0])
    )


@dataclass
class BreathingField:
    """A breathing displacement on the exhale grid and what :func:`breathing_field` measured on it.

    ``u_mm`` (3, z, y, x) float32, components (z, y, x) in mm; ``spacing`` (z, y, x) mm;
    displacement and Jacobian extremes after scaling; ``scale`` the factor applied to reach the
    limits (1.0 when none was needed); ``seed`` of the random part.
    """

    u_mm: np.ndarray  # (3, Z, Y, X) float32, on the exhale grid
    spacing: tuple[float, float, float]
    max_displacement_mm: float
    min_jacobian: float
    max_jacobian: float
    scale: float  # factor applied to reach the limits (1.0 when none was needed)
    seed: int

    def u_voxels(self) -> np.ndarray:
        """The displacement in voxels, shape (3, z, y, x), float32."""
        return self.u_mm / np.asarray(self.spacing, dtype=np.float32)[:, None, None, None]


def breathing_field(
    shape: tuple[int, int, int],
    spacing,
    lungs: np.ndarray,
    direction: np.ndarray | None = None,
    seed: int = 0,
    amplitude_si: float = 25.0,
    amplitude_ap: float = 8.0,
    noise_mm: float = 3.0,
    noise_sigma_mm: float = 20.0,
    smooth_mm: float = 8.0,
    max_mm: float = 18.0,
    min_jacobian: float = 0.3,
) -> BreathingField:
    """A smooth, invertible breathing displacement (module docstring: the model).

    ``shape``: the grid (z, y, x) in voxels.
    ``spacing``: voxel spacing (z, y, x) in mm.
    ``lungs``: boolean lung mask, shape ``shape``, not empty.
    ``direction``: ITK's 3x3 direction matrix (None: identity), for the anatomical axes.
    ``seed``: seed of the random smooth perturbation.
    ``amplitude_si``, ``amplitude_ap``: peak cranio-caudal / antero-posterior displacement in mm
    before the final smoothing, which lowers them (with the defaults, a thorax at
    2.5 mm gets about 15-18 mm at the diaphragm).
    ``noise_mm``, ``noise_sigma_mm``: amplitude and smoothness (Gaussian sigma) of the perturbation, mm.
    ``smooth_mm``: Gaussian sigma of the final smoothing in mm.
    ``max_mm``: cap on the displacement length in mm.
    ``min_jacobian``: the field is scaled down until ``det J`` stays above this everywhere.

    Returns the field on the exhale grid with its measured extremes.

    Raises MedDiftError: an empty lung mask or one of another shape.
    """
    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=float)
    if lungs.shape != shape or not lungs.any():
        raise MedDiftError("breathing_field needs a non-empty lung mask of the volume's shape")
    caudal, anterior = anatomical_axes(direction)
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) * s for n, s in zip(shape, sp)], indexing="ij")
    s_cc = sum(c * g for c, g in zip(caudal, grid))  # mm along the caudal direction
    s_ap = sum(a * g for a, g in zip(anterior, grid))  # mm along the anterior direction
    lz = lungs
    top, bottom = float(s_cc[lz].min()), float(s_cc[lz].max())
    post, ant = float(s_ap[lz].min()), float(s_ap[lz].max())
    r_cc = np.clip((s_cc - top) / max(bottom - top, 1e-6), 0.0, 1.0)
    r_ap = np.clip((s_ap - post) / max(ant - post, 1e-6), 0.0, 1.0)

    # where things move: the lungs and their surroundings, fading out over a few cm
    sig_w = 15.0 / sp
    w = ndi.gaussian_filter(ndi.binary_dilation(lz, iterations=2).astype(np.float32), sig_w)
    w = np.clip(w / max(float(np.percentile(w[lz], 90)), 1e-6), 0.0, 1.0)

    rng = np.random.default_rng(seed)
    u = np.zeros((3,) + shape, dtype=np.float32)
    mag_cc = amplitude_si * r_cc * w
    mag_ap = amplitude_ap * r_ap * (0.5 + 0.5 * r_cc) * w
    for a in range(3):
        # inhale position = exhale position + u: lower (caudal) and more anterior
        u[a] = caudal[a] * mag_cc + anterior[a] * mag_ap
        n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), noise_sigma_mm / sp)
        n /= max(float(np.abs(n).max()), 1e-12)
        u[a] += noise_mm * n * w
        u[a] = ndi.gaussian_filter(u[a], smooth_mm / sp)

    scale = 1.0
    norm = float(np.sqrt((u.astype(np.float64) ** 2).sum(0)).max())
    if norm > max_mm:
        scale = max_mm / norm
        u *= scale
    det = jacobian_determinant(u, sp)
    while det.min() < min_jacobian:
        u *= 0.8
        scale *= 0.8
        det = jacobian_determinant(u, sp)
        if scale < 1e-3:
            raise MedDiftError("could not make the breathing deformation invertible")
    assert det.min() > 0, "Jacobian determinant must be positive"
    return BreathingField(
        u_mm=u.astype(np.float32),
        spacing=tuple(float(s) for s in sp),  # type: ignore[arg-type]
        max_displacement_mm=float(np.sqrt((u.astype(np.float64) ** 2).sum(0)).max()),
        min_jacobian=float(det.min()),
        max_jacobian=float(det.max()),
        scale=scale,
        seed=int(seed),
    )


# --------------------------------------------------------------------------- warping


def _grid_plus_u(u_vox: np.ndarray) -> np.ndarray:
    shape = u_vox.shape[1:]
    coords = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return np.stack([c + d for c, d in zip(coords, u_vox)])


def warp(image: np.ndarray, field: BreathingField, order: int = 1, cval: float = HU_AIR,
         mode: str = "nearest") -> np.ndarray:
    """Pull ``image`` back through ``x -> x + u(x)``: the exhale-grid image.

    ``image``: an inhale-grid array, shape (z, y, x).
    ``field``: the breathing field (same grid).
    ``order``: spline order of the interpolation (1: trilinear, 0: nearest, for masks).
    ``cval``: value outside the grid with ``mode="constant"``.
    ``mode``: scipy's boundary mode (default: the edge voxel is repeated, so tissue cut by the
    crop's lower face does not turn into air).

    Returns the warped array, shape (z, y, x), float32.
    """
    coords = _grid_plus_u(field.u_voxels())
    return ndi.map_coordinates(np.asarray(image, dtype=np.float32), coords, order=order, mode=mode,
                               cval=cval).astype(np.float32)


def exhale_from_inhale(hu: np.ndarray, field: BreathingField, lungs_inhale: np.ndarray,
                       density: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic exhale of an inhale CT.

    ``hu``: the inhale CT, shape (z, y, x), in HU.
    ``field``: the breathing field.
    ``lungs_inhale``: the inhale lung mask, shape (z, y, x).
    ``density``: apply the mass-preserving lung density change (module docstring).

    Returns ``(exhale HU, exhale lung mask)``, both shape (z, y, x): float32 and bool.
    """
    ex = warp(hu, field, order=1)
    lungs_ex = warp(lungs_inhale.astype(np.float32), field, order=1, cval=0.0, mode="constant") > 0.5
    if density:
        det = jacobian_determinant(field.u_mm, field.spacing).astype(np.float32)
        dens = (ex - HU_AIR) * det + HU_AIR
        ex = np.where(lungs_ex, np.clip(dens, -1024.0, 3071.0), ex)
    return ex.astype(np.float32), lungs_ex


# --------------------------------------------------------------------------- points


def _interp_field(u_vox: np.ndarray, pts: np.ndarray) -> np.ndarray:
    c = pts.T
    return np.stack([ndi.map_coordinates(u_vox[a], c, order=1, mode="nearest") for a in range(3)], axis=1)


def _interp_grad(grad: np.ndarray, pts: np.ndarray) -> np.ndarray:
    c = pts.T
    out = np.empty((len(pts), 3, 3))
    for i in range(3):
        for j in range(3):
            out[:, i, j] = ndi.map_coordinates(grad[i, j], c, order=1, mode="nearest")
    return out


def exhale_to_inhale(points_zyx: np.ndarray, field: BreathingField) -> np.ndarray:
    """Exhale points to their inhale positions, ``p + u(p)`` (trilinear ``u``).

    ``points_zyx``: exhale voxel points, shape (N, 3) or (3,), (z, y, x).
    ``field``: the breathing field.

    Returns inhale voxel points, shape (N, 3), (z, y, x), float64.
    """
    p = np.atleast_2d(np.asarray(points_zyx, dtype=np.float64))
    return p + _interp_field(field.u_voxels().astype(np.float64), p)


def inhale_to_exhale(points_zyx: np.ndarray, field: BreathingField, tol: float = 1e-5,
                     max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Exact inverse of :func:`exhale_to_inhale`: the exhale points ``q`` with ``q + u(q) = p``.

    Newton steps with the interpolated field gradient, damped to a fixed-point step where
    Newton does not reduce the residual.

    ``points_zyx``: inhale voxel points ``p``, shape (N, 3) or (3,), (z, y, x).
    ``field``: the breathing field.
    ``tol``: residual (voxels) at which the iteration stops.
    ``max_iter``: the most iterations.

    Returns ``(q, residual)``: exhale voxel points (N, 3), (z, y, x), and residuals (N,) in voxels.

    Raises MedDiftError: a residual stays above 1e-4 voxel.
    """
    p = np.atleast_2d(np.asarray(points_zyx, dtype=np.float64))
    u_vox = field.u_voxels().astype(np.float64)
    grad = np.stack([np.stack(np.gradient(u_vox[i]), axis=0) for i in range(3)])  # (3,3,Z,Y,X) voxels
    q = p - _interp_field(u_vox, p)
    for _ in range(max_iter):
        r = q + _interp_field(u_vox, q) - p
        res = np.linalg.norm(r, axis=1)
        if res.max() < tol:
            break
        J = _interp_grad(grad, q) + np.eye(3)
        try:
            step = np.linalg.solve(J, r[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = r
        q_new = q - step
        r_new = np.linalg.norm(q_new + _interp_field(u_vox, q_new) - p, axis=1)
        worse = r_new > res
        q_new[worse] = q[worse] - r[worse]  # fixed-point step q = p - u(q)
        q = q_new
    res = np.linalg.norm(q + _interp_field(u_vox, q) - p, axis=1)
    if res.max() >= 1e-4:
        raise MedDiftError(f"inverting the deformation did not converge (max residual {res.max():.2e} voxel)")
    return q, res
