"""The second hostile round (issue 21), replayed: one section per kind of failure it found.

Each test builds the hostile input itself (pickles byte by byte in their opcodes, damaged store
metadata, impossible headers, hostile option values) and asserts what the user must see: a
correct result, or one ``meddift: error:`` line (exit 2) / one ``MedDiftError``, before any work,
with nothing written and nothing that was there before lost.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_meddift.errors import MedDiftError

# ---------------------------------------------------------------- pickles: enums by getattr


def _pickle_ops(path: Path) -> list[tuple[str, object]]:
    """The opcodes of a torch checkpoint's pickle (name, argument); protocol 2 spells
    ``builtins`` as ``__builtin__``, which is written back here."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return [(op.name, arg.replace("__builtin__ ", "builtins ") if isinstance(arg, str) else arg)
            for op, arg, _ in pickletools.genops(data)]


@pytest.fixture()
def enums_pickled_by_getattr(monkeypatch):
    """Pickle MONAI's enum members as Python 3.11.0-3.11.x (Debian's 3.11.2) and 3.12 do:
    ``getattr(EnumClass, "NAME")``, whatever Python runs the test."""
    from monai.utils import enums

    for name in dir(enums):
        cls = getattr(enums, name)
        if isinstance(cls, type) and issubclass(cls, enums.Enum) and cls.__module__ == enums.__name__:
            monkeypatch.setattr(cls, "__reduce_ex__", lambda self, proto: (getattr, (type(self), self._name_)))


def test_maisi_checkpoint_with_enums_by_getattr_loads(tmp_path, enums_pickled_by_getattr):
    from maisi_layouts import metatensor_scale_factor
    from monai.utils.enums import MetaKeys, SpaceKeys

    from napari_meddift.backbones.maisi_release import load_checkpoint

    path = tmp_path / "diff_unet_3d_ddpm.pt"
    torch.save({"scale_factor": metatensor_scale_factor(0.5), "unet_state_dict": {"w": torch.ones(2)}}, path)
    ops = _pickle_ops(path)
    gets = [i for i, (name, arg) in enumerate(ops) if name == "GLOBAL" and arg == "builtins getattr"]
    assert gets, "the test pickle must name builtins.getattr, as Debian's Python 3.11.2 writes it"
    # ... and resolves both MetaKeys (dict keys) and SpaceKeys (the value of "space") through it
    assert ("GLOBAL", "monai.utils.enums SpaceKeys") in ops and ("GLOBAL", "monai.utils.enums MetaKeys") in ops
    assert ("BINUNICODE", "RAS") in ops
    ckpt = load_checkpoint(path)
    sf = ckpt["scale_factor"]
    assert float(sf) == pytest.approx(0.5)
    assert sf.meta["space"] is SpaceKeys.RAS and MetaKeys.AFFINE in sf.meta
    assert torch.equal(ckpt["unet_state_dict"]["w"], torch.ones(2))


def test_maisi_backbone_loads_a_release_saved_by_debian_python(tmp_path, enums_pickled_by_getattr):
    from maisi_layouts import write_release

    from napari_meddift.backbones import maisi as M

    folder = write_release(tmp_path, "tutorials-2025", scale_factor=0.25)
    assert ("GLOBAL", "builtins getattr") in _pickle_ops(folder / "diff_unet_3d_ddpm.pt")
    assert M.MaisiBackbone(weights=tmp_path).scale_factor == pytest.approx(0.25)


class _Reduce:
    """An object that pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):  # pickle wants a callable as func; it is pickled as its own reduce
        raise AssertionError("never called")


def _malicious_getattrs():
    from monai.data import MetaTensor
    from monai.utils.enums import SpaceKeys

    return {
        "not an enum": (_Reduce(getattr, MetaTensor, "__reduce_ex__"), "getattr(monai.data.meta_tensor.MetaTensor, '__reduce_ex__')"),
        "numpy method": (_Reduce(getattr, np.ndarray, "tofile"), "getattr(numpy.ndarray, 'tofile')"),
        "enum, not a member": (_Reduce(getattr, SpaceKeys, "__new__"), "'__new__'"),
        "enum, dunder dict": (_Reduce(getattr, SpaceKeys, "__dict__"), "'__dict__'"),
        "with a default": (_Reduce(getattr, SpaceKeys, "XYZ", 1), "SpaceKeys"),
        "on a string": (_Reduce(getattr, "RAS", "format"), "getattr(a str, 'format')"),
        "on a tensor": (_Reduce(getattr, torch.ones(1), "numpy"), "getattr(a Tensor, 'numpy')"),
        "nested": (_Reduce(getattr, _Reduce(getattr, SpaceKeys, "RAS"), "__class__"), "'__class__'"),
    }


@pytest.mark.parametrize("kind", list(_malicious_getattrs()))
def test_getattr_is_refused_for_anything_but_an_allowed_enum_member(tmp_path, kind, enums_pickled_by_getattr):
    from maisi_layouts import metatensor_scale_factor

    from napari_meddift.backbones.maisi_release import load_checkpoint

    obj, named = _malicious_getattrs()[kind]
    path = tmp_path / "evil.pt"
    torch.save({"scale_factor": metatensor_scale_factor(), "extra": obj}, path)
    assert ("GLOBAL", "builtins getattr") in _pickle_ops(path)
    with pytest.raises(MedDiftError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and "holds a Python object (getattr(" in msg and "refusing it" in msg, msg
    assert named in msg and "weights_only" not in msg


def test_getattr_payload_never_runs(tmp_path, monkeypatch):
    """A pickle that would write a file if ``getattr`` were allowed as such: fetch
    ``numpy.ndarray.tofile`` by getattr and call it on an array. Refused; nothing written."""
    from napari_meddift.backbones.maisi_release import load_checkpoint

    marker = tmp_path / "pwned"
    arr = np.zeros(3)
    torch.save({"x": _Reduce(_Reduce(getattr, np.ndarray, "tofile"), arr, str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(MedDiftError, match=r"holds a Python object \(getattr\(numpy.ndarray, 'tofile'\)\)"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_plain_loader_does_not_accept_getattr(tmp_path, enums_pickled_by_getattr):
    """Only MAISI's loader knows the enums; the mini loader (tensors only) still refuses getattr."""
    from monai.utils.enums import SpaceKeys

    from napari_meddift.backbones.checkpoint import load_checkpoint

    torch.save({"w": torch.ones(1), "space": SpaceKeys.RAS}, tmp_path / "m.pt")
    with pytest.raises(MedDiftError, match="holds a Python object"):
        load_checkpoint(tmp_path / "m.pt", "mini weights")
