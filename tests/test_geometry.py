"""Scanner geometry (Qt-free): index <-> ITK physical point, against SimpleITK itself.

Two real geometries: the packaged demo NIfTI, which is LAS (ITK direction diag(1, -1, 1)), and
an oblique scan written to disk with a rotated, reflected direction and read back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import napari_meddift
from napari_meddift.io.landmarks import read_points, write_points_elastix
from napari_meddift.io.volume import Volume, affine_zyx, direction_zyx, lps_text, read_volume, write_volume

DEMO = Path(napari_meddift.__file__).parent / "data" / "demo" / "inhale.nii.gz"


def _oblique_direction() -> np.ndarray:
    ax, ay, az = 0.35, -0.5, 0.2
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx @ np.diag([1.0, -1.0, 1.0])  # oblique and reflected (det -1)


@pytest.fixture(scope="module")
def demo():
    return read_volume(DEMO), sitk.ReadImage(str(DEMO))


@pytest.fixture(scope="module")
def oblique(tmp_path_factory):
    rng = np.random.default_rng(3)
    v = Volume(rng.normal(size=(7, 9, 11)).astype(np.float32), spacing=(3.0, 0.8, 1.1),
               origin=(-40.0, 12.5, 101.0), direction=_oblique_direction(), name="oblique")
    path = tmp_path_factory.mktemp("geo") / "oblique.nii.gz"
    write_volume(v, path)
    return read_volume(path), sitk.ReadImage(str(path))


def _sitk_points(img, idx_zyx, continuous=True):
    f = img.TransformContinuousIndexToPhysicalPoint if continuous else img.TransformIndexToPhysicalPoint
    conv = (lambda p: [float(c) for c in p[::-1]]) if continuous else (lambda p: [int(c) for c in p[::-1]])
    return np.array([f(conv(p))[::-1] for p in idx_zyx])


def test_demo_is_las_and_the_issue_voxel_lands_where_itk_puts_it(demo):
    vol, img = demo
    np.testing.assert_allclose(img.GetDirection(), (1, 0, 0, 0, -1, 0, 0, 0, 1))
    p = vol.index_to_physical((43, 29, 23))
    np.testing.assert_allclose(p[::-1], img.TransformIndexToPhysicalPoint((23, 29, 43)), atol=1e-9)
    assert abs(p[1] - 42.6) < 0.01  # y (posterior) = 42.6 mm, not the 187.6 mm of scale+translate only


@pytest.mark.parametrize("case", ["demo", "oblique"])
def test_index_to_physical_equals_sitk(case, request):
    vol, img = request.getfixturevalue(case)
    rng = np.random.default_rng(0)
    shape = np.array(vol.shape)
    ints = np.stack([rng.integers(0, n, 25) for n in shape], axis=1)
    corners = np.array([[a, b, c] for a in (0, shape[0] - 1) for b in (0, shape[1] - 1) for c in (0, shape[2] - 1)])
    ints = np.concatenate([ints, corners])
    np.testing.assert_allclose(vol.index_to_physical(ints), _sitk_points(img, ints, continuous=False), atol=1e-6)
    cont = rng.uniform(-2, shape + 2, size=(25, 3))
    phys = vol.index_to_physical(cont)
    np.testing.assert_allclose(phys, _sitk_points(img, cont), atol=1e-6)
    np.testing.assert_allclose(vol.physical_to_index(phys), cont, atol=1e-9)
    # the homogeneous matrix is the same map
    a = vol.affine_zyx()
    np.testing.assert_allclose((a @ np.c_[cont, np.ones(len(cont))].T).T[:, :3], phys, atol=1e-6)
    np.testing.assert_allclose(a, affine_zyx(vol.spacing, vol.origin, vol.direction))


def test_oblique_direction_survives_the_file(oblique):
    vol, img = oblique
    np.testing.assert_allclose(vol.direction, _oblique_direction(), atol=1e-6)
    assert np.linalg.det(vol.direction_zyx) == pytest.approx(-1.0, abs=1e-6)
    np.testing.assert_allclose(direction_zyx(vol.direction)[::-1, ::-1], vol.direction)


def test_elastix_points_round_trip_through_physical(oblique, tmp_path):
    vol, img = oblique
    pts = np.array([[1.0, 2.5, 3.0], [6.0, 0.0, 10.25]])
    f = tmp_path / "p.txt"
    write_points_elastix(f, pts, volume=vol)
    lines = f.read_text().splitlines()
    assert lines[:2] == ["point", "2"]
    np.testing.assert_allclose(np.loadtxt(f, skiprows=2), _sitk_points(img, pts)[:, ::-1], atol=1e-6)  # x y z mm
    np.testing.assert_allclose(read_points(f, volume=vol), pts, atol=1e-9)
    write_points_elastix(f, pts)  # no geometry: voxel indices
    assert f.read_text().splitlines()[0] == "index"
    np.testing.assert_allclose(read_points(f), pts)


def test_lps_text():
    assert lps_text((100.0, -4.54, 12.31)) == "x 12.3  y -4.5  z 100.0 mm (LPS)"
