"""train-mini's data (scans, spacings, crops) and its resumable state."""

import csv

import numpy as np
import pytest
import torch

from napari_meddift.errors import MedDiftError
from napari_meddift.training.data import DEMO_SOURCE, CropSampler, training_files, training_spacings
from napari_meddift.training.mini import train_mini
from napari_meddift.training.state import state_path


def _synthetic_data(root):
    import SimpleITK as sitk

    ct = root / "ct"
    ct.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.nii.gz", "b.nii.gz", DEMO_SOURCE):
        img = sitk.GetImageFromArray(rng.normal(-500, 300, (20, 24, 24)).astype(np.int16))
        img.SetSpacing((3.0, 3.0, 3.0))
        sitk.WriteImage(img, str(ct / name))
    return root


def test_the_demo_scan_is_never_a_training_scan(tmp_path):
    data = _synthetic_data(tmp_path / "data")
    assert [p.name for p in training_files(data, hold_out=())] == ["a.nii.gz", "b.nii.gz"]
    assert [p.name for p in training_files(data, hold_out=("b.nii.gz",))] == ["a.nii.gz"]
    with pytest.raises(MedDiftError, match="no training CTs left"):
        training_files(data, hold_out=("a.nii.gz", "b.nii.gz"))


def test_training_spacings():
    assert training_spacings(2.5, (2.0, 3.0)) == [2.0, 2.25, 2.5, 2.75, 3.0]
    assert training_spacings(2.5, None) == [2.5]


def test_crops_use_every_spacing_flip_and_jitter():
    """A constant image 0.5 at one spacing and -0.5 at the other: every crop is one of the two,
    scaled by a in [0.95, 1.05] and shifted by b in [-0.03, 0.03]; both spacings are drawn."""
    scans = [[np.full((40, 40, 40), 0.5, np.float32), np.full((24, 24, 24), -0.5, np.float32)]]
    sampler = CropSampler(scans, crop=32, rng=np.random.default_rng(0), jitter_scale=0.05, jitter_shift=0.03)
    batch = sampler.batch(40)
    assert batch.shape == (40, 1, 32, 32, 32) and batch.dtype == torch.float32
    seen_pos = seen_neg = 0
    for crop in batch[:, 0]:
        inside = crop[crop > -0.9]  # the small scan is padded with air (-1, jittered too) to the crop size
        values = inside.unique()
        assert len(values) == 1, "one jitter per crop"
        v = float(values[0])
        if v > 0:
            seen_pos += 1
            assert 0.5 * 0.95 - 0.03 - 1e-6 <= v <= 0.5 * 1.05 + 0.03 + 1e-6
        else:
            seen_neg += 1
            assert -0.5 * 1.05 - 0.03 - 1e-6 <= v <= -0.5 * 0.95 + 0.03 + 1e-6
    assert seen_pos and seen_neg
    assert len({round(float(c[c > -0.9][0]), 6) for c in batch[:, 0]}) > 10, "the jitter varies"


def _losses(csv_path):
    with open(csv_path, newline="") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def test_resume_continues_the_same_run(tmp_path):
    """2 steps, stop, resume to 3 == 3 steps in one go (losses, weights); other options are refused."""
    data = _synthetic_data(tmp_path / "data")
    kw = dict(minutes=5, crop=32, batch=2, progress=False, precision="fp32", spacing_range=None)
    one_go, resumed = tmp_path / "a" / "w.pt", tmp_path / "b" / "w.pt"
    train_mini(data, one_go, max_steps=3, **kw)
    first = train_mini(data, resumed, max_steps=2, **kw)
    assert first["steps"] == 2 and state_path(resumed).is_file()
    meta = train_mini(data, resumed, max_steps=3, resume=True, **kw)
    assert meta["steps"] == 3 and meta["complete"] is True
    # the learning rate follows the time spent (cosine over the budget), so the runs' updates differ
    # by a hair; the same crops and noise (the random generators were restored) give the same losses
    ref, got = _losses(one_go.with_suffix(".loss.csv")), _losses(resumed.with_suffix(".loss.csv"))
    assert [r[0] for r in got] == [r[0] for r in ref] == [1, 2, 3]
    assert np.allclose([float(r[1]) for r in got], [float(r[1]) for r in ref], rtol=1e-4, atol=0)
    a, b = torch.load(one_go, weights_only=True), torch.load(resumed, weights_only=True)
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-2, atol=1e-3) for k in a)
    with pytest.raises(MedDiftError, match="trained with other crop"):
        train_mini(data, resumed, **{**kw, "crop": 64}, max_steps=4, resume=True)
    with pytest.raises(MedDiftError, match="no training state"):
        train_mini(data, tmp_path / "c" / "w.pt", max_steps=1, resume=True, **kw)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_run_keeps_its_state(tmp_path, monkeypatch, how):
    """Ctrl-C (or timeout -s INT on a lent GPU), or SIGTERM (kill, a scheduler's limit: background
    jobs ignore SIGINT) after two steps: one line, the state saved, --resume goes on."""
    import os
    import signal

    from napari_meddift.training import data as training_data

    data = _synthetic_data(tmp_path / "data")
    kw = dict(minutes=5, crop=32, batch=2, progress=False, precision="fp32", spacing_range=None)
    out = tmp_path / "w" / "w.pt"
    calls = []
    real_batch = training_data.CropSampler.batch

    def batch_then_interrupt(self, n):
        calls.append(n)
        if len(calls) == 3:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # the training's handler turns it into an interrupt
            else:
                raise KeyboardInterrupt
        return real_batch(self, n)

    terms = []  # without the training's own handler, SIGTERM would land here and training go on
    def sentinel(*_):
        terms.append(1)

    handler = signal.signal(signal.SIGTERM, sentinel)
    monkeypatch.setattr(training_data.CropSampler, "batch", batch_then_interrupt)
    with pytest.raises(MedDiftError, match="interrupted at step 2; the state is saved"):
        train_mini(data, out, max_steps=5, **kw)
    monkeypatch.undo()
    try:
        assert terms == [] and signal.getsignal(signal.SIGTERM) is sentinel  # the one before training is back
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert [r[0] for r in _losses(out.with_suffix(".loss.csv"))] == [1, 2]
    meta = train_mini(data, out, max_steps=3, resume=True, **kw)
    assert meta["steps"] == 3 and [r[0] for r in _losses(out.with_suffix(".loss.csv"))] == [1, 2, 3]
