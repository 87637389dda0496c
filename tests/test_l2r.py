"""Learn2Reg LungCT harness on the real landmark/keypoint/mask files, with stand-in images."""

import json
import shutil

import numpy as np
import pytest
import torch

from napari_meddift.errors import MedDiftError
from napari_meddift.cli import main
from napari_meddift.evaluation.l2r import check_files, evaluate_l2r, l2r_cases

SHIFT = np.array([2, -3, 1])  # (z, y, x) voxels: stand-in moving(p + SHIFT) = fixed(p)


@pytest.fixture(scope="module")
def labels(shared_data):
    return shared_data / "landmarks" / "learn2reg_lungct"


class PatchBackbone:
    """A cheap, shift-equivariant descriptor for plumbing tests: at every voxel the windowed
    intensities of itself and its +z, +y, +x neighbours (4 channels, image resolution)."""

    name = "test-patch"
    level_names = ("patch",)
    default_levels = ("patch",)
    weights_hash = "none"

    def extract(self, volume, settings, progress=None):
        t = (torch.from_numpy(volume.array).clamp(-1000, 1000) + 1000) / 2000
        chans = [t]
        for axis in range(3):
            chans.append(torch.roll(t, -1, dims=axis))
        return {"patch": torch.stack(chans)}


def _write_standins(root, labels, case_ids=("0001",), shift=True):
    """Random-texture images with the masks' exact geometry; moving = fixed shifted by SHIFT."""
    import SimpleITK as sitk

    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for cid in case_ids:
        ref = sitk.ReadImage(str(labels / "masksTr" / f"LungCT_{cid}_0000.nii.gz"))
        shape = sitk.GetArrayViewFromImage(ref).shape
        fixed = rng.integers(-1000, 600, size=shape, dtype=np.int16)
        moving = np.roll(fixed, tuple(SHIFT), axis=(0, 1, 2)) if shift else fixed
        for suffix, arr in (("0000", fixed), ("0001", moving)):
            img = sitk.GetImageFromArray(arr)
            img.CopyInformation(ref)
            sitk.WriteImage(img, str(root / "imagesTr" / f"LungCT_{cid}_{suffix}.nii.gz"), useCompression=False)


def test_layout_from_config(labels):
    cfg, cases = l2r_cases(labels)
    assert [c.case_id for c in cases] == ["0001", "0002", "0003"]
    assert cfg["expected_shape"] == [192, 192, 208, 3]
    c = cases[0]
    assert c.fixed_image == labels / "imagesTr" / "LungCT_0001_0000.nii.gz"
    assert c.moving_landmarks == labels / "landmarksTr" / "LungCT_0001_0001.csv"
    assert c.fixed_mask.is_file() and c.fixed_keypoints.is_file()
    assert [c.case_id for c in l2r_cases(labels, cases=[3, "2"])[1]] == ["0002", "0003"]
    with pytest.raises(MedDiftError, match="0007"):
        l2r_cases(labels, cases=[7])


def test_missing_images_are_listed_exactly(labels, tmp_path):
    with pytest.raises(MedDiftError) as exc:
        evaluate_l2r(labels, "identity", out_dir=tmp_path)
    msg = str(exc.value)
    assert "6 Learn2Reg LungCT image file(s) missing" in msg
    for cid in ("0001", "0002", "0003"):
        for s in ("0000", "0001"):
            assert str(labels / "imagesTr" / f"LungCT_{cid}_{s}.nii.gz") in msg
    assert "learn2reg" in msg.lower() and "annotation" not in msg
    # with one pair present, only the others are named
    root = tmp_path / "root"
    _write_standins(root, labels, ("0002",), shift=False)
    _, cases = l2r_cases(root, labels_root=labels)
    with pytest.raises(MedDiftError) as exc:
        check_files(root, cases)
    msg = str(exc.value)
    assert "4 Learn2Reg LungCT image file(s) missing" in msg and "LungCT_0002" not in msg
    # a root without the config says where it comes from
    with pytest.raises(MedDiftError, match="evaluation config"):
        l2r_cases(tmp_path / "root")


def test_identity_tre_matches_known_figures(labels, tmp_path):
    root = tmp_path / "l2r"
    _write_standins(root, labels, ("0001", "0002", "0003"), shift=False)
    res = evaluate_l2r(root, "identity", labels_root=labels, out_dir=tmp_path / "out")
    got = [(round(c.landmarks["mean"], 1), round(c.landmarks["std"], 1)) for c in res.cases]
    assert got == [(20.2, 5.6), (15.6, 5.4), (8.1, 4.2)]
    for c in res.cases:
        assert c.landmarks == c.landmarks_initial
        assert c.spacing_zyx == (1.75, 1.25, 1.75)
        assert c.keypoints["n"] > 1000
    assert [c.landmarks["n"] for c in res.cases] == [81, 100, 100]
    assert res.overall["n"] == 281
    assert "| 0001 | 81 | 20.18 ± 5.59 | 20.18 ± 5.59 |" in res.table
    assert "**all**" in res.table
    summary = json.loads((tmp_path / "out" / "l2r_identity.json").read_text())
    assert summary["cases"][2]["landmarks"]["mean"] == pytest.approx(8.1, abs=0.05)


@pytest.mark.slow  # 12-16 s on a 2-core CPU
def test_end_to_end_matching_with_standins(labels, tmp_path):
    root = tmp_path / "l2r"
    _write_standins(root, labels, ("0001",))
    # the annotation files copied next to the images: the plain one-folder layout
    for sub in ("landmarksTr", "keypointsTr", "masksTr"):
        shutil.copytree(labels / sub, root / sub)
    shutil.copy(labels / "LungCT_VAL_evaluation_config.json", root)
    lines = []
    res = evaluate_l2r(root, PatchBackbone(), radius=4, cases=[1], out_dir=tmp_path / "out", log=lines.append)
    from napari_meddift.evaluation.metrics import tre_mm
    from napari_meddift.io.landmarks import read_point_columns, read_points

    f = read_points(labels / "landmarksTr" / "LungCT_0001_0000.csv")
    m = read_points(labels / "landmarksTr" / "LungCT_0001_0001.csv")
    expected = tre_mm(f + SHIFT, m, (1.75, 1.25, 1.75))  # matching recovers the known shift exactly
    c = res.cases[0]
    np.testing.assert_allclose(c.landmark_tre, expected, atol=1e-9)
    assert c.landmarks["mean"] != pytest.approx(c.landmarks_initial["mean"])
    cols = read_point_columns(tmp_path / "out" / "LungCT_0001_landmarks_test-patch_r4.csv")
    np.testing.assert_array_equal(np.stack([cols["z"], cols["y"], cols["x"]], 1), f + SHIFT)
    # keypoints: only those inside the fixed lung mask, each moved by the shift too
    kp = read_point_columns(tmp_path / "out" / "LungCT_0001_keypoints_test-patch_r4.csv")
    assert len(kp["x"]) == c.keypoints["n"] > 1000
    assert len(lines) == 1 and lines[0].startswith("case 0001")
    assert list((tmp_path / "out" / "stores").iterdir())  # stores were written for reuse


def test_cli_identity(labels, tmp_path, capsys):
    root = tmp_path / "l2r"
    _write_standins(root, labels, ("0003",), shift=False)
    rc = main(
        ["evaluate-l2r", "--root", str(root), "--labels", str(labels), "--backbone", "identity", "--cases", "3",
         "--no-keypoints", "-o", str(tmp_path / "o")]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "| 0003 | 100 | 8.14 ± 4.22 |" in out, out
    # a malformed --cases is one error line and exit status 2, before any work
    assert main(["evaluate-l2r", "--root", str(root), "--labels", str(labels), "--cases", "one"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("meddift: error: --cases must be"), err


def test_cluster_run_takes_evaluate_l2rs_arguments():
    """One source for the 14 arguments: the cluster run's signature is evaluate_l2r's, its device
    defaulting to 'auto' (resolved on each worker), plus the cluster's own keywords."""
    import inspect

    from napari_meddift.batch.l2r import evaluate_l2r_on_cluster

    serial = inspect.signature(evaluate_l2r).parameters
    cluster = inspect.signature(evaluate_l2r_on_cluster).parameters
    assert serial["device"].default == "cpu" and cluster["device"].default == "auto"
    shared = [n for n in serial if n not in ("done", "progress")]
    assert list(cluster)[: len(shared)] == shared
    assert all(cluster[n].default == serial[n].default for n in shared if n != "device")
    assert list(cluster)[len(shared):] == ["workers", "scheduler", "client", "threads", "progress"]
    with pytest.raises(TypeError, match="done"):
        evaluate_l2r_on_cluster("root", done={})


@pytest.mark.slow
def test_end_to_end_on_a_local_dask_cluster(labels, tmp_path):
    """Extraction and matching as Dask tasks in two worker processes give the serial answer."""
    pytest.importorskip("distributed")
    root = tmp_path / "l2r"
    _write_standins(root, labels, ("0001",))
    steps = []
    from napari_meddift.batch.l2r import evaluate_l2r_on_cluster

    res = evaluate_l2r_on_cluster(root, PatchBackbone(), radius=4, cases=[1], labels_root=labels,
                                  out_dir=tmp_path / "out", keypoints=False, workers=2, threads=1,
                                  progress=lambda *a: steps.append(a))
    from napari_meddift.evaluation.metrics import tre_mm
    from napari_meddift.io.landmarks import read_points

    f = read_points(labels / "landmarksTr" / "LungCT_0001_0000.csv")
    m = read_points(labels / "landmarksTr" / "LungCT_0001_0001.csv")
    np.testing.assert_allclose(res.cases[0].landmark_tre, tre_mm(f + SHIFT, m, (1.75, 1.25, 1.75)), atol=1e-9)
    assert res.cases[0].extract_seconds > 0 and res.cases[0].match_seconds > 0
    assert [s[:2] for s in steps] == [(0, 3), (1, 3), (2, 3), (3, 3)]  # two images, then one case
    assert "| 0001 | 81 |" in res.table and (tmp_path / "out" / "l2r_test-patch_r4.md").is_file()
    assert len(list((tmp_path / "out" / "stores").glob("*.zarr"))) == 2
    assert not [p for p in (tmp_path / "out" / "stores").iterdir() if ".partial-" in p.name]
