"""Every public MAISI release loads from the folder a user downloads, full architectures, exact keys.

Checkpoint files are written with the releases' names, dict structure and state-dict keys
(tests/maisi_layouts.py); values are seeded but stored one element per tensor so that the files
stay small. No forward pass here (see test_maisi_reference.py for features).
"""

import argparse

import numpy as np
import pytest
import torch

from maisi_layouts import MONAI14_OUT_PROJ, RELEASE_FILES, cheap_state, unet, write_release, _shapes
from napari_meddift.backbones import maisi as M
from napari_meddift.backbones.base import Backbone, ExtractionSettings
from napari_meddift.errors import MedDiftError


def _check_loaded(b, key):
    sub, ae_name, unet_name, variant, monai14 = RELEASE_FILES[key]
    assert isinstance(b, Backbone)
    assert b.variant == variant and b.release is not None and b.release.key == key
    assert b.level_names == ("up0", "up1", "up2", "up3")
    assert b.level_channels() == {"up0": 512, "up1": 256, "up2": 128, "up3": 64}
    assert len(b.dropped_keys) == (22 if monai14 else 0)
    assert set(b.dropped_keys) == (set(MONAI14_OUT_PROJ) if monai14 else set())
    assert b.config["variant"] == variant and b.release.title in b.description
    assert isinstance(b.scheduler, M.make_variant_scheduler(variant).__class__)


@pytest.mark.parametrize("key", list(RELEASE_FILES))
def test_each_release_loads_from_its_download_folder(tmp_path, key):
    folder = write_release(tmp_path, key, seed=3)
    sub = RELEASE_FILES[key][0]
    assert sub in {"models", "maisi_ct_generative/models"}
    # as docs/backbones.md says to pass it: the bundle folder, or DIR above models/ (the models
    # folder itself is passed in the tests below)
    b = M.MaisiBackbone(weights=folder.parent if sub.startswith("maisi_ct_generative") else tmp_path)
    _check_loaded(b, key)
    expected = cheap_state(_shapes(lambda: unet(RELEASE_FILES[key][3])), 4)
    got = b.unet.state_dict()
    for k in ("conv_in.conv.weight", "up_blocks.0.attentions.0.attn.to_q.weight", "out.2.conv.bias"):
        torch.testing.assert_close(got[k], expected[k].expand_as(got[k]), rtol=0, atol=0)
    assert b.scale_factor == pytest.approx(1.0)


def test_variant_recognised_by_keys_not_by_name(tmp_path):
    folder = write_release(tmp_path, "nv-generate-rflow")
    (folder / "autoencoder_v1.pt").rename(folder / "autoencoder_epoch273.pt")
    (folder / "diff_unet_3d_rflow-ct.pt").rename(folder / "diff_unet_3d_ddpm.pt")
    b = M.MaisiBackbone(weights=folder)
    assert b.variant == "rflow" and b.release is None and b.body_region is None
    assert "unnamed rflow release" in b.description and b.config["class_label"] == 1
    with pytest.raises(MedDiftError, match="holds a rflow UNet"):
        M.MaisiBackbone(weights=folder, variant="ddpm")


def test_same_bytes_other_names_same_hash_and_variants_apart(tmp_path):
    a = write_release(tmp_path / "a", "tutorials-2025")
    ta = M.MaisiBackbone(weights=a)
    b = tmp_path / "b" / "maisi_ct_generative" / "models"  # the same bytes under the 0.4.x bundle's names
    b.mkdir(parents=True)
    (b / "autoencoder_epoch273.pt").write_bytes((a / "autoencoder_epoch273.pt").read_bytes())
    (b / RELEASE_FILES["bundle-0.4"][2]).write_bytes((a / "diff_unet_3d_ddpm.pt").read_bytes())
    tb = M.MaisiBackbone(weights=tmp_path / "b")
    assert tb.release.key == "bundle-0.4" and ta.release.key == "tutorials-2025"
    assert tb.weights_hash == ta.weights_hash and tb.config == ta.config
    (b / "autoencoder_epoch273.pt").write_bytes((a / "autoencoder_epoch273.pt").read_bytes() + b"\0")
    assert M.MaisiBackbone(weights=tmp_path / "b").weights_hash != ta.weights_hash


def test_both_variants_in_one_folder(tmp_path):
    write_release(tmp_path, "nv-generate-ddpm")
    write_release(tmp_path, "nv-generate-rflow")  # the same autoencoder_v1.pt name: one folder, two UNets
    assert M.MaisiBackbone(weights=tmp_path).variant == "ddpm"
    rf = M.MaisiBackbone(weights=tmp_path, variant="rflow")
    assert rf.variant == "rflow" and rf.release.key == "nv-generate-rflow"
    with pytest.raises(MedDiftError, match="not conditioned on a body region"):
        M.MaisiBackbone(weights=tmp_path, variant="rflow", body_region="head")
    head = M.MaisiBackbone(weights=tmp_path, body_region="head")
    assert head.config["body_region"] == ["head", "head"] and head.top_region == [1.0, 0.0, 0.0, 0.0]


def test_out_proj_keys_are_dropped_exactly(tmp_path):
    ddpm_keys = _shapes(lambda: unet("ddpm"))
    state = cheap_state(ddpm_keys, 0)
    state["up_blocks.3.attentions.0.attn.out_proj.weight"] = torch.zeros(64, 64)  # no such attention block
    write_release(tmp_path, "tutorials-2025", unet_state=state)
    with pytest.raises(MedDiftError, match="1 unexpected: up_blocks.3.attentions.0.attn.out_proj.weight"):
        M.MaisiBackbone(weights=tmp_path)
    rflow = cheap_state(_shapes(lambda: unet("rflow")), 0)
    rflow.pop("middle_block.attention.attn.out_proj.bias")  # include_fc: out_proj is used, stays strict
    write_release(tmp_path / "r", "bundle-1.0", unet_state=rflow)
    with pytest.raises(MedDiftError, match="1 missing: middle_block.attention.attn.out_proj.bias"):
        M.MaisiBackbone(weights=tmp_path / "r")


def test_files_are_loaded_safely(tmp_path):
    folder = write_release(tmp_path, "tutorials-2025")
    ckpt = torch.load(folder / "diff_unet_3d_ddpm.pt", weights_only=False)
    assert type(ckpt["scale_factor"]).__name__ == "MetaTensor"  # what the loader had to accept
    ckpt["args"] = argparse.Namespace(lr=1e-4)  # an arbitrary Python object
    torch.save(ckpt, folder / "diff_unet_3d_ddpm.pt")
    with pytest.raises(MedDiftError, match=r"holds a Python object \(argparse.Namespace\)") as e:
        M.MaisiBackbone(weights=tmp_path)
    assert "weights_only" not in str(e.value)


def test_missing_and_swapped_files_name_the_release(tmp_path):
    folder = write_release(tmp_path, "bundle-1.0")
    (folder / "autoencoder.pt").unlink()
    with pytest.raises(MedDiftError) as e:
        M.MaisiBackbone(weights=tmp_path)
    msg = str(e.value)
    assert "diffusion_unet.pt of the model-zoo bundle maisi_ct_generative 1.0.x (rectified flow)" in msg
    assert "autoencoder autoencoder.pt is missing" in msg
    assert "python -m monai.bundle download maisi_ct_generative --version 1.0.0 --bundle_dir DIR" in msg
    nv = write_release(tmp_path / "nv", "nv-generate-ddpm")
    (nv / "diff_unet_3d_ddpm-ct.pt").unlink()
    with pytest.raises(MedDiftError) as e:
        M.MaisiBackbone(weights=tmp_path / "nv")
    assert "autoencoder autoencoder_v1.pt" in str(e.value) and "diff_unet_3d_ddpm-ct.pt" in str(e.value)
    assert "huggingface-cli download nvidia/NV-Generate-CT" in str(e.value)
    sw = write_release(tmp_path / "sw", "tutorials-2025")
    ae, un = sw / "autoencoder_epoch273.pt", sw / "diff_unet_3d_ddpm.pt"
    tmp = sw / "x.pt"
    ae.rename(tmp), un.rename(ae), tmp.rename(un)
    with pytest.raises(MedDiftError, match="autoencoder state dict|not the MAISI autoencoder|must be a MAISI"):
        M.MaisiBackbone(weights=sw)


def test_latent_mean_or_sample_and_variant_in_the_store(tmp_path):
    from napari_meddift.backbones.extraction import extract_to_store
    from napari_meddift.backbones.preprocessing import PreprocessSettings
    from napari_meddift.io.volume import Volume

    small = PreprocessSettings(multiple=32, min_size=32)
    vol = Volume(np.random.default_rng(0).uniform(-1000, 500, (32, 32, 32)).astype(np.float32), spacing=(1, 1, 1))
    s = ExtractionSettings(levels=("up3",), seed=5)
    mean = M.MaisiBackbone(random_weights=True, width=0.125, preprocessing=small)
    sample = M.MaisiBackbone(random_weights=True, width=0.125, preprocessing=small, latent="sample")
    rflow = M.MaisiBackbone(random_weights=True, width=0.125, preprocessing=small, variant="rflow")
    fm, fs = mean.extract(vol, s)["up3"], sample.extract(vol, s)["up3"]
    assert not torch.allclose(fm, fs)
    torch.testing.assert_close(sample.extract(vol, s)["up3"], fs, rtol=0, atol=0)  # seeded
    stores = {}
    for name, b in (("mean", mean), ("sample", sample), ("rflow", rflow)):
        stores[name], _ = extract_to_store(vol, b, s, tmp_path / f"{name}.zarr")
    keys = {n: st.cache_key for n, st in stores.items()}
    assert len(set(keys.values())) == 3
    assert stores["rflow"].attrs["backbone_config"] == {"variant": "rflow", "modality": "ct", "class_label": 1,
                                                         "latent": "mean"}
    assert stores["mean"].attrs["backbone_config"]["body_region"] == ["chest", "chest"]
    assert "seeded random weights" in stores["sample"].attrs["backbone_description"]
    with pytest.raises(MedDiftError, match="mean or sample"):
        M.MaisiBackbone(random_weights=True, width=0.125, latent="mode")
