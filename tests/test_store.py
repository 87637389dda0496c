import json

import numpy as np
import pytest
import torch
import zarr

from napari_meddift import STORE_FORMAT_VERSION, __version__
from napari_meddift.io import store as S
from napari_meddift.backbones.base import ExtractionSettings
from napari_meddift.errors import MedDiftError
from napari_meddift.io.volume import Volume


def _levels():
    rng = np.random.default_rng(0)
    return {
        "up0": rng.standard_normal((6, 2, 3, 4)).astype(np.float32),
        "up1": torch.from_numpy(rng.standard_normal((3, 20, 18, 40)).astype(np.float32)),
    }


ATTRS = {"image_shape": (40, 36, 80), "spacing": (2.5, 0.7, 0.7), "backbone": "fake", "settings": {"seed": 1}}


def _leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_round_trip(tmp_path):
    levels = _levels()
    st = S.write_store(tmp_path / "a.zarr", levels, ATTRS)
    assert st.image_shape == (40, 36, 80) and st.spacing == (2.5, 0.7, 0.7)
    assert st.level_names == ("up0", "up1")
    a = st.attrs
    assert a["format"] == "napari-meddift-descriptors" and a["format_version"] == STORE_FORMAT_VERSION
    assert a["complete"] is True and a["package_version"] == __version__ and a["created"]
    assert a["level_shapes"] == {"up0": [6, 2, 3, 4], "up1": [3, 20, 18, 40]}
    arr = st.level("up1")
    assert arr.dtype == np.float16 and arr.chunks == (3, 16, 16, 16)
    assert st.level("up0").chunks == (6, 2, 3, 4)
    loaded = st.load_levels()
    for name, ref in levels.items():
        ref = np.asarray(ref, dtype=np.float32)
        assert loaded[name].dtype == np.float32
        np.testing.assert_allclose(loaded[name], ref.astype(np.float16).astype(np.float32))
    box = st.read_box("up1", (slice(2, 5), slice(0, 3), slice(30, 40)))
    np.testing.assert_array_equal(box, loaded["up1"][:, 2:5, 0:3, 30:40])
    assert list(S.open_store(tmp_path / "a.zarr").load_levels(["up1"])) == ["up1"]
    with pytest.raises(MedDiftError, match="no level 'up7'"):
        st.level("up7")
    assert _leftovers(tmp_path) == []


def test_float32_and_bad_dtype(tmp_path):
    st = S.write_store(tmp_path / "b.zarr", _levels(), ATTRS, dtype="float32")
    np.testing.assert_array_equal(st.load_levels()["up0"], _levels()["up0"])
    with pytest.raises(MedDiftError, match="dtype"):
        S.write_store(tmp_path / "c.zarr", _levels(), ATTRS, dtype="int8")


def test_open_errors(tmp_path):
    with pytest.raises(MedDiftError, match="no descriptor store"):
        S.open_store(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(MedDiftError, match="not a zarr v3 group"):
        S.open_store(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3).attrs.update({"format": "x"})
    with pytest.raises(MedDiftError, match="not a napari-meddift descriptor store"):
        S.open_store(tmp_path / "other.zarr")


def _edit_attrs(path, **changes):
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"].update(changes)
    meta.write_text(json.dumps(doc))


def test_version_incomplete_and_damaged(tmp_path):
    p = tmp_path / "s.zarr"
    S.write_store(p, _levels(), ATTRS)
    _edit_attrs(p, format_version=STORE_FORMAT_VERSION + 1)
    with pytest.raises(MedDiftError, match="format version"):
        S.open_store(p)
    _edit_attrs(p, format_version=STORE_FORMAT_VERSION, complete=False)
    with pytest.raises(MedDiftError, match="incomplete"):
        S.open_store(p)
    _edit_attrs(p, complete=True)
    S.open_store(p)
    import shutil

    shutil.rmtree(p / "levels" / "up1")
    with pytest.raises(MedDiftError, match="up1 missing"):
        S.open_store(p)


def test_failure_mid_write_leaves_nothing(tmp_path):
    levels = _levels()
    levels["bad"] = np.full((2, 3, 3, 3), np.nan)  # NaN: found after up0/up1 are written
    with pytest.raises(MedDiftError, match="'bad' holds 54 NaN/inf"):
        S.write_store(tmp_path / "f.zarr", levels, ATTRS)
    assert not (tmp_path / "f.zarr").exists() and _leftovers(tmp_path) == []


def test_interrupt_keeps_old_store(tmp_path, monkeypatch):
    p = tmp_path / "k.zarr"
    S.write_store(p, _levels(), {**ATTRS, "backbone": "old"})
    calls = {"n": 0}
    real = S._to_numpy

    def interrupting(a, dtype):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(a, dtype)

    monkeypatch.setattr(S, "_to_numpy", interrupting)
    with pytest.raises(KeyboardInterrupt):
        S.write_store(p, _levels(), {**ATTRS, "backbone": "new"})
    assert S.open_store(p).attrs["backbone"] == "old"
    assert _leftovers(tmp_path) == []
    monkeypatch.setattr(S, "_to_numpy", real)
    assert S.write_store(p, _levels(), {**ATTRS, "backbone": "new"}).attrs["backbone"] == "new"
    assert _leftovers(tmp_path) == []


def test_never_replaces_foreign_data(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("x")
    with pytest.raises(MedDiftError, match="refusing"):
        S.write_store(tmp_path / "mine", _levels(), ATTRS)
    assert (tmp_path / "mine" / "precious.txt").exists() and _leftovers(tmp_path) == []


def test_cache_key_sensitivity():
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    v = Volume(arr, spacing=(1.0, 2.0, 3.0))
    s = ExtractionSettings()
    k = S.cache_key(v, "maisi", "h", s, {"multiple": 128})
    assert k == S.cache_key(Volume(arr.copy(), spacing=(1.0, 2.0, 3.0)), "maisi", "h", s, {"multiple": 128})
    arr2 = arr.copy()
    arr2[0, 0, 0] += 1
    others = [
        S.cache_key(Volume(arr2, spacing=(1.0, 2.0, 3.0)), "maisi", "h", s, {"multiple": 128}),
        S.cache_key(Volume(arr, spacing=(1.0, 2.0, 3.5)), "maisi", "h", s, {"multiple": 128}),
        S.cache_key(Volume(arr, spacing=(1.0, 2.0, 3.0), direction=-np.eye(3)), "maisi", "h", s, {"multiple": 128}),
        S.cache_key(v, "mini", "h", s, {"multiple": 128}),
        S.cache_key(v, "maisi", "h2", s, {"multiple": 128}),
        S.cache_key(v, "maisi", "h", ExtractionSettings(timestep=50), {"multiple": 128}),
        S.cache_key(v, "maisi", "h", ExtractionSettings(levels=("up0",)), {"multiple": 128}),
        S.cache_key(v, "maisi", "h", s, {"multiple": 64}),
    ]
    assert len({k, *others}) == len(others) + 1
    assert S.cache_key(v, "maisi", "h", ExtractionSettings(device="cpu"), {"multiple": 128}) == k


def test_the_store_has_one_import_path():
    """``napari_meddift.io.store`` is the store's one home (the flat alias ``napari_meddift.store``
    is gone, so docs and scripts cannot drift between two spellings); its public names are there."""
    with pytest.raises(ImportError):
        from napari_meddift.store import open_store  # noqa: F401
    for name in ("DescriptorStore", "cache_key", "level_chunks", "open_store", "verify_store", "write_store"):
        assert callable(getattr(S, name)), name
    assert S.DescriptorStore.__module__ == "napari_meddift.io.store"
