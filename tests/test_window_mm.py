"""Windows in millimetres (issue 19, part 3): a mm radius on an anisotropic store searches exactly
the per-axis box ceil(r / spacing), against the dense reference; the CLI's --radius forms."""

from __future__ import annotations

import numpy as np
import pytest

from dense_reference import DenseMatcher
from napari_meddift.cli import main
from napari_meddift.errors import MedDiftError
from napari_meddift.io import store as S
from napari_meddift.matching import DEFAULT_RADIUS_MM, Matcher, Radius, parse_radius, voxel_radius

SRC_SHAPE = (14, 30, 27)
TGT_SHAPE = (12, 33, 29)
SRC_SPACING = (3.0, 0.7, 0.8)  # thick slices, fine in-plane: the clinical case
TGT_SPACING = (2.5, 0.6, 0.9)
SRC_NATIVE = {"a": (5, 4, 8, 7), "b": (3, 7, 15, 14)}
TGT_NATIVE = {"a": (5, 3, 9, 8), "b": (3, 6, 16, 15)}
ATOL = 2e-5


def _levels(native, seed):
    rng = np.random.default_rng(seed)
    return {n: (rng.standard_normal(s) + 0.5).astype(np.float32) for n, s in native.items()}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aniso")
    src, tgt = _levels(SRC_NATIVE, 1), _levels(TGT_NATIVE, 2)
    a = S.write_store(folder / "src.zarr", src, {"image_shape": SRC_SHAPE, "spacing": SRC_SPACING}, dtype="float32")
    b = S.write_store(folder / "tgt.zarr", tgt, {"image_shape": TGT_SHAPE, "spacing": TGT_SPACING}, dtype="float32")
    return a, b, src, tgt


def _dense_window(dense, voxel, center, r_zyx, shape):
    """The dense reference's whole-target map cut to center +- r per axis (clipped)."""
    _, whole, _ = dense.similarity(voxel, None)
    box = tuple(slice(max(0, c - r), min(n, c + r + 1)) for c, r, n in zip(center, r_zyx, shape))
    return box, whole[box]


def test_mm_radius_to_per_axis_voxels():
    # ceil(r / s) per axis, written out: 10 mm on (3.0, 0.7, 0.8) is (4, 15, 13)
    assert Radius.mm(10).voxels(SRC_SPACING) == (4, 15, 13)
    assert Radius.mm(10).voxels(TGT_SPACING) == (4, 17, 12)
    assert Radius.mm(40).voxels((2.5, 2.5, 2.5)) == (16, 16, 16)  # exactly 16, not 17 by rounding
    assert Radius.mm(0).voxels(SRC_SPACING) == (0, 0, 0)
    assert voxel_radius(5) == (5, 5, 5) and voxel_radius((1, 2, 3)) == (1, 2, 3) and voxel_radius(None) is None
    with pytest.raises(MedDiftError, match="needs the voxel spacing"):
        Radius.mm(10).voxels(None)
    with pytest.raises(MedDiftError, match=">= 0"):
        voxel_radius((1, -2, 3))


@pytest.mark.parametrize("r_mm", [0.0, 2.0, 6.5, 10.0])
def test_mm_window_on_anisotropic_store_equals_dense_box(stores, r_mm):
    a, b, src, tgt = stores
    m = Matcher.from_stores(a, b)
    assert m.target_spacing == TGT_SPACING and m.source_spacing == SRC_SPACING
    dense = DenseMatcher(src, tgt, SRC_SHAPE, TGT_SHAPE)
    want_r = tuple(int(np.ceil(r_mm / s - 1e-9)) for s in TGT_SPACING)
    for p in [(0, 0, 0), (13, 29, 26), (7, 15, 13), (2, 25, 4)]:
        res = m.similarity(p, Radius.mm(r_mm))
        box, want = _dense_window(dense, p, res.center_zyx, want_r, TGT_SHAPE)
        assert res.box == box, (p, r_mm)
        np.testing.assert_allclose(res.fused, want, atol=ATOL, rtol=0)
        # the argmax within that box is the match
        got = m.match(p, Radius.mm(r_mm), check_consistency=False)
        idx = np.unravel_index(int(np.argmax(want)), want.shape)
        assert got.target_zyx == tuple(int(i + s.start) for i, s in zip(idx, box))


def test_per_axis_voxel_radius_searches_exactly_that_box(stores):
    a, b, src, tgt = stores
    m = Matcher.from_stores(a, b)
    dense = DenseMatcher(src, tgt, SRC_SHAPE, TGT_SHAPE)
    p = (6, 14, 12)
    res = m.similarity(p, (1, 6, 3))
    box, want = _dense_window(dense, p, res.center_zyx, (1, 6, 3), TGT_SHAPE)
    assert res.box == box and res.fused.shape == (3, 13, 7)
    np.testing.assert_allclose(res.fused, want, atol=ATOL, rtol=0)
    # the int form is the same radius on every axis, as before
    assert m.similarity(p, 4).box == m.similarity(p, (4, 4, 4)).box


def test_back_match_uses_the_source_grid(stores):
    """A mm window checked backwards is the same mm on the source's own grid."""
    a, b, src, tgt = stores
    m = Matcher.from_stores(a, b)
    assert m.backward.voxel_radius(Radius.mm(10)) == Radius.mm(10).voxels(SRC_SPACING)
    table = m.match_points(np.array([[7, 15, 13], [3, 10, 20]]), Radius.mm(10))
    back = Matcher.from_stores(b, a)  # target -> source, searched by hand with the source's box
    for i in range(2):
        fwd = m.match(table.source_zyx[i], Radius.mm(10), check_consistency=False)
        assert tuple(table.target_zyx[i]) == fwd.target_zyx
        bk = back.match(fwd.target_zyx, Radius.mm(10).voxels(SRC_SPACING), check_consistency=False)
        want = float(np.linalg.norm(np.subtract(bk.target_zyx, table.source_zyx[i], dtype=np.float64)))
        assert table.fb_distance[i] == pytest.approx(want)


@pytest.mark.parametrize("text, want", [("25mm", Radius(25.0, "mm")), ("25 mm", Radius(25.0, "mm")),
                                        ("2.5mm", Radius(2.5, "mm")), ("16", Radius(16.0, "vox")),
                                        ("16vox", Radius(16.0, "vox"))])
def test_parse_radius(text, want):
    assert parse_radius(text) == want


@pytest.mark.parametrize("text", ["25cm", "mm", "-3mm", "2.5", "abc", ""])
def test_bad_radius_is_refused(text):
    with pytest.raises(MedDiftError, match="--radius"):
        parse_radius(text)


def _points_csv(path, pts_zyx):
    path.write_text("".join(f"{x},{y},{z}\n" for z, y, x in pts_zyx))
    return path


def test_cli_match_takes_millimetres(stores, tmp_path, capsys):
    a, b, _, _ = stores
    pts = _points_csv(tmp_path / "p.csv", [(7, 15, 13), (2, 25, 4)])
    out = tmp_path / "m.csv"
    assert main(["match", str(a.path), str(b.path), "--points", str(pts), "-o", str(out), "--radius", "10mm"]) == 0
    text = capsys.readouterr().out
    assert "10 mm = (4, 17, 12) voxels (z, y, x)" in text
    got = np.loadtxt(out, delimiter=",", skiprows=1, usecols=(0, 1, 2))
    m = Matcher.from_stores(a, b)
    want = m.match_points(np.array([[7, 15, 13], [2, 25, 4]]), Radius.mm(10)).target_zyx
    np.testing.assert_array_equal(got[:, ::-1].astype(int), want)
    # the default is physical
    assert main(["match", str(a.path), str(b.path), "--points", str(pts), "-o", str(out)]) == 0
    want_r = Radius.mm(DEFAULT_RADIUS_MM).voxels(TGT_SPACING)
    assert f"{DEFAULT_RADIUS_MM:g} mm = {want_r} voxels" in capsys.readouterr().out


def test_cli_a_window_of_one_voxel_is_refused(stores, tmp_path, capsys):
    """--radius 0 (or 0.1mm) would search the centre voxel alone: no match, no rival (NaN ambiguity)."""
    a, b, _, _ = stores
    pts = _points_csv(tmp_path / "p.csv", [(7, 15, 13)])
    for value in ("0", "0mm"):
        argv = ["match", str(a.path), str(b.path), "--points", str(pts), "-o", str(tmp_path / "m.csv"),
                "--radius", value]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "only the window's centre voxel" in err[0] and "e.g. 40mm" in err[0]
        assert not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize("value", ["25cm", "-4mm", "1.5", "wide"])
def test_cli_bad_radius_is_one_line(stores, tmp_path, capsys, value):
    a, b, _, _ = stores
    pts = _points_csv(tmp_path / "p.csv", [(7, 15, 13)])
    argv = ["match", str(a.path), str(b.path), "--points", str(pts), "-o", str(tmp_path / "m.csv"), f"--radius={value}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("meddift: error:") and "--radius" in err[0]
    assert "like 40mm" in err[0] or "write 1.5mm" in err[0]  # the way out
    assert not (tmp_path / "m.csv").exists()
