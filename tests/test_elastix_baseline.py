"""elastix B-spline baseline: a known translation is recovered, in the right direction."""

import sys

import numpy as np
import pytest

from napari_meddift.errors import MedDiftError
from napari_meddift.io.volume import Volume

# itk's SWIG wrappers raise these on import under Python 3.11+; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")


def _smooth_ct(shape, seed=0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    a = gaussian_filter(rng.standard_normal(shape), 2.5)
    return ((a - a.min()) / (a.max() - a.min()) * 1600 - 900).astype(np.float32)


def test_missing_itk_elastix_says_how_to_install(monkeypatch):
    from napari_meddift.evaluation import elastix

    monkeypatch.setitem(sys.modules, "itk", None)  # makes `import itk` fail
    with pytest.raises(MedDiftError, match="pip install itk-elastix"):
        elastix.register_bspline(Volume(np.zeros((8, 8, 8), np.float32)), Volume(np.zeros((8, 8, 8), np.float32)))
    assert not elastix.elastix_available()


def test_index_physical_round_trip_with_direction():
    from napari_meddift.evaluation.elastix import _index_to_physical, _physical_to_index
    from napari_meddift.io.geometry import Grid

    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, -1.0]])
    geom = Grid.of(
        Volume(np.zeros((5, 6, 7), np.float32), spacing=(2.5, 0.7, 0.9), origin=(-3, 4, 10), direction=direction)
    )
    pts = np.array([[0, 0, 0], [1.5, 2, 3], [4, 5, 6]], float)
    phys = _physical_to_index(_index_to_physical(pts, geom), geom)
    np.testing.assert_allclose(phys, pts, atol=1e-9)
    # voxel (z=0, y=0, x=1) lies one x-spacing along the first direction column from the origin
    p = _index_to_physical(np.array([[0, 0, 1.0]]), geom)[0]
    np.testing.assert_allclose(p, np.array([10, 4, -3]) + 0.9 * direction[:, 0])


def test_parameter_maps_are_affine_then_bspline():
    from napari_meddift.evaluation.elastix import lung_parameter_maps

    affine, bspline = lung_parameter_maps(iterations=100, grid_spacing_mm=12)
    assert affine["Transform"] == ["AffineTransform"] and bspline["Transform"] == ["BSplineTransform"]
    assert bspline["FinalGridSpacingInPhysicalUnits"] == ["12"]
    assert bspline["MaximumNumberOfIterations"] == ["100"]
    assert bspline["Metric"][0] == "AdvancedMattesMutualInformation"
    assert lung_parameter_maps(metric="ncc")[1]["Metric"][0] == "AdvancedNormalizedCorrelation"
    with pytest.raises(MedDiftError):
        lung_parameter_maps(metric="ssd-typo")


@pytest.mark.slow
def test_known_translation_is_recovered(tmp_path):
    pytest.importorskip("itk")
    from scipy.ndimage import shift as nd_shift

    from napari_meddift.evaluation.elastix import map_points, register_bspline

    fixed = _smooth_ct((36, 40, 44))
    t = np.array([2.0, -3.0, 1.5])  # voxels (z, y, x): moving(p + t) = fixed(p)
    moving = nd_shift(fixed, t, order=3, mode="nearest").astype(np.float32)
    spacing, origin = (3.0, 2.0, 1.5), (10.0, -5.0, 3.0)  # anisotropic: catches any x/z mix-up
    F = Volume(fixed, spacing=spacing, origin=origin)
    M = Volume(moving, spacing=spacing, origin=origin)
    mask = np.zeros(fixed.shape, bool)
    mask[4:-4, 4:-4, 4:-4] = True
    transform = register_bspline(F, M, mask=mask, iterations=30, resolutions=2, samples=1024, threads=2)
    pts = np.array([[18, 20, 22], [12, 26, 16], [24, 12, 30], [10.5, 15.25, 20.0]])
    mapped = map_points(transform, pts)
    err = mapped - (pts + t)
    assert np.abs(err).max() < 0.5, err
    assert transform.seconds > 0
    files = transform.write(tmp_path)
    assert len(files) == 2 and "BSplineTransform" in open(files[1]).read()
    assert map_points(transform, np.zeros((0, 3))).shape == (0, 3)
    with pytest.raises(MedDiftError):
        map_points(transform, np.zeros((4, 2)))
    with pytest.raises(MedDiftError, match="mask"):
        register_bspline(F, M, mask=np.zeros((3, 3, 3), bool))
