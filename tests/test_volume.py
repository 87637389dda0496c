"""read_volume / write_volume / geometry helpers, on real small CTs (tests/data, and ../shared when present)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from napari_meddift.errors import MedDiftError
from napari_meddift.io.volume import (
    Volume,
    read_volume,
    voxel_to_world,
    world_to_voxel,
    write_volume,
)


@pytest.fixture(scope="module")
def elastix_small(small_data):
    return read_volume(small_data / "ct" / "lung_elastix_small.nii.gz")


def _rotation(ax: float, ay: float) -> np.ndarray:
    cx, sx, cy, sy = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rx @ ry


# --------------------------------------------------------------------------- real files


def test_lung_elastix_small_matches_sources(elastix_small):
    v = elastix_small
    # SOURCES.md: 57x78x64 (x,y,z), 2.7x2.7x5.0 mm
    assert v.shape == (64, 78, 57)
    assert v.array.dtype == np.float32
    np.testing.assert_allclose(v.spacing, (5.0, 2.732, 2.732), atol=1e-3)
    assert v.direction.shape == (3, 3)
    np.testing.assert_allclose(v.direction, np.eye(3))
    # origin in zyx order (ITK origin is x,y,z = -152.461, -148.986, -1432)
    np.testing.assert_allclose(v.origin, (-1432.0, -148.986, -152.461), atol=1e-3)
    assert v.name == "lung_elastix_small"
    assert -1200 < v.array.min() < -900 and v.array.max() > 500  # HU
    np.testing.assert_allclose(v.physical_size, (320.0, 78 * 2.732, 57 * 2.732), atol=0.01)


def test_chest_cip_ct64_matches_sources(shared_data):
    v = read_volume(shared_data / "ct" / "chest_cip_ct64.nii.gz")
    # SOURCES.md: 64x64x79 (x,y,z), 4.2x4.2x4.0 mm
    assert v.shape == (79, 64, 64)
    np.testing.assert_allclose(v.spacing, (4.0, 4.2, 4.2), atol=0.05)
    assert np.isfinite(v.array).all()


def test_geometry_agrees_with_sitk(small_data, elastix_small):
    img = sitk.ReadImage(str(small_data / "ct" / "lung_elastix_small.nii.gz"))
    idx_zyx = np.array([[0, 0, 0], [10.5, 20.25, 30], [63, 77, 56]], float)
    w = voxel_to_world(elastix_small, idx_zyx)
    for p, q in zip(idx_zyx, w):
        ref = img.TransformContinuousIndexToPhysicalPoint(p[::-1].tolist())
        np.testing.assert_allclose(q[::-1], ref, atol=1e-6)
    np.testing.assert_allclose(world_to_voxel(elastix_small, w), idx_zyx, atol=1e-9)
    # single point works too
    np.testing.assert_allclose(voxel_to_world(elastix_small, idx_zyx[1]), w[1])


def test_geometry_honours_direction():
    d = _rotation(0.3, -0.5) @ np.diag([-1.0, -1.0, 1.0])
    v = Volume(np.zeros((4, 5, 6), np.float32), spacing=(2.0, 1.5, 0.7), origin=(-5.0, 3.0, 11.0), direction=d)
    img = sitk.Image([6, 5, 4], sitk.sitkFloat32)
    img.SetSpacing((0.7, 1.5, 2.0))
    img.SetOrigin((11.0, 3.0, -5.0))
    img.SetDirection(d.reshape(-1).tolist())
    rng = np.random.default_rng(0)
    pts = rng.uniform(-3, 8, size=(20, 3))
    w = voxel_to_world(v, pts)
    ref = np.array([img.TransformContinuousIndexToPhysicalPoint(p[::-1].tolist())[::-1] for p in pts])
    np.testing.assert_allclose(w, ref, atol=1e-9)
    np.testing.assert_allclose(world_to_voxel(v, w), pts, atol=1e-9)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"])
def test_write_read_round_trip(tmp_path, elastix_small, suffix):
    v = elastix_small
    d = _rotation(0.2, 0.1)
    src = Volume(v.array[:20, :30, :25].copy(), spacing=v.spacing, origin=v.origin, direction=d, name="x")
    out = tmp_path / f"crop{suffix}"
    write_volume(src, out)
    back = read_volume(out)
    assert back.shape == (20, 30, 25)
    np.testing.assert_array_equal(back.array, src.array)
    np.testing.assert_allclose(back.spacing, src.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, src.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, d, atol=1e-5)
    assert back.name == "crop"


def test_write_creates_parent_and_rejects_bad_suffix(tmp_path, elastix_small):
    write_volume(elastix_small, tmp_path / "a" / "b" / "v.mha")
    assert (tmp_path / "a" / "b" / "v.mha").is_file()
    with pytest.raises(MedDiftError, match=r"\.nii\.gz"):
        write_volume(elastix_small, tmp_path / "v.png")
    with pytest.raises(MedDiftError, match="3D"):
        write_volume(Volume(np.zeros((3, 4), np.float32)), tmp_path / "v.mha")


def _write_dicom_series(folder, arr_zyx, spacing_zyx, origin_zyx, uid, description):
    """A CT DICOM series, one file per slice, as in SimpleITK's DICOM series example."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(arr_zyx.shape[0]):
        sl = sitk.GetImageFromArray(arr_zyx[k].astype(np.int16))
        sl.SetSpacing((spacing_zyx[2], spacing_zyx[1]))
        pos = (origin_zyx[2], origin_zyx[1], origin_zyx[0] + k * spacing_zyx[0])
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.{k + 1}",
            "0020|000d": uid.rsplit(".", 1)[0],
            "0020|000e": uid,
            "0008|103e": description,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{c:.4f}" for c in pos),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing_zyx[1]}\\{spacing_zyx[2]}",
            "0018|0050": str(spacing_zyx[0]),
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(str(folder / f"{uid.rsplit('.', 1)[1]}_{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder(tmp_path, elastix_small):
    arr = elastix_small.array[10:22, 5:45, 3:40]
    folder = tmp_path / "dicom"
    _write_dicom_series(folder, arr, (2.5, 0.8, 0.9), (-100.0, 20.0, -30.0), "1.2.826.0.1.3680043.2.1125.77.1", "big")
    # a second, smaller series in the same folder: the larger one must win
    _write_dicom_series(folder, arr[:4], (2.5, 0.8, 0.9), (0.0, 0.0, 0.0), "1.2.826.0.1.3680043.2.1125.77.2", "small")
    v = read_volume(folder)
    assert v.shape == arr.shape
    np.testing.assert_array_equal(v.array, arr.astype(np.int16).astype(np.float32))
    np.testing.assert_allclose(v.spacing, (2.5, 0.8, 0.9), atol=1e-4)
    np.testing.assert_allclose(v.origin, (-100.0, 20.0, -30.0), atol=1e-3)
    assert v.name == "dicom"


# --------------------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    with pytest.raises(MedDiftError, match="no such file"):
        read_volume(tmp_path / "nope.nii.gz")


def test_truncated_nii_gz(tmp_path, small_data):
    raw = (small_data / "ct" / "lung_elastix_small.nii.gz").read_bytes()
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MedDiftError, match="trunc.nii.gz.*truncated"):
        read_volume(bad)


def test_truncated_uncompressed_nii(tmp_path, small_data):
    raw = gzip.decompress((small_data / "ct" / "lung_elastix_small.nii.gz").read_bytes())
    bad = tmp_path / "trunc.nii"
    bad.write_bytes(raw[:-10])
    with pytest.raises(MedDiftError, match="truncated"):
        read_volume(bad)


def test_truncated_mha(tmp_path, elastix_small):
    good = tmp_path / "v.mha"
    write_volume(elastix_small, good)
    raw = good.read_bytes()
    bad = tmp_path / "trunc.mha"
    bad.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(MedDiftError, match="trunc.mha.*corrupt"):
        read_volume(bad)


def test_garbage_and_unknown_suffix(tmp_path):
    g = tmp_path / "junk.nrrd"
    g.write_bytes(b"not an image at all" * 10)
    with pytest.raises(MedDiftError, match="junk.nrrd"):
        read_volume(g)
    g2 = tmp_path / "junk.nii.gz"
    g2.write_bytes(b"not gzip" * 10)
    with pytest.raises(MedDiftError, match="junk.nii.gz"):
        read_volume(g2)
    p = tmp_path / "x.png"
    p.write_bytes(b"1")
    with pytest.raises(MedDiftError, match="unsupported"):
        read_volume(p)
    with pytest.raises(MedDiftError, match="folder"):
        read_volume(tmp_path)  # a folder with no DICOM series


def test_2d_image(tmp_path):
    p = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.float32)), str(p))
    with pytest.raises(MedDiftError, match="2D"):
        read_volume(p)
    p1 = tmp_path / "one.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 8, 9), np.float32)), str(p1))
    with pytest.raises(MedDiftError, match="single slice"):
        read_volume(p1)


def test_4d_and_vector_images(tmp_path):
    p = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.Image([4, 5, 6, 2], sitk.sitkFloat32), str(p))
    with pytest.raises(MedDiftError, match="4D"):
        read_volume(p)
    q = tmp_path / "vec.mha"
    sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3), str(q))
    with pytest.raises(MedDiftError, match="3 values per voxel"):
        read_volume(q)


def test_empty_images(tmp_path):
    m = tmp_path / "empty.mha"
    m.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 5 0\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    with pytest.raises(MedDiftError, match="empty"):
        read_volume(m)
    # a NIfTI whose header says one axis has size 0
    img = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32))
    n = tmp_path / "v.nii"
    sitk.WriteImage(img, str(n))
    raw = bytearray(n.read_bytes())
    raw[42:44] = (0).to_bytes(2, "little")  # dim[1] = 0
    e = tmp_path / "empty.nii"
    e.write_bytes(bytes(raw))
    with pytest.raises(MedDiftError, match="empty"):
        read_volume(e)


def test_non_finite_values(tmp_path):
    a = np.zeros((3, 4, 5), np.float32)
    a[1, 2, 3] = np.nan
    a[0, 0, 0] = np.inf
    p = tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(a), str(p))
    with pytest.raises(MedDiftError, match="2 NaN/inf"):
        read_volume(p)
