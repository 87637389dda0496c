"""MAISI backbone at reduced width on tiny volumes (full width is only constructed on 'meta')."""

import sys

import numpy as np
import pytest
import torch

from napari_meddift.backbones import available_backbones, get_backbone
from napari_meddift.backbones import maisi as M
from napari_meddift.backbones.base import Backbone, ExtractionSettings
from napari_meddift.errors import CancelledError, MedDiftError
from napari_meddift.backbones.preprocessing import PreprocessSettings
from napari_meddift.io.volume import Volume

WIDTH = 0.125
SMALL = PreprocessSettings(multiple=32, min_size=32)


@pytest.fixture(scope="module")
def backbone():
    return M.MaisiBackbone(random_weights=True, width=WIDTH, seed=0, preprocessing=SMALL)


def _volume(shape):
    rng = np.random.default_rng(0)
    arr = rng.uniform(-1000, 1000, shape).astype(np.float32)
    # SimpleITK's view of a RAS NIfTI: canonical (network) order is (x, y, z)
    return Volume(arr, spacing=(2.0, 1.0, 0.5), direction=np.diag([-1.0, -1.0, 1.0]), name="rand")


@pytest.fixture(scope="module")
def volume():
    return _volume((32, 32, 32))


@pytest.fixture(scope="module")
def features(backbone, volume):
    return backbone.extract(volume, ExtractionSettings(seed=3))


def _save_bundle(b, folder, scale_factor=1.0, ae_key=None):
    folder.mkdir(parents=True, exist_ok=True)
    ae = b.autoencoder.state_dict()
    torch.save({ae_key: ae} if ae_key else ae, folder / M.AUTOENCODER_FILE)
    torch.save(
        {"unet_state_dict": b.unet.state_dict(), "scale_factor": torch.tensor(scale_factor)}, folder / M.UNET_FILE
    )


def test_full_width_parameter_counts():
    with torch.device("meta"):
        ae, unet = M.build_autoencoder(), M.build_unet()
    assert round(M.count_parameters(ae) / 1e6, 1) == 20.9
    assert round(M.count_parameters(unet) / 1e6, 1) == 169.4
    cfg = M.unet_config()
    assert cfg["num_channels"] == [64, 128, 256, 512] and cfg["norm_num_groups"] == 32
    assert cfg["num_head_channels"] == [0, 0, 32, 32]


def test_protocol_and_identity(backbone):
    assert isinstance(backbone, Backbone)
    assert backbone.level_names == ("up0", "up1", "up2", "up3")
    assert backbone.weights_hash == "random-0-w0.125"
    assert backbone.scale_factor == 1.0


def test_level_shapes_follow_architecture(backbone):
    ch = M.unet_config(WIDTH)["num_channels"]  # [8, 16, 32, 64]
    # (z, y, x) = (32, 32, 64) -> network input (x, y, z) = (64, 32, 32); levels come back in (z, y, x)
    features = backbone.extract(_volume((32, 32, 64)), ExtractionSettings())
    assert list(features) == ["up0", "up1", "up2", "up3"]
    # network input (x, y, z) = (64, 32, 32) -> latent /4 -> up0 at latent/4, up1 latent/2, up2/up3 latent
    expected = {
        "up0": (ch[3], 2, 2, 4),
        "up1": (ch[2], 4, 4, 8),
        "up2": (ch[1], 8, 8, 16),
        "up3": (ch[0], 8, 8, 16),
    }
    for name, shape in expected.items():
        f = features[name]
        assert tuple(f.shape) == shape, name
        assert f.dtype == torch.float32 and f.device.type == "cpu" and f.is_contiguous()
        assert torch.isfinite(f).all()
    assert backbone.level_channels() == {n: s[0] for n, s in expected.items()}


def test_deterministic_and_seeded(backbone, volume, features):
    again = backbone.extract(volume, ExtractionSettings(seed=3, levels=("up3",)))
    assert list(again) == ["up3"]
    torch.testing.assert_close(again["up3"], features["up3"], rtol=0, atol=0)
    other = backbone.extract(volume, ExtractionSettings(seed=4, levels=("up3",)))
    assert not torch.allclose(other["up3"], features["up3"])


def test_samples_are_averaged(backbone, volume, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    draws = [torch.randn(1, 4, 8, 8, 8, generator=gen) * 0.2 for _ in range(2)]
    queue = []

    def fake_noise(original_samples, noise, timesteps):
        return original_samples + queue.pop(0)

    monkeypatch.setattr(backbone.scheduler, "add_noise", fake_noise)
    s1 = ExtractionSettings(levels=("up2",), samples=1)
    queue[:] = [draws[0]]
    f1 = backbone.extract(volume, s1)["up2"]
    queue[:] = [draws[1]]
    f2 = backbone.extract(volume, s1)["up2"]
    queue[:] = list(draws)
    calls = []
    avg = backbone.extract(
        volume, ExtractionSettings(levels=("up2",), samples=2), progress=lambda d, n, m: calls.append((d, n))
    )["up2"]
    torch.testing.assert_close(avg, (f1 + f2) / 2, rtol=1e-5, atol=1e-5)
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_mid_level_and_unknown_level(volume):
    b = M.MaisiBackbone(random_weights=True, width=WIDTH, include_mid=True, preprocessing=SMALL)
    assert b.level_names[-1] == "mid"
    out = b.extract(volume, ExtractionSettings(levels=("mid",)))
    assert tuple(out["mid"].shape) == (64, 1, 1, 1)
    with pytest.raises(MedDiftError, match="available: up0, up1, up2, up3, mid"):
        b.extract(volume, ExtractionSettings(levels=("up9",)))


@pytest.mark.parametrize("samples", [0, -1])
def test_samples_below_one_are_refused(backbone, volume, samples):
    with pytest.raises(MedDiftError, match="at least 1"):
        backbone.extract(volume, ExtractionSettings(samples=samples))


def test_timestep_range_comes_from_the_scheduler(backbone, volume):
    assert backbone.scheduler.num_train_timesteps == 1000
    for t in (-1, 1000):
        with pytest.raises(MedDiftError, match=r"timestep must be in 0\.\.999"):
            backbone.extract(volume, ExtractionSettings(timestep=t))


def test_hooks_released_even_on_cancel(backbone, volume):
    def cancel(done, total, msg):
        if done == 1:
            raise CancelledError("stop")

    with pytest.raises(CancelledError):
        backbone.extract(volume, ExtractionSettings(), progress=cancel)
    for m in list(backbone.unet.up_blocks) + [backbone.unet.middle_block]:
        assert not m._forward_hooks


def test_indivisible_network_shape_is_explained(backbone):
    with pytest.raises(MedDiftError, match="divisible by 32"):
        backbone.extract(
            _volume((16, 32, 32)), ExtractionSettings(), preprocessing=PreprocessSettings(multiple=16, min_size=16)
        )


def test_missing_weights_name_the_files(tmp_path):
    with pytest.raises(MedDiftError) as e:
        M.MaisiBackbone(weights=tmp_path)
    msg = str(e.value)
    assert M.AUTOENCODER_FILE in msg and M.UNET_FILE in msg and "diffusion_unet.pt" in msg
    assert "maisi_ct_generative" in msg and "--random-weights" in msg and "monai.bundle download" in msg
    (tmp_path / M.AUTOENCODER_FILE).write_bytes(b"x")
    with pytest.raises(MedDiftError) as e:
        M.MaisiBackbone(weights=tmp_path)
    assert f"autoencoder {M.AUTOENCODER_FILE}" in str(e.value) and M.UNET_FILE in str(e.value)
    assert "curl -L -o DIR/diff_unet_3d_ddpm.pt" in str(e.value)
    (tmp_path / M.AUTOENCODER_FILE).unlink()
    (tmp_path / M.UNET_FILE).write_bytes(b"x")
    with pytest.raises(MedDiftError) as e:
        M.MaisiBackbone(weights=tmp_path)
    assert f"{M.UNET_FILE} of the MAISI tutorials' DDPM release of early 2025" in str(e.value)
    assert f"autoencoder {M.AUTOENCODER_FILE} is missing" in str(e.value)
    with pytest.raises(MedDiftError, match="does not exist"):
        M.MaisiBackbone(weights=tmp_path / "nope")
    with pytest.raises(MedDiftError, match="needs its checkpoints"):
        M.MaisiBackbone()
    with pytest.raises(MedDiftError, match="not both"):
        M.MaisiBackbone(weights=tmp_path, random_weights=True)


def test_checkpoint_round_trip(backbone, volume, features, tmp_path):
    models = tmp_path / "maisi_ct_generative" / "models"
    _save_bundle(backbone, models, ae_key="state_dict")
    loaded = M.MaisiBackbone(weights=models, width=WIDTH, preprocessing=SMALL)
    out = loaded.extract(volume, ExtractionSettings(seed=3))
    for name in features:
        torch.testing.assert_close(out[name], features[name], rtol=0, atol=0)
    h = loaded.weights_hash
    via_bundle_dir = M.MaisiBackbone(weights=tmp_path, width=WIDTH)  # DIR above maisi_ct_generative/models
    assert len(h) == 64 and via_bundle_dir.weights_hash == h
    renamed = tmp_path / "nv"  # the same bytes under another release's names: the same weights_hash
    renamed.mkdir()
    (models / M.AUTOENCODER_FILE).rename(renamed / "autoencoder_v1.pt")
    (models / M.UNET_FILE).rename(renamed / "diff_unet_3d_ddpm-ct.pt")
    assert M.MaisiBackbone(weights=renamed, width=WIDTH).weights_hash == h
    for k, v in via_bundle_dir.unet.state_dict().items():
        assert torch.equal(v, backbone.unet.state_dict()[k])
    _save_bundle(backbone, models, scale_factor=0.5, ae_key="state_dict")
    half = M.MaisiBackbone(weights=models, width=WIDTH, preprocessing=SMALL)
    assert half.scale_factor == 0.5 and half.weights_hash != h
    out = half.extract(volume, ExtractionSettings(seed=3, levels=("up3",)))
    assert not torch.allclose(out["up3"], features["up3"])


def test_mismatched_checkpoint(tmp_path):
    wide = M.MaisiBackbone(random_weights=True, width=0.25)
    _save_bundle(wide, tmp_path)
    with pytest.raises(MedDiftError, match="wrong shape") as e:
        M.MaisiBackbone(weights=tmp_path, width=WIDTH)
    assert M.AUTOENCODER_FILE in str(e.value)
    small = M.MaisiBackbone(random_weights=True, width=WIDTH)
    sd = small.unet.state_dict()
    sd.pop("conv_in.conv.weight")
    sd["extra.weight"] = torch.zeros(1)
    _save_bundle(small, tmp_path)
    torch.save({"unet_state_dict": sd, "scale_factor": 1.0}, tmp_path / M.UNET_FILE)
    with pytest.raises(MedDiftError, match="1 missing: conv_in.conv.weight; 1 unexpected: extra.weight"):
        M.MaisiBackbone(weights=tmp_path, width=WIDTH)
    torch.save({"weights": sd}, tmp_path / M.UNET_FILE)
    with pytest.raises(MedDiftError, match="unet_state_dict"):
        M.MaisiBackbone(weights=tmp_path, width=WIDTH)
    (tmp_path / M.UNET_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(MedDiftError, match="cannot read") as e:
        M.MaisiBackbone(weights=tmp_path, width=WIDTH)
    assert "weights_only" not in str(e.value)


def test_registry():
    assert {"maisi", "mini", "mind-ssc"} <= set(available_backbones())
    b = get_backbone("maisi", random_weights=True, width=WIDTH)
    assert isinstance(b, M.MaisiBackbone)
    with pytest.raises(MedDiftError, match="available: .*maisi"):
        get_backbone("nosuch")


def test_registry_is_lazy():
    import subprocess

    code = (
        "import sys, napari_meddift.backbones as b; b.available_backbones(); "
        "print('napari_meddift.backbones.maisi' in sys.modules, 'napari_meddift.backbones.mini' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_cli_maisi_flags(tmp_path, capsys):
    from napari_meddift.cli import build_parser, main

    args = build_parser().parse_args(
        ["extract", "x.nii.gz", "-o", "x.zarr", "--backbone", "maisi", "--region", "head", "--variant", "rflow",
         "--latent", "sample"]
    )
    assert (args.region, args.variant, args.latent) == ("head", "rflow", "sample")
    vol = tmp_path / "v.nii.gz"
    from napari_meddift.io.volume import write_volume

    write_volume(Volume(np.zeros((8, 8, 8), np.float32), spacing=(1, 1, 1)), vol)
    assert main(["extract", str(vol), "-o", str(tmp_path / "v.zarr"), "--region", "head"]) == 2
    assert "--region apply to --backbone maisi only" in capsys.readouterr().err
    assert main(["extract", str(vol), "-o", str(tmp_path / "v.zarr"), "--backbone", "maisi",
                 "--weights", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meddift: error: no MAISI checkpoint in") and "weights_only" not in err
