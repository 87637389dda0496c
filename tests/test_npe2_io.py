"""Readers and writers through npe2, from this checkout's napari.yaml: only our files are claimed.

npe2 first matches file-name patterns, then calls the reader's ``get_reader``, which must return
``None`` for anything it cannot read (napari then asks other plugins).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

npe2 = pytest.importorskip("npe2")
zarr = pytest.importorskip("zarr")

import napari_meddift  # noqa: E402
from napari_meddift.io.landmarks import read_points  # noqa: E402
from napari_meddift.io.store import write_store  # noqa: E402
from napari_meddift.io.volume import Volume, read_volume, write_volume  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "napari-meddift"
DEMO = Path(napari_meddift.__file__).parent / "data" / "demo"


@pytest.fixture(scope="module")
def pm():
    """A plugin manager holding only this checkout's manifest (not whatever is installed)."""
    manager = npe2.PluginManager()
    manager.register(npe2.PluginManifest.from_file(REPO / "napari.yaml"))
    manager.activate(PLUGIN)  # registers the commands' python_names with this manager
    return manager


def _ours(pm, path) -> list:
    """Our readers that npe2 lists for ``path`` by pattern."""
    return [r for r in pm.iter_compatible_readers([str(path)]) if r.plugin_name == PLUGIN]


def _reader(pm, path):
    """The first of our readers whose get_reader takes ``path`` (the function), else None."""
    for r in _ours(pm, path):
        fn = r.exec(kwargs={"path": [str(path)], "stack": False}, _registry=pm.commands)
        if fn is not None:  # npe2 wraps it: (paths, stack=...) -> layer data
            return r.command, lambda p, fn=fn: fn([str(p)], stack=False)
    return None


def test_tif_csv_and_other_files_are_not_offered(pm, tmp_path):
    for name in ("scan.tif", "scan.tiff", "movie.mp4", "image.png", "data.npy"):
        f = tmp_path / name
        f.write_bytes(b"\0" * 400)
        assert _ours(pm, f) == [], name  # not even listed: no choose-reader dialog for these
    for name, text in (("points.csv", "\0" * 400), ("notes.txt", "hello world\n"),
                       ("table.csv", "a,b,c,d\n1,2,3,4\n"), ("four.csv", "1,2,3,4\n5,6,7,8\n"),
                       ("wide.txt", "1 2 3 4\n5 6 7 8\n")):
        f = tmp_path / name
        f.write_text(text)
        assert [r.command for r in _ours(pm, f)] == ["napari-meddift.read_landmarks"], name
        assert _reader(pm, f) is None, name  # listed by name, declined by content


def test_plain_folders_and_impostors_are_declined(pm, tmp_path):
    plain = tmp_path / "photos"
    plain.mkdir()
    (plain / "a.txt").write_text("hello")
    (plain / "b.csv").write_text("1,2,3\n")
    assert _reader(pm, plain) is None
    assert _reader(pm, tmp_path / "empty") is None
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"not a nifti file at all" * 30)
    assert _reader(pm, fake) is None
    fake_dcm = tmp_path / "x.dcm"
    fake_dcm.write_bytes(b"\0" * 200)
    assert _reader(pm, fake_dcm) is None


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"])
def test_volume_files_are_read_with_their_geometry(pm, tmp_path, suffix):
    d = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    v = Volume(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), spacing=(2.0, 1.0, 0.5),
               origin=(10.0, -20.0, 30.0), direction=d, name="v")
    write_volume(v, tmp_path / f"v{suffix}")
    found = _reader(pm, tmp_path / f"v{suffix}")
    assert found is not None and found[0] == "napari-meddift.read_volume"
    (data, kw, kind), = found[1](str(tmp_path / f"v{suffix}"))
    assert kind == "image"
    np.testing.assert_array_equal(data, v.array)
    np.testing.assert_allclose(kw["scale"], v.spacing)
    # world of index 0 = direction @ translate = the origin; the affine holds the direction
    np.testing.assert_allclose(kw["affine"][:3, :3] @ np.asarray(kw["translate"]), v.origin, atol=1e-5)
    np.testing.assert_allclose(kw["affine"][:3, :3], d[::-1, ::-1])
    assert kw["units"] == ("mm", "mm", "mm") and kw["axis_labels"] == ("z", "y", "x")


def _dicom_series(folder: Path, n: int = 4) -> None:
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.99.1"
    for k in range(n):
        sl = sitk.GetImageFromArray(np.full((6, 5), k, np.int16))
        sl.SetSpacing((0.9, 0.8))
        for key, val in {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{k + 1}",
                         "0020|000d": "1.2.826.0.1.3680043.2.1125.99", "0020|000e": uid, "0020|0013": str(k + 1),
                         "0020|0032": f"-30\\20\\{-100 + 2.5 * k}", "0020|0037": "1\\0\\0\\0\\1\\0",
                         "0028|0030": "0.8\\0.9", "0018|0050": "2.5"}.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder_and_dcm_file(pm, tmp_path):
    folder = tmp_path / "series"
    _dicom_series(folder)
    assert _reader(pm, folder)[0] == "napari-meddift.read_volume"
    (data, kw, _), = _reader(pm, folder)[1](str(folder))
    assert data.shape == (4, 6, 5)
    np.testing.assert_allclose(kw["scale"], (2.5, 0.8, 0.9), atol=1e-4)
    one = folder / "slice002.dcm"
    (data2, _, _), = _reader(pm, one)[1](str(one))  # a slice opens its whole series
    np.testing.assert_array_equal(data2, data)


def test_dicom_folder_is_recognised_by_content_not_name(pm, tmp_path):
    src = tmp_path / "named"
    _dicom_series(src)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in src.iterdir():
        (bare / f.stem).write_bytes(f.read_bytes())  # no suffix at all
    assert _reader(pm, bare) is not None


def _tiny_store(path: Path) -> None:
    v = read_volume(DEMO / "inhale.nii.gz")
    levels = {"up0": np.random.default_rng(0).normal(size=(4, 8, 6, 7)).astype(np.float32)}
    write_store(path, levels, {"image_shape": list(v.shape), "spacing": list(v.spacing), "origin": list(v.origin),
                               "direction": v.direction.tolist(), "backbone": "test"})


def test_store_reader_takes_only_our_stores(pm, tmp_path):
    ours = tmp_path / "ours.zarr"
    _tiny_store(ours)
    assert _reader(pm, ours)[0] == "napari-meddift.read_store"
    (rgb, kw, kind), = _reader(pm, ours)[1](str(ours))
    assert kind == "image" and kw["rgb"] and rgb.shape[-1] == 3
    assert kw["affine"][1, 1] == -1.0  # the demo's LAS direction travels with the PCA view

    ome = tmp_path / "image.ome.zarr"
    g = zarr.open_group(str(ome), mode="w", zarr_format=3)
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [{"name": a} for a in "zyx"],
                                                          "datasets": [{"path": "0"}]}]}
    g.create_array("0", shape=(4, 4, 4), dtype="uint8")
    other = tmp_path / "other.zarr"
    g2 = zarr.open_group(str(other), mode="w", zarr_format=3)
    g2.create_array("a", shape=(3,), dtype="f4")
    for path in (ome, other):
        assert _reader(pm, path) is None, path


def test_points_writers_learn2reg_and_elastix(pm, tmp_path):
    from napari_meddift._qt._layers import points_layer_kwargs

    vol = read_volume(DEMO / "inhale.nii.gz")
    pts = read_points(DEMO / "landmarks_inhale.csv", fmt="l2r")[:5]
    kw = points_layer_kwargs(vol, name="lm")
    attrs = {**kw, "rotate": np.eye(3), "shear": np.zeros(3)}
    writers = {w.command: w for w in pm.iter_compatible_writers(["points"])}
    assert {"napari-meddift.write_l2r_points", "napari-meddift.write_elastix_points"} <= set(writers)

    w, path = pm.get_writer(str(tmp_path / "lm.csv"), ["points"], PLUGIN)
    assert w.command == "napari-meddift.write_l2r_points"
    w.exec(kwargs={"path": path, "data": pts, "attributes": attrs}, _registry=pm.commands)
    np.testing.assert_allclose(np.loadtxt(path, delimiter=","), pts[:, ::-1], atol=1e-9)  # voxel x,y,z, no header

    w, path = pm.get_writer(str(tmp_path / "lm.txt"), ["points"], PLUGIN)
    assert w.command == "napari-meddift.write_elastix_points"
    w.exec(kwargs={"path": path, "data": pts, "attributes": attrs}, _registry=pm.commands)
    img = sitk.ReadImage(str(DEMO / "inhale.nii.gz"))
    ref = [img.TransformContinuousIndexToPhysicalPoint([float(c) for c in p[::-1]]) for p in pts]
    np.testing.assert_allclose(np.loadtxt(path, skiprows=2), ref, atol=1e-6)
    np.testing.assert_allclose(read_points(path, volume=vol), pts, atol=1e-9)


def test_l2r_writer_without_scan_metadata(pm, tmp_path):
    from napari_meddift._qt._layers import geometry_kwargs
    from napari_meddift.errors import MedDiftError

    pts = np.array([[1.0, 2.0, 3.0], [4.5, 5.0, 6.0]])
    w, path = pm.get_writer(str(tmp_path / "a.csv"), ["points"], PLUGIN)
    ours = {**geometry_kwargs((2.5, 2.5, 2.5), (1.0, 2.0, 3.0), np.diag([1.0, -1.0, 1.0])), "metadata": {}}
    w.exec(kwargs={"path": path, "data": pts, "attributes": ours}, _registry=pm.commands)  # on a scan grid: voxels
    np.testing.assert_allclose(np.loadtxt(path, delimiter=","), pts[:, ::-1])
    napari_own = {"scale": (1.0, 1.0, 1.0), "translate": (0.0, 0.0, 0.0), "units": ("pixel",) * 3,
                  "axis_labels": ("0", "1", "2"), "metadata": {}, "name": "Points"}
    with pytest.raises(MedDiftError, match="not tied to a scan.*elastix"):
        w.exec(kwargs={"path": str(tmp_path / "b.csv"), "data": pts, "attributes": napari_own}, _registry=pm.commands)


# --- header first: only 3D scalar volumes ---------------------------------------------------

@pytest.mark.parametrize("what", ["2d", "4d", "rgb", "one slice"])
def test_volume_reader_declines_what_is_not_a_3d_scalar_volume(pm, tmp_path, what):
    if what == "2d":
        img = sitk.GetImageFromArray(np.zeros((6, 5), np.int16))
    elif what == "4d":
        img = sitk.GetImageFromArray(np.zeros((3, 4, 6, 5), np.int16))  # a 4D-CT: 3 phases
    elif what == "rgb":
        img = sitk.GetImageFromArray(np.zeros((4, 6, 5, 3), np.uint8), isVector=True)
    else:
        img = sitk.GetImageFromArray(np.zeros((1, 6, 5), np.int16))
    path = tmp_path / "x.nii.gz"
    sitk.WriteImage(img, str(path))
    assert [r.command for r in _ours(pm, path)] == ["napari-meddift.read_volume"]  # listed by name
    assert _reader(pm, path) is None  # declined on its header: another plugin may take it


# --- DICOM selections: one layer per series -------------------------------------------------

def test_dicom_selection_opens_one_layer_per_series(pm, tmp_path):
    from napari_meddift._qt import _reader as R

    folder = tmp_path / "two"
    _dicom_series(folder, n=4)
    other = tmp_path / "b"
    _dicom_series_uid(other, "1.2.826.0.1.3680043.2.1125.99.2", n=3)
    for f in other.iterdir():
        f.rename(folder / f"b_{f.name}")
    files = sorted(str(f) for f in folder.iterdir())
    assert len(files) == 7
    fn = R.get_volume_reader(files)  # a stacked selection: one call with every file
    layers = fn(files)
    shapes = sorted(data.shape for data, _, _ in layers)
    assert shapes == [(3, 6, 5), (4, 6, 5)]
    assert {kw["metadata"]["meddift_dicom_series"] for _, kw, _ in layers} == {
        "1.2.826.0.1.3680043.2.1125.99.1", "1.2.826.0.1.3680043.2.1125.99.2"}
    # one file at a time (napari's default for a selection): the series once, then nothing
    R._RECENT_SERIES.clear()
    a = [f for f in files if "b_" not in f]
    first = _reader(pm, a[0])[1](a[0])
    assert len(first) == 1 and first[0][0].shape == (4, 6, 5)
    for f in a[1:]:
        assert _reader(pm, f)[1](f) == [(None,)]  # napari's "nothing to add" sentinel


def _dicom_series_uid(folder: Path, uid: str, n: int) -> None:
    _dicom_series(folder, n)
    for f in sorted(folder.iterdir()):
        img = sitk.ReadImage(str(f))
        img.SetMetaData("0020|000e", uid)
        img.SetMetaData("0008|0018", f"{uid}.{f.stem[-1]}")
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(f))
        w.Execute(img)


# --- landmark files -> Points layers in the scan's world, round trip through the writers ------

def _exec_writer(pm, path, data, attrs):
    w, out = pm.get_writer(str(path), ["points"], PLUGIN)
    w.exec(kwargs={"path": out, "data": data, "attributes": attrs}, _registry=pm.commands)
    return w.command


def _world(kw, data):
    """World (z, y, x mm) of layer data under the layer kwargs: napari's own transform."""
    from napari.utils.transforms import Affine

    phys = Affine(scale=kw["scale"], translate=kw["translate"], ndim=3)
    return Affine(affine_matrix=np.asarray(kw["affine"], float)).compose(phys)(np.asarray(data, float))


def test_learn2reg_csv_lands_on_the_scan_and_round_trips(pm, tmp_path, monkeypatch):
    from napari_meddift._qt import _reader as R

    vol = read_volume(DEMO / "inhale.nii.gz")
    monkeypatch.setattr(R, "current_scan", lambda: vol)
    src = DEMO / "landmarks_inhale.csv"
    assert _reader(pm, src)[0] == "napari-meddift.read_landmarks"
    (data, kw, kind), = _reader(pm, src)[1](src)
    assert kind == "points"
    np.testing.assert_allclose(data, read_points(src, fmt="l2r"))
    img = sitk.ReadImage(str(DEMO / "inhale.nii.gz"))  # the independent reference: ITK's own map
    ref = np.array([img.TransformContinuousIndexToPhysicalPoint([float(c) for c in p[::-1]]) for p in data[:20]])
    np.testing.assert_allclose(_world(kw, data[:20]), ref[:, ::-1], atol=1e-4)
    # saved again as Learn2Reg CSV through npe2: the same numbers as the file we read
    out = tmp_path / "again.csv"
    assert _exec_writer(pm, out, data, {**kw, "rotate": np.eye(3), "shear": np.zeros(3)}) == \
        "napari-meddift.write_l2r_points"
    np.testing.assert_allclose(np.loadtxt(out, delimiter=","), np.loadtxt(src, delimiter=","), atol=1e-9)


def test_voxel_landmarks_without_a_scan_say_what_to_do(pm, monkeypatch):
    from napari_meddift._qt import _reader as R
    from napari_meddift.errors import MedDiftError

    monkeypatch.setattr(R, "current_scan", lambda: None)
    with pytest.raises(MedDiftError, match="voxel indices of a scan; open that scan first"):
        _reader(pm, DEMO / "landmarks_inhale.csv")[1](DEMO / "landmarks_inhale.csv")


def test_real_elastix_and_dirlab_files(pm, tmp_path, monkeypatch, shared_data):
    from napari_meddift._qt import _reader as R

    monkeypatch.setattr(R, "current_scan", lambda: None)
    ela = shared_data / "landmarks" / "elastix_lung" / "3DCT_lung_baseline_landmarks.txt"
    (data, kw, kind), = _reader(pm, ela)[1](ela)  # physical mm: world points, no scan needed
    raw = np.loadtxt(ela, skiprows=2)
    assert kind == "points" and data.shape == (100, 3) and kw["metadata"]["meddift_points"] == "world"
    np.testing.assert_allclose(data, raw[:, ::-1])
    out = tmp_path / "again.txt"
    attrs = {"scale": (1.0, 1.0, 1.0), "translate": (0.0, 0.0, 0.0), **kw}
    assert _exec_writer(pm, out, data, attrs) == "napari-meddift.write_elastix_points"
    np.testing.assert_allclose(np.loadtxt(out, skiprows=2), raw, atol=1e-9)
    with pytest.raises(Exception, match="not tied to a scan"):  # mm points are no voxel indices
        _exec_writer(pm, tmp_path / "no.csv", data, attrs)

    # DIR-Lab case 1: 1-based voxel x y z of a 256x256x94 scan of 0.97x0.97x2.5 mm
    dl = shared_data / "landmarks" / "dirlab_4dct_case1" / "Case1_300_T00_xyz.txt"
    scan = Volume(np.zeros((1, 1, 1), np.float32), spacing=(2.5, 0.97, 0.97), name="case1 T00")
    monkeypatch.setattr(R, "current_scan", lambda: scan)
    (data, kw, _), = _reader(pm, dl)[1](dl)
    np.testing.assert_allclose(data, np.loadtxt(dl)[:, ::-1] - 1.0)
    np.testing.assert_allclose(_world(kw, data), (np.loadtxt(dl)[:, ::-1] - 1.0) * [2.5, 0.97, 0.97], atol=1e-9)
    assert kw["name"] == "Case1_300_T00_xyz (on case1 T00)"
