"""The second hostile round (issue 21), replayed: one section per kind of failure it found.

Each test builds the hostile input itself (pickles byte by byte in their opcodes, damaged store
metadata, impossible headers, hostile option values) and asserts what the user must see: a
correct result, or one ``meddift: error:`` line (exit 2) / one ``MedDiftError``, before any work,
with nothing written and nothing that was there before lost.
"""

from __future__ import annotations

import os
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
    """Pickle MONAI's enum members as early Python 3.11 releases (Debian's 3.11.2) and 3.12 do:
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
        "not an enum": (
            _Reduce(getattr, MetaTensor, "__reduce_ex__"),
            "getattr(monai.data.meta_tensor.MetaTensor, '__reduce_ex__')",
        ),
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


# ---------------------------------------------------------------- data lost: outputs vs inputs


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """Two small stores (random levels, 12x14x16 image) and the target's image."""
    from napari_meddift.io import store as S
    from napari_meddift.io.volume import Volume, write_volume

    d = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(3)
    attrs = {"image_shape": (12, 14, 16), "spacing": (2.0, 1.5, 1.5), "backbone": "mind-ssc"}
    for name in ("src", "tgt"):
        S.write_store(d / f"{name}.zarr", {"up0": rng.standard_normal((4, 12, 14, 16)).astype(np.float32)}, attrs)
        write_volume(Volume(rng.normal(-500, 300, (12, 14, 16)).astype(np.float32), (2.0, 1.5, 1.5)),
                     d / f"{name}.nii.gz")
    return d


def _cli_error(capsys, argv) -> str:
    from napari_meddift.cli import main

    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("meddift: error: ") and "\n" not in err, err
    return err


def _register(d, *extra):
    return ["register", d / "src.zarr", d / "tgt.zarr", "--iterations", "1", "--grid-spacing", "2",
            "--search-radius", "2", "--device", "cpu", *extra]


def test_register_never_writes_over_an_input(small_pair, capsys, tmp_path, monkeypatch):
    import napari_meddift.registration as R

    d = small_pair
    monkeypatch.setattr(R, "register_stores", lambda *a, **k: pytest.fail("registered before the outputs were checked"))
    moving = tmp_path / "moving.nii.gz"
    moving.write_bytes((d / "tgt.nii.gz").read_bytes())
    before = moving.read_bytes()
    (tmp_path / "hard.nii.gz").hardlink_to(moving)
    (tmp_path / "soft.nii.gz").symlink_to(moving)
    (tmp_path / "sub").mkdir()
    cases = {
        "-o is --moving": ["-o", moving, "--moving", moving, "--warped", tmp_path / "w.nii.gz"],
        "--warped is --moving": ["-o", tmp_path / "f.nii.gz", "--moving", moving, "--warped", moving],
        "-o a hard link to --moving": ["-o", tmp_path / "hard.nii.gz", "--moving", moving,
                                       "--warped", tmp_path / "w.nii.gz"],
        "-o a symlink to --moving": ["-o", tmp_path / "soft.nii.gz", "--moving", moving,
                                     "--warped", tmp_path / "w.nii.gz"],
        "-o another spelling": ["-o", tmp_path / "sub" / ".." / "moving.nii.gz", "--moving", moving,
                                "--warped", tmp_path / "w.nii.gz"],
    }
    for kind, extra in cases.items():
        err = _cli_error(capsys, _register(d, *extra))
        assert "would destroy that input" in err and "choose another output name" in err, (kind, err)
    assert moving.read_bytes() == before
    err = _cli_error(capsys, _register(d, "-o", tmp_path / "f.nii.gz", "--jacobian", tmp_path / "f.nii.gz"))
    assert "--jacobian" in err and "same file as -o/--output" in err
    err = _cli_error(capsys, _register(d, "-o", d / "src.zarr" / "f.nii.gz"))
    assert "lies inside the input source" in err
    (tmp_path / "dangling.nii.gz").symlink_to(tmp_path / "nowhere" / "x.nii.gz")
    assert "dangling symbolic link" in _cli_error(capsys, _register(d, "-o", tmp_path / "dangling.nii.gz"))
    fifo = tmp_path / "fifo.nii.gz"
    os.mkfifo(fifo)
    assert "special file" in _cli_error(capsys, _register(d, "-o", fifo))
    (tmp_path / "dir.nii.gz").mkdir()
    assert "is a folder" in _cli_error(capsys, _register(d, "-o", tmp_path / "dir.nii.gz"))


def test_match_output_is_not_its_points(small_pair, capsys, tmp_path):
    pts = tmp_path / "pts.csv"
    pts.write_text("1,2,3\n")
    err = _cli_error(capsys, ["match", small_pair / "src.zarr", small_pair / "tgt.zarr", "--points", pts, "-o", pts])
    assert "is the input --points" in err and pts.read_text() == "1,2,3\n"


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 96 kB tmpfs mounted for the test (root only); skips where mounting is not allowed."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a small tmpfs (root); the ENOSPC path is also tested by monkeypatching")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("name", ["f.nii.gz", "f.nii", "f.mha", "f.nrrd", "f.mhd"])
def test_full_disk_keeps_the_old_file_and_leaves_nothing(tiny_disk, name):
    from napari_meddift.io.volume import Volume, read_volume, write_volume

    old = Volume(np.full((4, 4, 4), 7.0, np.float32))
    write_volume(old, tiny_disk / name)
    before = sorted(p.name for p in tiny_disk.iterdir())
    big = Volume(np.random.default_rng(0).random((40, 40, 40)).astype(np.float32))  # 256 kB
    with pytest.raises(MedDiftError, match="disk is full|could be written|cannot be written|incomplete") as e:
        write_volume(big, tiny_disk / name)
    assert "\n" not in str(e.value) and "nothing was written" in str(e.value)
    assert sorted(p.name for p in tiny_disk.iterdir()) == before  # no partial left
    assert np.array_equal(read_volume(tiny_disk / name).array, old.array)


def test_full_disk_by_enospc_for_csv(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: ENOSPC from the write itself, the old CSV is kept."""
    import builtins
    import errno

    from napari_meddift.io.landmarks import write_points_csv

    out = tmp_path / "m.csv"
    out.write_text("x,y,z\n1,2,3\n")
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(builtins, "open", lambda p, mode="r", *a, **k: Full(real_open(p, mode, *a, **k))
                        if "w" in mode and str(p).startswith(str(tmp_path)) else real_open(p, mode, *a, **k))
    with pytest.raises(MedDiftError, match="the disk is full; nothing was written"):
        write_points_csv(out, np.zeros((2, 3)))
    monkeypatch.undo()
    assert out.read_text() == "x,y,z\n1,2,3\n" and [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def test_a_killed_field_write_leaves_the_old_field(tmp_path):
    """SIGKILL while a field is written over an existing one: the old field, whole (not 0 bytes)."""
    import signal
    import subprocess
    import sys

    from napari_meddift.io.volume import Volume, read_volume, write_volume

    out = tmp_path / "field.nii.gz"
    write_volume(Volume(np.full((8, 8, 8), 3.0, np.float32)), out)
    code = ("import os, signal, numpy as np, SimpleITK as sitk\n"
            "real = sitk.WriteImage\n"
            "def killed(img, path, *a):\n"
            "    real(img, path, *a); os.truncate(path, 0); os.kill(os.getpid(), signal.SIGKILL)\n"
            "sitk.WriteImage = killed\n"
            "from napari_meddift.io.volume import Volume, write_volume\n"
            f"write_volume(Volume(np.zeros((8, 8, 8), np.float32)), {str(out)!r})\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert np.array_equal(read_volume(out).array, np.full((8, 8, 8), 3.0, np.float32))
    write_volume(Volume(np.ones((8, 8, 8), np.float32)), out)  # the next writer removes the dead partial
    assert sorted(p.name for p in tmp_path.iterdir()) == ["field.nii.gz"]


# ---------------------------------------------------------------- metadata believed


def _store_attrs(rng_seed=0, **extra):
    return {"image_shape": [12, 14, 16], "spacing": [2.0, 1.5, 1.5], "origin": [1.0, 2.0, 3.0],
            "direction": np.eye(3).tolist(), "backbone": "mini", "weights_hash": "a" * 64, "timestep": 20, **extra}


def _write(path, seed=0, **extra):
    from napari_meddift.io import store as S

    rng = np.random.default_rng(seed)
    lv = {n: rng.standard_normal((3, 6, 7, 8)).astype(np.float32) for n in ("up0", "up1")}
    return S.write_store(path, lv, _store_attrs(**extra))


def _edit_json(path: Path, fn) -> None:
    import json

    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _set_attr(key, value):
    return lambda doc: doc["attributes"].__setitem__(key, value)


METADATA_EDITS = {
    "image_shape 200^3": ("zarr.json", _set_attr("image_shape", [200, 200, 200])),
    "image_shape 10^3": ("zarr.json", _set_attr("image_shape", [10, 10, 10])),
    "direction all zero": ("zarr.json", _set_attr("direction", [[0, 0, 0]] * 3)),
    "direction garbage": ("zarr.json", _set_attr("direction", "garbage")),
    "origin NaN": ("zarr.json", _set_attr("origin", [float("nan"), 0, 0])),
    "spacing changed": ("zarr.json", _set_attr("spacing", [1.0, 1.5, 1.5])),
    "timestep changed": ("zarr.json", _set_attr("timestep", 500)),
    "weights hash changed": ("zarr.json", _set_attr("weights_hash", "b" * 64)),
    "a new attribute changed": ("zarr.json", _set_attr("level_geometry", {"up0": {"spacing": [9, 9, 9]}})),
    "level checksums changed": ("zarr.json", _set_attr("checksums", {"up0": "sha256:0", "up1": "sha256:0"})),
    "metadata checksum removed": ("zarr.json", lambda d: d["attributes"].pop("metadata_checksum")),
    "level dtype retyped": ("levels/up0/zarr.json", lambda d: d.__setitem__("data_type", "float32")),
    "level fill value changed": ("levels/up1/zarr.json", lambda d: d.__setitem__("fill_value", 1.0)),
}


@pytest.mark.parametrize("kind", list(METADATA_EDITS))
def test_edited_metadata_is_refused_at_open_and_by_check(tmp_path, capsys, kind):
    from napari_meddift.io import store as S

    path = tmp_path / "s.zarr"
    _write(path)
    name, fn = METADATA_EDITS[kind]
    _edit_json(path / name, fn)
    with pytest.raises(MedDiftError, match="is damaged") as e:
        S.open_store(path)
    assert "\n" not in str(e.value)
    from napari_meddift.cli import main

    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"DAMAGED {path}") and "damaged" in err


def test_a_level_copied_from_another_store_is_refused(tmp_path):
    """``up1`` taken from a t = 500 store, with its level checksum: the metadata no longer adds up."""
    import shutil

    from napari_meddift.io import store as S

    a, b = _write(tmp_path / "a.zarr", 0), _write(tmp_path / "b.zarr", 1, timestep=500)
    shutil.rmtree(a.path / "levels" / "up1")
    shutil.copytree(b.path / "levels" / "up1", a.path / "levels" / "up1")
    _edit_json(
        a.path / "zarr.json", lambda d: d["attributes"]["checksums"].__setitem__("up1", b.attrs["checksums"]["up1"])
    )
    with pytest.raises(MedDiftError, match="metadata .* differ from the checksum"):
        S.open_store(a.path)


def test_bookkeeping_attributes_may_change(tmp_path):
    from napari_meddift.io import store as S

    path = tmp_path / "s.zarr"
    _write(path)
    _edit_json(path / "zarr.json", _set_attr("created", "2020-01-01T00:00:00+00:00"))
    _edit_json(path / "zarr.json", _set_attr("write_id", "0123"))
    assert S.open_store(path).attrs["write_id"] == "0123"
    assert S.verify_store(path)["ok"]


def test_stores_of_other_extractions_are_not_mixed(tmp_path, capsys):
    from napari_meddift.cli import main
    from napari_meddift.matching import Matcher

    a = _write(tmp_path / "a.zarr", 0)
    pts = tmp_path / "p.csv"
    pts.write_text("2,3,4\n")
    for key, value in (("timestep", 500), ("weights_hash", "b" * 64), ("backbone", "maisi")):
        b = _write(tmp_path / f"b-{key}.zarr", 1, **{key: value})
        for cmd in (["match", a.path, b.path, "--points", pts, "-o", tmp_path / "m.csv"],
                    ["register", a.path, b.path, "-o", tmp_path / "f.nii.gz", "--iterations", "1"]):
            err = _cli_error(capsys, cmd)
            assert f"different {key.replace('_', ' ')}" in err and "--allow-mixed" in err, err
        with pytest.raises(MedDiftError, match=f"different {key.replace('_', ' ')}"):
            Matcher.from_stores(a, b)
        assert not (tmp_path / "m.csv").exists() and not (tmp_path / "f.nii.gz").exists()

    assert main(["match", str(a.path), str(b.path), "--points", str(pts), "-o", str(tmp_path / "m.csv"),
                 "--radius", "2", "--allow-mixed"]) == 0
    assert (tmp_path / "m.csv").read_text().startswith("x,y,z,score")


# ---------------------------------------------------------------- API: MedDiftError, not raw exceptions


@pytest.mark.parametrize("kind", ["../../evil", "a/b", "", ".hidden", "3-D level", "empty level", "NaN level",
                                  "float16 overflow", "shape NaN", "spacing 0", "no spacing", "direction 2x2"])
def test_write_store_refuses_bad_input_and_keeps_the_good_store(tmp_path, kind):
    from napari_meddift.io import store as S

    good = _write(tmp_path / "s.zarr", 0)
    before = good.load_levels()
    lv = {"up0": np.ones((3, 6, 7, 8), np.float32)}
    attrs = _store_attrs()
    if kind in ("../../evil", "a/b", "", ".hidden"):
        lv = {kind: lv["up0"]}
    elif kind == "3-D level":
        lv["up0"] = np.ones((6, 7, 8), np.float32)
    elif kind == "empty level":
        lv["up0"] = np.ones((0, 4, 4, 4), np.float32)
    elif kind == "NaN level":
        lv["up0"][1, 2, 3, 4] = np.nan
    elif kind == "float16 overflow":
        lv["up0"][0, 0, 0, 0] = 1e6
    elif kind == "shape NaN":
        attrs["image_shape"] = [float("nan"), 4, 4]
    elif kind == "spacing 0":
        attrs["spacing"] = [0, 1, 1]
    elif kind == "no spacing":
        del attrs["spacing"]
    elif kind == "direction 2x2":
        attrs["direction"] = [[1, 0], [0, 1]]
    with pytest.raises(MedDiftError) as e:
        S.write_store(tmp_path / "s.zarr", lv, attrs)
    assert "\n" not in str(e.value)
    after = S.open_store(tmp_path / "s.zarr")
    assert all(np.array_equal(before[n], v) for n, v in after.load_levels().items())
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["s.zarr"]
    _lock_is_free(tmp_path / "s.zarr")
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("arg", [None, "", 3, "   "])
def test_open_store_bad_argument_is_one_line(arg):
    from napari_meddift.io import store as S

    with pytest.raises(MedDiftError, match="store path must be a folder name"):
        S.open_store(arg)


# ---------------------------------------------------------------- impossible headers


def _nifti(path: Path, edit=None, dtype=np.int16) -> Path:
    import nibabel as nib

    arr = (np.arange(6 * 7 * 8).reshape(8, 7, 6) % 50).astype(dtype)  # nibabel is x,y,z
    img = nib.Nifti1Image(arr, np.diag([1.5, 1.5, 2.0, 1.0]))
    img.set_qform(np.diag([1.5, 1.5, 2.0, 1.0]), code=1)
    img.set_sform(np.diag([1.5, 1.5, 2.0, 1.0]), code=1)
    nib.save(img, str(path))
    if edit is not None:  # edit the saved header's bytes (nibabel would rewrite pixdim from the affine)
        import gzip

        hdr = nib.load(str(path)).header.copy()
        hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0  # nibabel resets them to NaN (unset) on load
        edit(hdr)
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
        with opener(path, "wb") as f:
            f.write(hdr.binaryblock + data[348:])
    return path


def _pixdim(i, v):
    def edit(h):
        p = h["pixdim"].copy()
        p[i] = v
        h["pixdim"] = p
    return edit


NIFTI_HEADERS = {
    "spacing 0": (_pixdim(1, 0.0), "voxel spacing"),
    "spacing NaN": (_pixdim(2, np.nan), "voxel spacing"),
    "spacing inf": (_pixdim(3, np.inf), "voxel spacing"),
    "NaN quaternion": (lambda h: h.__setitem__("quatern_b", np.nan), "qform"),
    "NaN offset": (lambda h: h.__setitem__("qoffset_y", np.nan), "qform"),
    "NaN sform row": (lambda h: h.__setitem__("srow_y", [np.nan, 1.5, 0, 0]), "sform rows hold NaN"),
    "singular sform": (lambda h: h.__setitem__("srow_z", [0, 0, 0, 0]), "sform matrix is singular"),
}


@pytest.mark.parametrize("kind", list(NIFTI_HEADERS))
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_impossible_nifti_headers_are_refused(tmp_path, kind, ext, capsys):
    from napari_meddift.io.volume import read_volume

    edit, words = NIFTI_HEADERS[kind]
    path = _nifti(tmp_path / f"ct{ext}", edit)
    with pytest.raises(MedDiftError, match=words) as e:
        read_volume(path)
    assert "\n" not in str(e.value) and "fix the header" in str(e.value)
    # ... and so is `evaluate --image` with it (the spacing of TRE), before any points are read
    err = _cli_error(capsys, ["evaluate", tmp_path / "missing.csv", tmp_path / "missing.csv", "--image", path])
    assert words.split()[0] in err


def test_sound_nifti_header_still_reads(tmp_path):
    from napari_meddift.io.volume import read_volume

    vol = read_volume(_nifti(tmp_path / "ct.nii.gz"))
    assert vol.shape == (6, 7, 8) and vol.spacing == pytest.approx((2.0, 1.5, 1.5))


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_voxels_are_refused(tmp_path, dtype):
    import SimpleITK as sitk

    from napari_meddift.io.volume import read_volume

    with pytest.raises(MedDiftError, match="complex voxel values"):
        read_volume(_nifti(tmp_path / "c.nii.gz", dtype=dtype))
    img = sitk.GetImageFromArray((np.ones((4, 5, 6)) + 1j).astype(np.complex64))
    sitk.WriteImage(img, str(tmp_path / "c.nrrd"))
    with pytest.raises(MedDiftError, match="complex voxel values|values per voxel"):
        read_volume(tmp_path / "c.nrrd")


@pytest.mark.parametrize("line,words", [("ElementSpacing = -1 1.5 2", "voxel spacing -1 1.5 2"),
                                        ("ElementSpacing = 0 1.5 2", "voxel spacing 0 1.5 2"),
                                        ("ElementSpacing = nan 1.5 2", "impossible elementspacing"),
                                        ("Offset = nan 0 0", "impossible offset"),
                                        ("TransformMatrix = 1 0 0 0 1 0 0 0 inf", "impossible transformmatrix"),
                                        ("TransformMatrix = 0 0 0 0 0 0 0 0 0", "transformmatrix .*not a rotation"),
                                        ("TransformMatrix = 2 0 0 0 1 0 0 0 1", "transformmatrix .*not a rotation")])
def test_impossible_mha_headers_are_refused(tmp_path, line, words):
    import SimpleITK as sitk

    from napari_meddift.io.volume import read_volume

    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    img.SetSpacing((2.0, 1.5, 2.0))
    sitk.WriteImage(img, str(tmp_path / "a.mha"))
    raw = (tmp_path / "a.mha").read_bytes()
    key = line.split(" =")[0].encode()
    head, sep, data = raw.partition(b"ElementDataFile = LOCAL\n")
    lines = [line.encode() if ln.startswith(key) else ln for ln in head.split(b"\n")]
    (tmp_path / "b.mha").write_bytes(b"\n".join(lines) + sep + data)
    with pytest.raises(MedDiftError, match=words):
        read_volume(tmp_path / "b.mha")


def _dicom_series(folder: Path, zs, truncate: int | None = None) -> Path:
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.123456"
    for i, z in enumerate(zs):
        sl = sitk.GetImageFromArray((np.arange(8 * 9).reshape(1, 8, 9) + i).astype(np.int16))[:, :, 0]
        sl.SetSpacing((0.7, 0.7))
        for k, v in {"0008|0060": "CT", "0020|000d": uid + ".0", "0020|000e": uid, "0020|0013": str(i + 1),
                     "0020|0032": f"0\\0\\{z}", "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "0.7\\0.7",
                     "0008|0018": f"{uid}.{i + 1}"}.items():
            sl.SetMetaData(k, v)
        w.SetFileName(str(folder / f"s{i:03d}.dcm"))
        w.Execute(sl)
    if truncate is not None:
        f = folder / f"s{truncate:03d}.dcm"
        os.truncate(f, f.stat().st_size - 60)
    return folder


@pytest.mark.parametrize("kind,zs,truncate,words", [
    ("one position", [3] * 5, None, "sit at the same position"),
    ("two at one position", [0, 2, 2, 4, 6], None, "2 slices of the series sit at the same position"),
    ("a slice missing", [0, 2, 4, 8, 10], None, "unevenly spaced"),
    ("a truncated slice", [0, 2, 4, 6, 8], 2, "cannot be read as part of a series"),
])
def test_broken_dicom_series_are_refused(tmp_path, kind, zs, truncate, words):
    from napari_meddift.io.volume import read_volume

    with pytest.raises(MedDiftError, match=words) as e:
        read_volume(_dicom_series(tmp_path / "d", zs, truncate))
    assert "\n" not in str(e.value)


def test_sound_dicom_series_reads(tmp_path):
    from napari_meddift.io.volume import read_volume

    vol = read_volume(_dicom_series(tmp_path / "d", [0, 2.5, 5, 7.5, 10]))
    assert vol.shape == (5, 8, 9) and vol.spacing == pytest.approx((2.5, 0.7, 0.7))


# ---------------------------------------------------------------- bounds, sizes, special files


BAD_OPTIONS = [
    (["extract", "ct.nii.gz", "-o", "s.zarr", "--seed", str(2**70)], "--seed must be in [0, 4294967295]"),
    (["extract", "ct.nii.gz", "-o", "s.zarr", "--seed=-1"], "--seed must be in"),
    (["extract", "ct.nii.gz", "-o", "s.zarr", "--samples", "1000"], "--samples must be in [1, 64]"),
    (["extract-many", "ct.nii.gz", "-o", "out", "--samples", "0"], "--samples must be in [1, 64]"),
    (["extract-many", "ct.nii.gz", "-o", "out", "--samples", "1000"], "--samples must be in [1, 64]"),
    (["extract-many", "ct.nii.gz", "-o", "out", "--seed", str(2**70)], "--seed must be in"),
    (["extract-many", "ct.nii.gz", "-o", "out", "--timestep", "5000"], "--timestep must be in [0, 999]"),
    (["extract-many", "ct.nii.gz", "-o", "out", "--timestep=-1"], "--timestep must be in [0, 999]"),
    (["extract-many", "ct.nii.gz", "-o", "out", "--workers", "0"], "--workers must be in [1, 256]"),
    (["extract-many", "ct.nii.gz", "-o", "out", "--threads", "0"], "--threads must be in"),
    (["extract-many", "ct.nii.gz", "-o", "out", "--retries=-1"], "--retries must be in [0, 10]"),
    (["extract-many", "ct.nii.gz", "-o", "out", "--scheduler", "not-an-address"], "is not a Dask scheduler address"),
    (["extract-many", "ct.nii.gz", "-o", "out", "--scheduler", ""], "is not a Dask scheduler address"),
    (["extract-many", "ct.nii.gz", "-o", "out", "--scheduler", "foo://x:1"], "is not a Dask scheduler address"),
    (
        ["register", "a.zarr", "b.zarr", "-o", "f.nii.gz", "--iterations", "100000000"],
        "--iterations must be in [0, 5000]",
    ),
    (["register", "a.zarr", "b.zarr", "-o", "f.nii.gz", "--smoothness", "inf"], "--smoothness must be a finite number"),
    (["register", "a.zarr", "b.zarr", "-o", "f.nii.gz", "--smoothness", "nan"], "--smoothness must be a finite number"),
    (
        ["register", "a.zarr", "b.zarr", "-o", "f.nii.gz", "--grid-spacing", "100000"],
        "--grid-spacing must be in [1, 32]",
    ),
    (["register", "a.zarr", "b.zarr", "-o", "f.nii.gz", "--search-step", "0"], "--search-step must be in"),
    (["train-mini", "--data", "d", "--out", "w.pt", "--lr", "5"], "--lr must be in"),
    (["train-mini", "--data", "d", "--out", "w.pt", "--minutes", "1e9"], "--minutes must be in"),
    (["train-mini", "--data", "d", "--out", "w.pt", "--crop", "100000"], "--crop must be in [16, 512]"),
    (["train-mini", "--data", "d", "--out", "w.pt", "--batch", "100000"], "--batch must be in"),
    (["train-mini", "--data", "d", "--out", "w.pt", "--seed=-1"], "--seed must be in"),
    (["build-demo", "--seed=-1"], "--seed must be in"),
]


@pytest.mark.parametrize("argv,words", BAD_OPTIONS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_OPTIONS])
def test_every_numeric_option_is_bounded_before_work(tmp_path, capsys, monkeypatch, argv, words):
    import napari_meddift.batch.cluster as cluster

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cluster, "connect", lambda *a, **k: pytest.fail("a cluster was started"))
    err = _cli_error(capsys, argv)
    assert words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, not even the output folder


def test_fifos_are_refused_as_inputs(tmp_path, small_pair, capsys):
    from napari_meddift.io import store as S
    from napari_meddift.io.landmarks import read_points
    from napari_meddift.io.volume import read_volume

    fifo = tmp_path / "ct.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(MedDiftError, match="is a pipe"):
        read_volume(fifo)
    with pytest.raises(MedDiftError, match="is a pipe"):
        read_points(fifo)
    err = _cli_error(capsys, ["evaluate", tmp_path / "p.csv", tmp_path / "p.csv", "--image", fifo])
    assert "is a pipe" in err
    err = _cli_error(capsys, ["match", small_pair / "src.zarr", small_pair / "tgt.zarr", "--points", fifo,
                              "-o", tmp_path / "m.csv"])
    assert "is a pipe" in err
    store = tmp_path / "s.zarr"
    store.mkdir()
    os.mkfifo(store / "zarr.json")
    with pytest.raises(MedDiftError, match="is a pipe"):
        S.open_store(store)


def test_match_refuses_runs_that_would_take_hours(small_pair, capsys, tmp_path, monkeypatch):
    from napari_meddift.cli import match as M

    pts = tmp_path / "p.csv"
    pts.write_text("2,3,4\n" * 12)
    monkeypatch.setattr(M, "MAX_POINTS", 10)
    monkeypatch.setattr(M, "MAX_GLOBAL_POINTS", 5)
    base = ["match", small_pair / "src.zarr", small_pair / "tgt.zarr", "--points", pts, "-o", tmp_path / "m.csv"]
    assert "holds 12 points; more than 10 points would take hours" in _cli_error(capsys, base)
    assert "more than 5 global searches" in _cli_error(capsys, base + ["--global"])
    from napari_meddift.cli import main

    assert main([str(a) for a in base + ["--no-size-limit", "--radius", "1"]]) == 0
    assert len((tmp_path / "m.csv").read_text().splitlines()) == 13


def test_points_outside_the_image_are_not_extrapolated_by_register(small_pair, capsys, tmp_path):
    pts = tmp_path / "p.csv"
    pts.write_text("2,3,4\n40,3,4\n")
    err = _cli_error(capsys, _register(small_pair, "-o", tmp_path / "f.nii.gz", "--points", pts,
                                       "--matched", tmp_path / "m.csv"))
    assert "point 2 at x,y,z = (40, 3, 4) lies outside the source image" in err
    assert not (tmp_path / "f.nii.gz").exists()


def test_evaluate_mask_of_another_shape_is_refused(small_pair, capsys, tmp_path):
    from napari_meddift.io.volume import Volume, write_volume

    write_volume(Volume(np.ones((5, 5, 5), np.float32)), tmp_path / "mask.nii.gz")
    pts = tmp_path / "p.csv"
    pts.write_text("2,3,4\n10,12,11\n")
    err = _cli_error(capsys, ["evaluate", pts, pts, "--image", small_pair / "src.nii.gz", "--mask",
                              tmp_path / "mask.nii.gz", "--json"])
    assert "--mask" in err and "give the mask of the truth image" in err
    err = _cli_error(capsys, ["evaluate", pts, pts, "--spacing", "1,1,1", "--mask", tmp_path / "mask.nii.gz", "--json"])
    assert "1 point(s)" in err and "lie outside --mask" in err


def test_a_full_disk_leaves_no_lock_held(tmp_path, monkeypatch):
    """The pid written into the lock file fails with ENOSPC: the lock is still held and released,
    and the next writer in the same process does not wait for its own leaked lock."""
    import errno

    from napari_meddift.io import locking

    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locking.os, "write", full)
    with locking.StoreLock(tmp_path / "s.zarr", timeout=0.5):
        other = locking.StoreLock(tmp_path / "s.zarr", timeout=0.2)
        with pytest.raises(MedDiftError, match="is writing"):
            other.acquire()  # held while inside
    monkeypatch.setattr(locking.os, "write", real_write)
    with locking.StoreLock(tmp_path / "s.zarr", timeout=0.2):  # released: no 300 s wait on our own lock
        pass
    _lock_is_free(tmp_path / "s.zarr")


# ---------------------------------------------------------------- tracebacks that are one line now


@pytest.mark.parametrize("kind", ["constant", "2D", "-inf", "truncated"])
def test_build_demo_refuses_bad_scans_in_one_line(tmp_path, capsys, kind):
    import SimpleITK as sitk

    arr = np.random.default_rng(0).normal(-500, 300, (20, 24, 28)).astype(np.float32)
    ct = tmp_path / "ct.nii.gz"
    if kind == "constant":
        arr[:] = -1000
    elif kind == "-inf":
        arr[3, 4, 5] = -np.inf
    img = sitk.GetImageFromArray(arr[0] if kind == "2D" else arr)
    sitk.WriteImage(img, str(ct))
    if kind == "truncated":
        ct.write_bytes(ct.read_bytes()[:2000])
    err = _cli_error(capsys, ["build-demo", "--ct", ct, "--out", tmp_path / "demo"])
    assert {"constant": "constant", "2D": "2D", "-inf": "NaN/inf", "truncated": "truncated"}[kind] in err, err
    assert not (tmp_path / "demo").exists()


def test_train_mini_plot_name_is_checked_before_training(tmp_path, capsys):
    err = _cli_error(
        capsys, ["train-mini", "--data", tmp_path, "--out", tmp_path / "w.pt", "--plot", tmp_path / "p.txt"]
    )
    assert "--plot" in err and ".png" in err


def test_mini_weights_json_with_an_unknown_key_is_one_line(tmp_path):
    import json
    import shutil

    from napari_meddift.backbones import get_backbone
    from napari_meddift.backbones.mini import DEFAULT_WEIGHTS

    src = Path(DEFAULT_WEIGHTS)
    shutil.copy(src, tmp_path / "w.pt")
    meta = json.loads(src.with_suffix(".json").read_text())
    meta["arch"]["not_a_parameter"] = 3
    (tmp_path / "w.json").write_text(json.dumps(meta))
    with pytest.raises(MedDiftError, match="unknown key.*not_a_parameter"):
        get_backbone("mini", weights=tmp_path / "w.pt")


def test_evaluate_json_has_no_nan_tokens(tmp_path, capsys):
    """An empty region (no truth point outside the mask) is n = 0 with null statistics, valid JSON."""
    import json

    from napari_meddift.cli import main
    from napari_meddift.io.volume import Volume, write_volume

    write_volume(Volume(np.ones((6, 6, 6), np.float32)), tmp_path / "mask.nii.gz")
    pts = tmp_path / "p.csv"
    pts.write_text("2,3,4\n1,2,3\n")
    assert main(["evaluate", str(pts), str(pts), "--spacing", "1,1,1", "--mask", str(tmp_path / "mask.nii.gz"),
                 "--json"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out
    regions = json.loads(out)["regions"]
    assert regions["outside lung mask"]["n"] == 0 and regions["inside lung mask"]["n"] == 2


def test_a_store_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_disk):
    from napari_meddift.io import store as S

    lv = {"up0": np.random.default_rng(0).standard_normal((8, 32, 32, 32)).astype(np.float32)}  # 512 kB
    with pytest.raises(MedDiftError, match="check free disk space") as e:
        S.write_store(tiny_disk / "s.zarr", lv, _store_attrs())
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tiny_disk.iterdir() if p.suffix != ".lock") == []  # no partial
    _lock_is_free(tiny_disk / "s.zarr")  # the empty lock file may stay (filelock), never held


def test_learn2reg_mask_of_another_shape_is_one_line(shared_data, tmp_path):
    """A lung mask of another shape used to give keypoints ``"n": 0`` and NaN tokens in the JSON."""
    import shutil

    import SimpleITK as sitk

    from napari_meddift.evaluation.l2r import evaluate_l2r

    labels = shared_data / "landmarks" / "learn2reg_lungct"
    root = tmp_path / "l2r"
    (root / "imagesTr").mkdir(parents=True)
    for sub in ("landmarksTr", "keypointsTr"):
        shutil.copytree(labels / sub, root / sub)
    shutil.copy(labels / "LungCT_VAL_evaluation_config.json", root)
    (root / "masksTr").mkdir()
    for cid in ("0001", "0002", "0003"):
        ref = sitk.ReadImage(str(labels / "masksTr" / f"LungCT_{cid}_0000.nii.gz"))
        for suffix in ("0000", "0001"):
            sitk.WriteImage(ref, str(root / "imagesTr" / f"LungCT_{cid}_{suffix}.nii.gz"))
        small = sitk.GetImageFromArray(np.ones((20, 20, 20), np.uint8))  # the mask of something else
        sitk.WriteImage(small, str(root / "masksTr" / f"LungCT_{cid}_0000.nii.gz"))
    with pytest.raises(MedDiftError, match="is 20x20x20 \\(x,y,z\\) but .* give the mask of the fixed image") as e:
        evaluate_l2r(root, "identity", cases=[1], out_dir=tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out" / "l2r_identity.json").exists()


def _lock_is_free(store_path):
    """Nobody holds the store's lock: it is taken at once (the empty lock file itself may stay)."""
    from napari_meddift.io.locking import StoreLock

    with StoreLock(store_path, timeout=0):
        pass
