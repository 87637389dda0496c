import numpy as np
import pytest
import torch

from napari_meddift.io import store as S
from napari_meddift.backbones.base import ExtractionSettings
from napari_meddift.errors import CancelledError, MedDiftError
from napari_meddift.backbones.extraction import extract_to_store
from napari_meddift.backbones.preprocessing import PreprocessSettings
from napari_meddift.io.volume import Volume


class FakeBackbone:
    """Deterministic, instant descriptor source following the Backbone protocol."""

    name = "fake"
    level_names = ("up0", "up1")
    default_levels = ("up0", "up1")
    weights_hash = "fake-hash"

    def __init__(self):
        self.calls = 0

    def extract(self, volume, settings, progress=None):
        self.calls += 1
        total = 1 + settings.samples
        g = torch.Generator().manual_seed(settings.seed + settings.timestep)
        for i in range(total):
            if progress:
                progress(i, total, "step")
        z, y, x = volume.shape
        out = {"up1": torch.randn(4, z // 2, y // 2, x // 2, generator=g), "up0": torch.randn(8, 2, 2, 2, generator=g)}
        if progress:
            progress(total, total, "done")
        return out


@pytest.fixture
def volume():
    rng = np.random.default_rng(1)
    return Volume(rng.normal(size=(8, 10, 12)).astype(np.float32), spacing=(2.0, 1.0, 1.0), name="v")


def _leftovers(d):
    return [p.name for p in d.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_extract_writes_then_reuses(tmp_path, volume):
    b = FakeBackbone()
    seen = []
    st, reused = extract_to_store(
        volume, b, ExtractionSettings(), tmp_path / "v.zarr", progress=lambda *a: seen.append(a)
    )
    assert not reused and b.calls == 1 and seen[-1][2] == "writing store"
    assert st.level_names == ("up0", "up1")  # backbone order, not dict order
    a = st.attrs
    assert a["backbone"] == "fake" and a["weights_hash"] == "fake-hash" and a["source"] == "v"
    assert a["image_shape"] == [8, 10, 12] and a["spacing"] == [2.0, 1.0, 1.0]
    assert a["timestep"] == 20 and a["seed"] == 0 and a["samples"] == 1
    assert a["settings"]["timestep"] == 20 and len(a["cache_key"]) == 64
    st2, reused = extract_to_store(volume, b, ExtractionSettings(), tmp_path / "v.zarr")
    assert reused and b.calls == 1 and st2.cache_key == st.cache_key
    st3, reused = extract_to_store(volume, b, ExtractionSettings(), tmp_path / "v.zarr", overwrite=True)
    assert not reused and b.calls == 2


def test_different_settings_reextract(tmp_path, volume):
    b = FakeBackbone()
    p = tmp_path / "v.zarr"
    st1, _ = extract_to_store(volume, b, ExtractionSettings(timestep=20), p)
    first = st1.load_levels()["up0"]
    st2, reused = extract_to_store(volume, b, ExtractionSettings(timestep=50), p)
    assert not reused and b.calls == 2 and st2.attrs["timestep"] == 50
    assert not np.array_equal(st2.load_levels()["up0"], first)
    changed = Volume(volume.array + 1, spacing=volume.spacing)
    _, reused = extract_to_store(changed, b, ExtractionSettings(timestep=50), p)
    assert not reused and b.calls == 3 and _leftovers(tmp_path) == []


def test_cancel_leaves_nothing(tmp_path, volume):
    def cancel(done, total, msg):
        if done == 1:
            raise CancelledError("cancelled by user")

    with pytest.raises(CancelledError):
        extract_to_store(volume, FakeBackbone(), ExtractionSettings(), tmp_path / "v.zarr", progress=cancel)
    assert [p for p in tmp_path.iterdir() if p.suffix != ".lock"] == []  # the empty lock file may stay


def test_failure_mid_write_leaves_no_store(tmp_path, volume, monkeypatch):
    real = S._to_numpy
    n = {"calls": 0}

    def failing(a, dtype):
        n["calls"] += 1
        if n["calls"] == 2:
            raise OSError("disk full")
        return real(a, dtype)

    monkeypatch.setattr(S, "_to_numpy", failing)
    with pytest.raises(MedDiftError, match="disk full"):  # one clear line, nothing left behind
        extract_to_store(volume, FakeBackbone(), ExtractionSettings(), tmp_path / "v.zarr")
    assert [p for p in tmp_path.iterdir() if p.suffix != ".lock"] == []  # the empty lock file may stay
    with pytest.raises(MedDiftError):
        S.open_store(tmp_path / "v.zarr")


def test_incomplete_or_foreign_store_at_path(tmp_path, volume):
    p = tmp_path / "v.zarr"
    b = FakeBackbone()
    extract_to_store(volume, b, ExtractionSettings(), p)
    import json

    meta = p / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["complete"] = False
    meta.write_text(json.dumps(doc))
    with pytest.raises(MedDiftError, match="incomplete"):
        S.open_store(p)
    st, reused = extract_to_store(volume, b, ExtractionSettings(), p)  # an incomplete store is redone
    assert not reused and st.attrs["complete"] is True
    (tmp_path / "notes").mkdir()
    with pytest.raises(MedDiftError, match="not a napari-meddift descriptor store"):
        extract_to_store(volume, b, ExtractionSettings(), tmp_path / "notes")
    with pytest.raises(MedDiftError, match="does not take preprocessing"):
        extract_to_store(volume, b, ExtractionSettings(), tmp_path / "x.zarr", preprocessing=PreprocessSettings())


def test_maisi_reduced_width_end_to_end(tmp_path):
    from napari_meddift.backbones.maisi import MaisiBackbone

    b = MaisiBackbone(random_weights=True, width=0.125)
    vol = Volume(np.random.default_rng(0).uniform(-1000, 500, (32, 32, 32)).astype(np.float32), spacing=(1.5, 1, 1))
    small = PreprocessSettings(multiple=32, min_size=32)
    st, reused = extract_to_store(
        vol, b, ExtractionSettings(levels=("up2", "up3")), tmp_path / "m.zarr", preprocessing=small
    )
    assert not reused and st.level_names == ("up2", "up3")
    assert st.attrs["preprocessing"] == small.to_dict() and st.attrs["weights_hash"] == "random-0-w0.125"
    assert st.level("up3").shape == (8, 8, 8, 8)
    _, reused = extract_to_store(
        vol, b, ExtractionSettings(levels=("up2", "up3")), tmp_path / "m.zarr", preprocessing=small
    )
    assert reused
