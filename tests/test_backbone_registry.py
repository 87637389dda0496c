"""The backbone registry: the plugin hook (``register_backbone``) with any capitalisation, and the
protocol check that turns a wrong class into one clear line."""

import numpy as np
import pytest
import torch

import napari_meddift.backbones as B
from napari_meddift.backbones import Backbone, ExtractionSettings, get_backbone, register_backbone
from napari_meddift.backbones.extraction import extract_to_store
from napari_meddift.errors import MedDiftError
from napari_meddift.io.store import open_store
from napari_meddift.io.volume import Volume


class TinyNet:
    """The smallest backbone that meets the protocol: one level, the image's own intensities
    and their square, at native resolution."""

    name = "mynet"
    level_names = ("raw",)
    default_levels = ("raw",)
    preprocessing = None
    grid_spacing = None
    weights_hash = "tiny-1"
    config = {"power": 2}
    description = "TinyNet test backbone"

    def __init__(self, weights=None, random_weights=False, scale=1.0):
        self.scale = scale

    def extract(self, volume, settings, progress=None):
        a = torch.from_numpy(np.asarray(volume.array, np.float32)) * self.scale
        return {"raw": torch.stack([a, a * a])}


class NoExtract:
    name = "broken"
    level_names = default_levels = ("raw",)

    def __init__(self, weights=None, random_weights=False):
        pass


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry: what a test registers is gone afterwards."""
    monkeypatch.setattr(B, "_REGISTRY", dict(B._REGISTRY))


def test_registered_name_is_found_in_any_case(registry):
    register_backbone("MyNet", f"{__name__}:TinyNet")
    assert "mynet" in B.available_backbones()
    for spelling in ("MyNet", "mynet", "MYNET", " MyNet "):
        bb = get_backbone(spelling, scale=3.0)
        assert isinstance(bb, TinyNet) and bb.scale == 3.0
        assert isinstance(bb, Backbone)
    assert B.backbone_levels("MyNet") == (("raw",), ("raw",))
    with pytest.raises(MedDiftError, match="unknown backbone 'MyNets'.*mynet"):
        get_backbone("MyNets")


def test_registered_backbone_extracts_into_a_store(registry, tmp_path):
    register_backbone("MyNet", f"{__name__}:TinyNet")
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(size=(6, 7, 8)).astype(np.float32), spacing=(2.0, 1.0, 1.5), name="v")
    store, reused = extract_to_store(volume, get_backbone("MyNet"), ExtractionSettings(device="cpu"),
                                     tmp_path / "v.zarr", dtype="float32")
    assert not reused
    store = open_store(store.path)
    assert store.attrs["backbone"] == "mynet" and store.attrs["weights_hash"] == "tiny-1"
    assert store.attrs["backbone_config"] == {"power": 2}
    assert store.level_names == ("raw",)
    raw = store.load_levels()["raw"]
    np.testing.assert_array_equal(raw[0], volume.array)
    np.testing.assert_allclose(raw[1], volume.array ** 2, rtol=1e-6)


def test_class_without_the_protocol_is_one_clear_line(registry):
    register_backbone("Broken", f"{__name__}:NoExtract")
    with pytest.raises(MedDiftError) as info:
        get_backbone("broken")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"backbone 'broken' ({__name__}:NoExtract) does not meet the Backbone protocol")
    assert message.endswith("it lacks preprocessing, grid_spacing, weights_hash, config, description, extract()")


def test_register_refuses_a_bad_target(registry):
    with pytest.raises(ValueError, match="package.module:Class"):
        register_backbone("x", "no_colon")
    with pytest.raises(ValueError, match="empty"):
        register_backbone("  ", "a:B")


def test_shipped_backbones_meet_the_protocol():
    bb = get_backbone("mind")  # the alias, built without weights
    assert bb.name == "mind-ssc" and isinstance(bb, Backbone)
