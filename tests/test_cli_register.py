"""`meddift register`: field file, mapped points scored by `meddift evaluate`, warped image, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_meddift.cli import main


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two MIND-SSC stores of a texture and its copy shifted by +2 voxels in x, plus the images."""
    from napari_meddift.backbones import get_backbone
    from napari_meddift.backbones.base import ExtractionSettings
    from napari_meddift.backbones.extraction import extract_to_store
    from napari_meddift.io.volume import Volume, write_volume

    d = tmp_path_factory.mktemp("reg")
    rng = np.random.default_rng(0)
    base = ndi.gaussian_filter(rng.standard_normal((24, 28, 32)), 1.2).astype(np.float32) * 600
    vols = [Volume(base, (2.0, 1.5, 1.5), (5.0, -3.0, 7.0), name="src"),
            Volume(np.roll(base, 2, axis=2), (2.0, 1.5, 1.5), (5.0, -3.0, 7.0), name="tgt")]
    mind = get_backbone("mind-ssc")
    out = {}
    for v in vols:
        write_volume(v, d / f"{v.name}.nii.gz")
        out[v.name] = extract_to_store(v, mind, ExtractionSettings(device="cpu"), d / f"{v.name}.zarr")[0].path
    pts = d / "pts.csv"
    pts.write_text("10,12,8\n16,14,12\n20,9,15\n")  # x,y,z voxels
    truth = d / "truth.csv"
    truth.write_text("12,12,8\n18,14,12\n22,9,15\n")
    return d, out, pts, truth


FAST = ["--grid-spacing", "2", "--search-radius", "4", "--iterations", "10", "--device", "cpu"]


def test_register_writes_field_points_and_warped_image(pair, capsys):
    import SimpleITK as sitk

    d, stores, pts, truth = pair
    field, matched, warped = d / "field.nii.gz", d / "matched.csv", d / "warped.nii.gz"
    rc = main(["register", str(stores["src"]), str(stores["tgt"]), "-o", str(field), "--points", str(pts),
               "--matched", str(matched), "--moving", str(d / "tgt.nii.gz"), "--warped", str(warped), "--json", *FAST])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["jacobian"]["folding_percent"] < 1.0
    img = sitk.ReadImage(str(field))
    assert img.GetNumberOfComponentsPerPixel() == 3 and img.GetSize() == (32, 28, 24)
    # +2 voxels in x at 1.5 mm: +3 mm along physical x in the middle of the volume
    assert sitk.GetArrayFromImage(img)[12, 14, 16] == pytest.approx([3.0, 0.0, 0.0], abs=0.4)
    assert main(["evaluate", str(matched), str(truth), "--spacing", "1.5,1.5,2.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean"] < 0.6
    w = sitk.GetArrayFromImage(sitk.ReadImage(str(warped)))
    src = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "src.nii.gz")))
    tgt = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "tgt.nii.gz")))
    inner = (slice(4, -4),) * 3
    assert np.abs(w - src)[inner].mean() < 0.5 * np.abs(tgt - src)[inner].mean()


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("meddift: error: ") and "\n" not in err
    return err


def test_bad_inputs_get_one_clear_line(pair, capsys, tmp_path):
    from napari_meddift.backbones import get_backbone
    from napari_meddift.backbones.base import ExtractionSettings
    from napari_meddift.backbones.extraction import extract_to_store
    from napari_meddift.io.volume import read_volume

    d, stores, pts, _ = pair
    base = ["register", str(stores["src"]), str(stores["tgt"]), "-o", str(tmp_path / "f.nii.gz"), *FAST]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty" in _error(capsys, base + ["--points", str(empty), "--matched", str(tmp_path / "m.csv")])
    assert "go together" in _error(capsys, base + ["--points", str(pts)])
    assert "go together" in _error(capsys, base + ["--warped", str(tmp_path / "w.nii.gz")])
    assert ".nii.gz" in _error(capsys, base[:4] + [str(tmp_path / "f.txt")])
    # stores from different backbones
    other = extract_to_store(read_volume(d / "tgt.nii.gz"), get_backbone("mini", random_weights=True),
                             ExtractionSettings(device="cpu"), tmp_path / "mini.zarr")[0].path
    err = _error(capsys, ["register", str(stores["src"]), str(other), "-o", str(tmp_path / "f.nii.gz")])
    assert "different backbone" in err
    # a moving image that is not the target's
    small = tmp_path / "small.nii.gz"
    import SimpleITK as sitk

    sitk.WriteImage(sitk.Image([5, 6, 7], sitk.sitkFloat32), str(small))
    assert "target store" in _error(capsys, base + ["--moving", str(small), "--warped", str(tmp_path / "w.nii.gz")])
    # uniGradICON without its weights: one line naming the way out
    err = _error(capsys, base + ["--method", "unigradicon", "--unigradicon-weights", str(tmp_path / "nope.trch"),
                                 "--source-image", str(d / "src.nii.gz"), "--moving", str(d / "tgt.nii.gz"),
                                 "--warped", str(tmp_path / "w.nii.gz")])
    assert "weight file" in err
