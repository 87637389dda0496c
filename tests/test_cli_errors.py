"""Every CLI failure is one ``meddift: error:`` line and exit 2, found before any long work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_meddift.cli import main
from napari_meddift.errors import MedDiftError, is_out_of_memory, out_of_memory_message
from napari_meddift.io import store as S

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    import SimpleITK as sitk

    folder = tmp_path_factory.mktemp("scan")
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(-500, 300, (24, 28, 32)).astype(np.int16))
    img.SetSpacing((1.5, 1.5, 2.0))
    sitk.WriteImage(img, str(folder / "scan.nii.gz"))
    return folder / "scan.nii.gz"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stores")
    rng = np.random.default_rng(0)
    attrs = {"image_shape": (24, 28, 32), "spacing": (2.0, 1.5, 1.5)}
    lv = {n: rng.standard_normal((4, 6, 7, 8)).astype(np.float32) for n in ("up0", "up1")}
    S.write_store(folder / "a.zarr", lv, attrs)
    S.write_store(folder / "b.zarr", lv, attrs)
    S.write_store(folder / "c.zarr", {**lv, "up2": lv["up0"]}, attrs)
    pts = folder / "pts.csv"
    pts.write_text("3,4,5\n10,11,12\n")
    return folder


def one_error_line(capsys, code) -> str:
    """Exit 2 and exactly one stderr line, 'meddift: error: ...', no traceback; returns it."""
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, out
    assert len(lines) == 1 and lines[0].startswith("meddift: error: "), lines
    assert "Traceback" not in out.err
    return lines[0]


def _make_train_data(root: Path, corrupt: bool = False) -> Path:
    import SimpleITK as sitk

    ct = root / "data" / "ct"
    ct.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(-500, 300, (12, 20, 20)).astype(np.int16))
    img.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(img, str(ct / "a.nii.gz"))
    if corrupt:  # damage the compressed stream in the middle: a CRC/zlib error on reading
        data = bytearray((ct / "a.nii.gz").read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 40):
            data[i] ^= 0xFF
        (ct / "a.nii.gz").write_bytes(bytes(data))
    return root / "data"


# -------------------------------------------------------------------- before any work


def test_extract_checks_the_output_before_reading_the_scan(tmp_path, capsys):
    # the scan does not exist: an error about it would mean the output was checked too late
    line = one_error_line(capsys, main(["extract", str(tmp_path / "missing.nii.gz"), "-o", "/proc/x.zarr"]))
    assert "cannot write in /proc" in line
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    line = one_error_line(capsys, main(["extract", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "mine")]))
    assert "not a napari-meddift descriptor store; refusing to replace it" in line
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"
    (tmp_path / "f.zarr").write_text("x")
    line = one_error_line(
        capsys, main(["extract", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "f.zarr" / "s.zarr")])
    )
    assert "is a file, not a folder" in line


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--samples", "0"], "--samples must be in [1, 64]"),
        (["--timestep", "1000"], "--timestep must be in [0, 999]"),
        (["--levels", "7"], "level index 7 is out of range"),
        (["--backbone", "nope"], "unknown backbone 'nope'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--samples", "x"], "argument --samples: invalid int value"),
    ],
)
def test_extract_argument_errors(extra, needle, tmp_path, capsys):
    line = one_error_line(
        capsys, main(["extract", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o.zarr"), *extra])
    )
    assert needle in line
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("cmd", ["extract", "match"])
def test_cuda_without_gpu_before_work(cmd, tmp_path, capsys, stores):
    argv = (["extract", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o.zarr")] if cmd == "extract" else
            ["match", str(stores / "a.zarr"), str(stores / "b.zarr"), "--points", str(stores / "pts.csv"),
             "-o", str(tmp_path / "m.csv")])
    assert "no CUDA GPU is visible" in one_error_line(capsys, main([*argv, "--device", "cuda"]))


def test_nan_nifti_is_refused_by_extract(tmp_path, capsys):
    import SimpleITK as sitk

    arr = np.full((16, 16, 16), np.nan, np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "nan.nii.gz"))
    line = one_error_line(capsys, main(["extract", str(tmp_path / "nan.nii.gz"), "-o", str(tmp_path / "o.zarr")]))
    assert "holds 4096 NaN/inf voxel value(s)" in line and not (tmp_path / "o.zarr").exists()


def test_match_errors(stores, tmp_path, capsys):
    base = ["match", str(stores / "a.zarr"), str(stores / "b.zarr"), "--points", str(stores / "pts.csv")]
    assert "is a folder; give a file name" in one_error_line(capsys, main([*base, "-o", str(tmp_path)]))
    assert "--radius must be >= 0" in one_error_line(
        capsys, main([*base, "-o", str(tmp_path / "m.csv"), "--radius", "-1"])
    )
    # a target with other levels: refused, not silently reduced to the common ones
    line = one_error_line(capsys, main(["match", str(stores / "a.zarr"), str(stores / "c.zarr"), "--points",
                                        str(stores / "pts.csv"), "-o", str(tmp_path / "m.csv")]))
    assert "different levels (source up0, up1; target up0, up1, up2)" in line and "--levels" in line
    assert main(["match", str(stores / "a.zarr"), str(stores / "c.zarr"), "--points", str(stores / "pts.csv"),
                 "-o", str(tmp_path / "m.csv"), "--levels", "up0,up1"]) == 0
    capsys.readouterr()  # the progress bar of that run
    # points outside, told in the file's x,y,z
    (tmp_path / "far.csv").write_text("3,4,5\n31,27,30\n")
    line = one_error_line(capsys, main([*base[:-1], str(tmp_path / "far.csv"), "-o", str(tmp_path / "m.csv")]))
    assert "point 2 at x,y,z = (31, 27, 30) lies outside the source image (x,y,z size 32x28x24" in line


def test_matcher_refuses_stores_with_other_levels(stores):
    from napari_meddift.matching import Matcher

    with pytest.raises(MedDiftError, match="target holds up0, up1, up2"):
        Matcher.from_stores(S.open_store(stores / "a.zarr"), S.open_store(stores / "c.zarr"))


def test_evaluate_and_check_errors(tmp_path, stores, capsys):
    (tmp_path / "p.csv").write_text("1,2,3\n")
    assert "--spacing must be three positive sizes" in one_error_line(
        capsys, main(["evaluate", str(tmp_path / "p.csv"), str(tmp_path / "p.csv"), "--spacing", "0,1,1"]))
    code = main(["check", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 2 and out.out.startswith(f"DAMAGED {tmp_path}: {tmp_path} is not a zarr v3 group")
    assert out.err.strip() == "meddift: error: 1 of 1 store(s) damaged; extract them again"
    assert main(["check", str(stores / "a.zarr")]) == 0


def test_demo_without_display_suggests_headless(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setattr(sys, "platform", "linux")
    assert "meddift demo --headless" in one_error_line(capsys, main(["demo"]))


def test_demo_cache_must_be_usable(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "--cache folder" in one_error_line(capsys, main(["demo", "--headless", "--cache", str(tmp_path / "file")]))
    assert "cannot write in /proc" in one_error_line(capsys, main(["demo", "--headless", "--cache", "/proc/meddift"]))
    assert "--radius must be >= 0" in one_error_line(capsys, main(["demo", "--headless", "--radius", "-2"]))


def test_evaluate_l2r_malformed_configs(tmp_path, capsys):
    root = tmp_path / "l2r"
    root.mkdir()
    cfg = root / "LungCT_dataset_evaluation_config.json"  # any *_evaluation_config.json is found
    for doc, needle in [
        ({"eval_pairs": {"fixed": "a"}}, "'eval_pairs' must be a non-empty list"),
        (
            {"eval_pairs": [{"moving": "imagesTr/LungCT_0001_0001.nii.gz"}]},
            "eval_pairs[0] needs text entries 'fixed' and 'moving'",
        ),
        ({"eval_pairs": [{"fixed": 3, "moving": "x"}]}, "eval_pairs[0] needs text entries"),
        ({"eval_pairs": [{"fixed": "a", "moving": "b"}], "expected_shape": "big"}, "'expected_shape' must be a list"),
    ]:
        cfg.write_text(json.dumps(doc))
        assert needle in one_error_line(capsys, main(["evaluate-l2r", "--root", str(root), "--backbone", "identity"]))
    (tmp_path / "out-file").write_text("x")
    line = one_error_line(capsys, main(["evaluate-l2r", "--root", str(root), "-o", str(tmp_path / "out-file")]))
    assert "-o/--out" in line and "is a file, not a folder" in line


# -------------------------------------------------------------------- train-mini


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--minutes", "-1"], "--minutes must be a positive number"),
        (["--minutes", "0"], "--minutes must be a positive number"),
        (["--crop", "7"], "--crop must be a whole number of voxels, a multiple of 8"),
        (["--crop", "16"], "and at least 32"),
        (["--spacing-range", "2.6", "3.0"], "--spacing-range 2.6 3.0 must hold --spacing 2.5"),
        (["--jitter", "0.05", "1.5"], "--jitter scale and shift must be in [0, 1)"),
        (["--resume"], "--resume: no training state"),
        (["--channels", "16", "30"], "--channels must be 2 to 6 multiples of 8, got 16 30"),
        (["--channels", "16", "32", "64", "--crop", "18"], "a multiple of 4 and at least 16, got 18"),
        (["--crop", "0"], "--crop must be"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--spacing", "0"], "--spacing (mm) must be a positive number"),
        (["--spacing", "-2.5"], "--spacing (mm) must be a positive number"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--max-steps", "0"], "--max-steps must be at least 1"),
    ],
)
def test_train_mini_argument_errors_leave_nothing(extra, needle, tmp_path, capsys):
    data = _make_train_data(tmp_path)
    out = tmp_path / "w" / "m.pt"
    assert needle in one_error_line(
        capsys, main(["train-mini", "--data", str(data), "--out", str(out), "--quiet", *extra])
    )
    assert not (tmp_path / "w").exists()


def test_train_mini_bad_outputs(tmp_path, capsys):
    data = _make_train_data(tmp_path)
    for out, needle in [(tmp_path / "m.json", "--out must name a .pt file"),
                        (Path("/proc/m.pt"), "cannot write in /proc"),
                        (tmp_path / "dir.pt", "is a folder")]:
        if out.name == "dir.pt":
            out.mkdir()
        assert needle in one_error_line(capsys, main(["train-mini", "--data", str(data), "--out", str(out), "--quiet"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "dir.pt"]


def test_train_mini_refuses_a_corrupt_scan_before_training(tmp_path, capsys):
    data = _make_train_data(tmp_path, corrupt=True)
    out = tmp_path / "w" / "m.pt"
    line = one_error_line(
        capsys, main(["train-mini", "--data", str(data), "--out", str(out), "--quiet", "--max-steps", "2"])
    )
    assert "a.nii.gz" in line and ("corrupt" in line or "truncated" in line)
    assert not (tmp_path / "w").exists()


def test_train_mini_without_a_finished_step_writes_nothing(tmp_path, capsys):
    data = _make_train_data(tmp_path)
    out = tmp_path / "w" / "m.pt"
    line = one_error_line(capsys, main(["train-mini", "--data", str(data), "--out", str(out), "--quiet",
                                        "--crop", "32", "--minutes", "1e-9"]))
    assert "no training step finished" in line
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert [p.name for p in (tmp_path / "w").iterdir()] == []  # no .partial, no .loss.csv


# -------------------------------------------------------------------- checkpoints


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['MEDDIFT_TEST_MARKER']}",))


def test_malicious_pickle_checkpoint_is_refused_in_one_line(tmp_path, scan, capsys, monkeypatch):
    from napari_meddift.io.hashing import file_sha256

    marker = tmp_path / "pwned"
    monkeypatch.setenv("MEDDIFT_TEST_MARKER", str(marker))
    evil = tmp_path / "evil.pt"
    torch.save({"up_blocks.0.weight": _Payload()}, evil)
    evil.with_suffix(".json").write_text(json.dumps({"sha256": file_sha256(evil)}))
    line = one_error_line(capsys, main(["extract", str(scan), "-o", str(tmp_path / "o.zarr"), "--weights", str(evil)]))
    assert "holds a Python object (" in line and "besides tensors" in line and "refusing it" in line
    assert "weights_only" not in line and not marker.exists()


def test_truncated_checkpoint_is_one_line(tmp_path):
    from napari_meddift.backbones.checkpoint import load_checkpoint

    good = tmp_path / "g.pt"
    torch.save({"w": torch.ones(1000)}, good)
    (tmp_path / "t.pt").write_bytes(good.read_bytes()[:300])
    with pytest.raises(MedDiftError, match="truncated or not a PyTorch checkpoint") as err:
        load_checkpoint(tmp_path / "t.pt")
    assert "\n" not in str(err.value)


# -------------------------------------------------------------------- memory


def test_is_out_of_memory_recognises_cpu_and_cuda_failures():
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                       "you tried to allocate 99 GB")
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    for exc in (MemoryError(), cpu, cuda, RuntimeError("CUDA error: out of memory"),
                RuntimeError("[Errno 12] Cannot allocate memory")):
        assert is_out_of_memory(exc), exc
    try:
        try:
            raise cuda
        except Exception as inner:
            raise ValueError("extraction failed") from inner
    except ValueError as chained:
        assert is_out_of_memory(chained)
    for exc in (RuntimeError("shape mismatch"), ValueError("bad"), OSError("disk full"), None):
        assert not is_out_of_memory(exc)
    assert "out of GPU memory" in out_of_memory_message(cuda) and "--device cuda" not in out_of_memory_message(cuda)
    assert "out of CPU memory" in out_of_memory_message(cpu) and "--device cuda" in out_of_memory_message(cpu)


@pytest.mark.parametrize(
    "exc, needle",
    [
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 80000000000 bytes"),
         "out of CPU memory; crop the scan"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "out of GPU memory; crop the scan"),
        (MemoryError(), "out of CPU memory"),
    ],
)
def test_out_of_memory_during_extraction_is_one_line(exc, needle, scan, tmp_path, capsys, monkeypatch):
    import napari_meddift.backbones.extraction as E

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(E, "extract_to_store", boom)
    assert needle in one_error_line(capsys, main(["extract", str(scan), "-o", str(tmp_path / "o.zarr")]))


def test_memory_estimate_refuses_up_front(scan, tmp_path, capsys, monkeypatch):
    import napari_meddift.backbones as B

    monkeypatch.setenv("MEDDIFT_MEMORY_LIMIT_GB", "0.2")
    monkeypatch.setattr(B, "get_backbone", lambda *a, **k: pytest.fail("model loaded before the memory check"))
    line = one_error_line(capsys, main(["extract", str(scan), "-o", str(tmp_path / "o.zarr")]))
    assert "extracting a 24x28x32 (z,y,x) scan, resampled to 19x17x19 for mini on CPU needs about" in line
    assert "but 0.2 GB is available; crop the scan" in line and "resample" in line and "--device cuda" in line


def test_memory_estimate_grows_with_size_and_matches_the_measured_peak():
    from napari_meddift.backbones.memory import GB, estimate_peak_bytes, network_voxels

    assert network_voxels("mini", (100, 100, 100)) == 96**3
    assert network_voxels("maisi", (192, 192, 208)) == 256**3
    # measured on a 2-core CPU (benchmarks/bench_memory.py, docs/reliability.md): mini 128^3 peaked at
    # 1.28 GB RSS; POPI (512x512x141) through `extract` on its 113x200x200 grid at 2.64 GB
    est = estimate_peak_bytes("mini", (128, 128, 128), "cpu")
    assert 1.28 * GB < est < 1.4 * 1.28 * GB
    popi = estimate_peak_bytes("mini", (113, 200, 200), "cpu", image_shape=(141, 512, 512))
    assert 2.64 * GB < popi < 1.4 * 2.64 * GB
    big = estimate_peak_bytes("mini", (400, 512, 512), "cpu")
    assert big > 24 * GB  # a 512x512x400 grid at --spacing native: refused on a 24 GB machine
    assert estimate_peak_bytes("maisi", (192, 192, 208), "cuda") < estimate_peak_bytes("maisi", (192, 192, 208), "cpu")


def test_console_script_usage_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "napari_meddift.cli", "extract"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "meddift: error: extract: the following arguments are required: image, -o/--output "
        "(see `meddift extract --help`)"
    ]


def test_api_refuses_zero_samples_before_work(tmp_path):
    from napari_meddift.backbones.base import ExtractionSettings
    from napari_meddift.backbones.extraction import extract_to_store
    from napari_meddift.io.volume import Volume

    class Backbone:
        name, level_names, default_levels, weights_hash = "fake", ("up0",), ("up0",), "x"

        def extract(self, *a, **k):
            pytest.fail("extracted with samples=0")

    with pytest.raises(MedDiftError, match="samples .* must be at least 1, got 0"):
        extract_to_store(Volume(np.zeros((8, 8, 8), np.float32)), Backbone(), ExtractionSettings(samples=0),
                         tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_garbage_checkpoint_is_not_called_a_pickle(tmp_path):
    from napari_meddift.backbones.checkpoint import load_checkpoint

    (tmp_path / "g.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MedDiftError, match="cannot read checkpoint .* truncated or not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "g.pt")
