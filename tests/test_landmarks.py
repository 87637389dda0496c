"""Landmark readers/writers on real files (tests/data; the Learn2Reg files need ../shared)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_meddift.errors import MedDiftError
from napari_meddift.io.landmarks import (
    detect_format,
    read_point_columns,
    read_point_pairs,
    read_points,
    write_points_csv,
)
from napari_meddift.io.volume import Volume, read_volume, voxel_to_world


@pytest.fixture(scope="module")
def lm(shared_data):
    return shared_data / "landmarks"


@pytest.fixture(scope="module")
def small_lm(small_data):
    return small_data / "landmarks"


# --------------------------------------------------------------------------- Learn2Reg


@pytest.mark.parametrize("case,n", [(1, 81), (2, 100), (3, 100)])
def test_l2r_landmarks(lm, case, n):
    f = lm / "learn2reg_lungct" / "landmarksTr" / f"LungCT_000{case}_0000.csv"
    assert detect_format(f) == "csv"
    pts = read_points(f)
    same = read_points(f, fmt="l2r")
    raw = np.loadtxt(f, delimiter=",")
    assert pts.dtype == np.float64 and pts.shape == (n, 3)
    np.testing.assert_array_equal(pts, same)
    np.testing.assert_array_equal(pts, raw[:, ::-1])  # x,y,z in the file -> z,y,x inside
    # inside the 192x192x208 (x,y,z) Learn2Reg grid
    assert (pts >= 0).all() and (pts < np.array([208, 192, 192])).all()


def test_l2r_first_rows(lm):
    pts = read_points(lm / "learn2reg_lungct" / "landmarksTr" / "LungCT_0001_0000.csv")
    np.testing.assert_array_equal(pts[0], [95.0, 66.0, 56.0])  # file: 56,66,95
    kp = read_points(lm / "learn2reg_lungct" / "keypointsTr" / "LungCT_0001_0001.csv")
    assert kp.shape == (1322, 3)
    np.testing.assert_allclose(kp[0], [64.824, 104.027, 17.503])  # file: 17.503,104.027,64.824


def test_l2r_pairs_and_count_mismatch(lm):
    d = lm / "learn2reg_lungct" / "landmarksTr"
    f, m = read_point_pairs(d / "LungCT_0002_0000.csv", d / "LungCT_0002_0001.csv")
    assert f.shape == m.shape == (100, 3)
    with pytest.raises(MedDiftError, match="counts differ: 81 .* 100"):
        read_point_pairs(d / "LungCT_0001_0000.csv", d / "LungCT_0002_0001.csv")


# --------------------------------------------------------------------------- DIR-Lab


def test_dirlab_case1(small_lm):
    d = small_lm / "dirlab_4dct_case1"
    t00 = d / "Case1_300_T00_xyz.txt"
    assert detect_format(t00) == "dirlab"
    a, b = read_point_pairs(t00, d / "Case1_300_T50_xyz.txt")
    assert a.shape == b.shape == (300, 3)
    # first rows: "211 139 66" and "211 141 63" (x y z, 1-based) -> z,y,x 0-based
    np.testing.assert_array_equal(a[0], [65.0, 138.0, 210.0])
    np.testing.assert_array_equal(b[0], [62.0, 140.0, 210.0])
    np.testing.assert_array_equal(a, np.loadtxt(t00)[:, ::-1] - 1)
    # inside the 256x256x94 (x,y,z) DIR-Lab case 1 grid
    assert (a >= 0).all() and (a < np.array([94, 256, 256])).all()
    # explicit fmt gives the same
    np.testing.assert_array_equal(read_points(t00, fmt="dirlab"), a)


# --------------------------------------------------------------------------- elastix


def test_elastix_point_file_with_volume(small_lm, small_data):
    f = small_lm / "elastix_lung" / "3DCT_lung_baseline_landmarks.txt"
    assert detect_format(f) == "elastix"
    vol = read_volume(small_data / "ct" / "lung_elastix_small.nii.gz")
    geom = Volume(np.zeros((1, 1, 1), np.float32), vol.spacing, vol.origin, vol.direction)
    pts = read_points(f, volume=geom)
    assert pts.shape == (100, 3)
    # independent: (p_mm - origin) / spacing, x,y,z -> z,y,x (identity direction)
    mm = np.loadtxt(f, skiprows=2)
    ref = ((mm - np.array(vol.origin)[::-1]) / np.array(vol.spacing)[::-1])[:, ::-1]
    np.testing.assert_allclose(pts, ref, atol=1e-9)
    np.testing.assert_allclose(pts[0], [45.5, 41.0, 42.5], atol=1e-5)  # -36.351 -36.974 -1204.5 mm
    np.testing.assert_allclose(voxel_to_world(vol, pts)[:, ::-1], mm, atol=1e-9)
    # z and y fall inside the small image (x extends past its 57 columns: the landmarks were
    # apparently placed on the full-size elastix baseline image)
    assert (pts[:, 0] >= 0).all() and (pts[:, 0] < vol.shape[0]).all()
    assert (pts[:, 1] >= 0).all() and (pts[:, 1] < vol.shape[1]).all()
    # spacing/origin instead of a volume give the same
    np.testing.assert_allclose(read_points(f, spacing=vol.spacing, origin=vol.origin), ref, atol=1e-9)


def test_elastix_point_needs_geometry(small_lm):
    with pytest.raises(MedDiftError, match="volume="):
        read_points(small_lm / "elastix_lung" / "3DCT_lung_baseline_landmarks.txt")


def test_elastix_index_and_bad_count(tmp_path):
    f = tmp_path / "idx.txt"
    f.write_text("index\n2\n1 2 3\n4.5 5 6\n")
    np.testing.assert_array_equal(read_points(f), [[3, 2, 1], [6, 5, 4.5]])
    g = tmp_path / "bad.txt"
    g.write_text("point\n3\n1 2 3\n4 5 6\n")
    with pytest.raises(MedDiftError, match="says 3 points but the file holds 2"):
        read_points(g, spacing=(1, 1, 1))


# --------------------------------------------------------------------------- plain CSV, writer


def test_write_read_round_trip_with_columns(tmp_path):
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 100, size=(7, 3))
    cols = {"score": rng.uniform(size=7), "consistent": rng.uniform(size=7) > 0.5, "id": np.arange(7)}
    out = tmp_path / "sub" / "pts.csv"
    write_points_csv(out, pts, cols)
    lines = out.read_text().splitlines()
    assert lines[0] == "x,y,z,score,consistent,id"
    assert lines[1].split(",")[:3] == [repr(float(v)) for v in pts[0, ::-1]]
    back = read_points(out)
    np.testing.assert_array_equal(back, pts)  # exact: repr round-trips floats
    table = read_point_columns(out)
    np.testing.assert_array_equal(table["x"], pts[:, 2])
    np.testing.assert_array_equal(table["score"], cols["score"])
    np.testing.assert_array_equal(table["consistent"], cols["consistent"].astype(float))
    np.testing.assert_array_equal(table["id"], np.arange(7))


def test_csv_header_order_and_strings(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("name,Z,x,y\na,3,1,2\nb,6,4,5\n")
    np.testing.assert_array_equal(read_points(f), [[3, 2, 1], [6, 5, 4]])
    assert list(read_point_columns(f)["name"]) == ["a", "b"]
    write_points_csv(tmp_path / "s.csv", [[1, 2, 3]], {"note": np.array(["a, b"])})
    assert read_point_columns(tmp_path / "s.csv")["note"][0] == "a, b"


def test_csv_mm_units(tmp_path):
    f = tmp_path / "mm.csv"
    f.write_text("x,y,z\n10,20,30\n")
    with pytest.raises(MedDiftError, match="spacing="):
        read_points(f, units="mm")
    p = read_points(f, units="mm", spacing=(2.0, 4.0, 5.0), origin=(10.0, 0.0, 0.0))  # z,y,x
    np.testing.assert_allclose(p, [[10.0, 5.0, 2.0]])
    d = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # rotated in-plane
    vol = Volume(np.zeros((2, 2, 2), np.float32), spacing=(2.0, 4.0, 5.0), origin=(10.0, 0.0, 0.0), direction=d)
    q = read_points(f, units="mm", volume=vol)
    np.testing.assert_allclose(voxel_to_world(vol, q), [[30.0, 20.0, 10.0]], atol=1e-12)
    with pytest.raises(MedDiftError, match="plain CSV only"):
        read_points(f, fmt="dirlab", units="mm")


def test_reader_errors(tmp_path):
    with pytest.raises(MedDiftError, match="no such landmark file"):
        read_points(tmp_path / "none.csv")
    e = tmp_path / "empty.csv"
    e.write_text("\n\n")
    with pytest.raises(MedDiftError, match="empty"):
        read_points(e)
    h = tmp_path / "header_only.csv"
    h.write_text("x,y,z\n")
    with pytest.raises(MedDiftError, match="no points"):
        read_points(h)
    s = tmp_path / "short.csv"
    s.write_text("1,2,3\n4,5\n")
    with pytest.raises(MedDiftError, match="line 2"):
        read_points(s)
    b = tmp_path / "bad.csv"
    b.write_text("1,2,3\n4,five,6\n")
    with pytest.raises(MedDiftError, match="line 2"):
        read_points(b)
    w = tmp_path / "wrong_header.csv"
    w.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(MedDiftError, match="name the columns x,y,z"):
        read_points(w)
    u = tmp_path / "what.txt"
    u.write_text("hello world\n")
    with pytest.raises(MedDiftError, match="unknown landmark format"):
        read_points(u)
    with pytest.raises(MedDiftError, match="unknown landmark format 'foo'"):
        read_points(b, fmt="foo")
    with pytest.raises(MedDiftError, match="clashes"):
        write_points_csv(tmp_path / "o.csv", [[1, 2, 3]], {"x": [1]})
    with pytest.raises(MedDiftError, match="2 values for 1 points"):
        write_points_csv(tmp_path / "o.csv", [[1, 2, 3]], {"s": [1, 2]})
    with pytest.raises(MedDiftError, match=r"\(N, 3\)"):
        write_points_csv(tmp_path / "o.csv", [1, 2, 3])
