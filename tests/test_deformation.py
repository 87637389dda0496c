"""Breathing deformation: smoothness, invertibility, exact inverse, lung masks, keypoints."""

import numpy as np
import pytest

from napari_meddift.synthetic.deformation import (
    anatomical_axes,
    breathing_field,
    exhale_from_inhale,
    exhale_to_inhale,
    inhale_to_exhale,
    jacobian_determinant,
    lung_mask,
)
from napari_meddift.errors import MedDiftError
from napari_meddift.synthetic.keypoints import lung_keypoints

SPACING = (2.5, 2.5, 2.5)


def phantom(shape=(48, 56, 64), seed=0):
    """Body ellipsoid (soft tissue) in air, two lung ellipsoids with bright 'vessel' blobs."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 < 1
    hu[body] = 40.0
    for cx in (-0.42, 0.42):
        lung = ((z - 0.1) / 0.8) ** 2 + (y / 0.55) ** 2 + ((x - cx) / 0.3) ** 2 < 1
        hu[lung] = -850.0
    blobs = np.zeros(shape, dtype=np.float32)
    idx = rng.integers(0, np.array(shape), size=(400, 3))
    blobs[tuple(idx.T)] = 1.0
    from scipy import ndimage as ndi

    blobs = ndi.gaussian_filter(blobs, 1.2)
    lungs_true = hu == -850.0
    hu[lungs_true] += (blobs[lungs_true] / blobs.max()) * 800.0
    return hu, lungs_true


@pytest.fixture(scope="module")
def case():
    hu, lungs_true = phantom()
    lungs = lung_mask(hu, SPACING)
    field = breathing_field(hu.shape, SPACING, lungs, direction=np.eye(3), seed=3)
    return hu, lungs_true, lungs, field


def test_lung_mask_finds_both_lungs(case):
    hu, lungs_true, lungs, _ = case
    dice = 2 * (lungs & lungs_true).sum() / (lungs.sum() + lungs_true.sum())
    assert dice > 0.9
    assert not lungs[hu > -400].all()  # body is not lung
    assert not lungs[:, 0, :].any() and not lungs[:, :, 0].any()  # outside air dropped


def test_field_is_smooth_invertible_and_in_range(case):
    _, _, _, field = case
    det = jacobian_determinant(field.u_mm, field.spacing)
    assert det.min() > 0.3 - 1e-9
    assert abs(det.min() - field.min_jacobian) < 1e-6
    mag = np.sqrt((field.u_mm.astype(np.float64) ** 2).sum(0))
    assert 5.0 < mag.max() <= 18.0 + 1e-4
    assert field.u_mm.dtype == np.float32 and field.u_mm.shape == (3,) + det.shape


def test_motion_is_larger_toward_the_diaphragm(case):
    _, _, lungs, field = case
    caudal, _ = anatomical_axes(np.eye(3))  # identity direction: caudal = -z index
    u_cc = np.tensordot(caudal, field.u_mm, axes=1)
    zs = np.argwhere(lungs)[:, 0]
    low = lungs.copy()
    low[zs.min() + (zs.max() - zs.min()) // 3:] = False  # lowest third (small z = caudal)
    high = lungs.copy()
    high[: zs.max() - (zs.max() - zs.min()) // 3] = False  # top third
    assert u_cc[low].mean() > 2 * max(u_cc[high].mean(), 0.5)
    assert u_cc[low].mean() > 0  # inhale position is lower than the exhale position


def test_exact_inverse_residual_and_round_trip(case):
    hu, _, lungs, field = case
    rng = np.random.default_rng(1)
    pts = np.argwhere(lungs)[rng.choice(lungs.sum(), 200, replace=False)] + rng.uniform(-0.4, 0.4, (200, 3))
    q, res = inhale_to_exhale(pts, field)
    assert res.max() < 1e-4
    np.testing.assert_allclose(exhale_to_inhale(q, field), pts, atol=1e-4)
    # displacement really is non-trivial
    assert np.linalg.norm((q - pts) * 2.5, axis=1).max() > 3.0


def test_warp_consistency_with_points(case):
    """The exhale value at a grid point equals the inhale value at its mapped position."""
    hu, _, lungs, field = case
    ex, lungs_ex = exhale_from_inhale(hu, field, lungs, density=False)
    from scipy import ndimage as ndi

    grid_pts = np.argwhere(lungs_ex)[::97].astype(float)
    mapped = exhale_to_inhale(grid_pts, field)
    vals = ndi.map_coordinates(hu, mapped.T, order=1, mode="nearest")
    np.testing.assert_allclose(ex[tuple(grid_pts.astype(int).T)], vals, atol=1e-2)


def test_density_change_preserves_lung_mass(case):
    """Mass (HU + 1000) of an interior exhale lung region E equals that of its inhale preimage."""
    hu, _, lungs, field = case
    from scipy import ndimage as ndi

    ex, lungs_ex = exhale_from_inhale(hu, field, lungs, density=True)
    E = ndi.binary_erosion(lungs_ex, iterations=2)
    mass_ex = (ex[E] + 1000.0).sum()
    # inhale voxels whose exact exhale position falls in E
    ys = np.argwhere(ndi.binary_dilation(lungs, iterations=1)).astype(float)
    q, _ = inhale_to_exhale(ys, field)
    qi = np.clip(np.rint(q), 0, np.array(hu.shape) - 1).astype(int)
    pre = E[tuple(qi.T)]
    mass_in = (hu[tuple(ys[pre].astype(int).T)] + 1000.0).sum()
    assert abs(mass_ex / mass_in - 1.0) < 0.05
    # the exhaled lungs are smaller and denser
    assert lungs_ex.sum() < lungs.sum()
    assert ex[E].mean() > hu[ndi.binary_erosion(lungs, iterations=2)].mean()


def test_field_is_deterministic_and_seed_dependent(case):
    hu, _, lungs, field = case
    again = breathing_field(hu.shape, SPACING, lungs, direction=np.eye(3), seed=3)
    np.testing.assert_array_equal(again.u_mm, field.u_mm)
    other = breathing_field(hu.shape, SPACING, lungs, direction=np.eye(3), seed=4)
    assert np.abs(other.u_mm - field.u_mm).max() > 0.1


def test_field_scales_down_to_stay_invertible(case):
    hu, _, lungs, _ = case
    f = breathing_field(hu.shape, SPACING, lungs, seed=0, amplitude_si=400.0, smooth_mm=3.0, max_mm=200.0)
    assert f.scale < 1.0
    assert f.min_jacobian >= 0.3


def test_empty_lung_mask_is_an_error():
    with pytest.raises(MedDiftError):
        breathing_field((8, 8, 8), SPACING, np.zeros((8, 8, 8), bool))


def test_keypoints_deterministic_inside_and_separated(case):
    hu, _, lungs, _ = case
    a = lung_keypoints(hu, lungs, SPACING, n=50, min_distance_mm=7.0)
    b = lung_keypoints(hu.copy(), lungs.copy(), SPACING, n=50, min_distance_mm=7.0)
    np.testing.assert_array_equal(a, b)
    assert 5 <= len(a) <= 50
    assert lungs[tuple(a.T)].all()
    d = np.linalg.norm((a[:, None] - a[None]) * 2.5, axis=-1)
    d[np.diag_indices(len(a))] = np.inf
    assert d.min() >= 7.0
