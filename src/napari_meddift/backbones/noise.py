"""The noise schedules of the diffusion backbones, as MONAI schedulers.

* DDPM (MAISI's DDPM releases and mini): 1000 steps, ``scaled_linear_beta`` from 0.0015 to
  0.0195: alpha_bar(20) = 0.967, so the noise added at the default t=20 has standard deviation
  sqrt(1 - 0.967) = 0.18.
* Rectified flow (MAISI's rectified-flow releases): MONAI's ``RFlowScheduler`` with the
  releases' settings (1000 steps, continuous timesteps, timestep transform, uniform sampling,
  scale 1.4). Its ``add_noise`` is ``x_t = (1 - t/1000) x_0 + (t/1000) eps``: at t=20 the image
  keeps 0.98 of its amplitude and the noise has standard deviation 0.02.

The two schedules mean different things by the same t. What the network sees is set by the
noise/signal ratio b/a of ``x_t = a x_0 + b eps``: :func:`noise_signal` reads it from a
scheduler's own ``add_noise``, and :func:`operating_timestep` finds the timestep of any scheduler
at the paper's operating point, DDPM t = 20 (noise/signal 0.184): 20 for DDPM, 155 for rectified
flow. That is each diffusion backbone's default timestep (``default_timestep``).
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache

import torch

from ..errors import MedDiftError

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.0015
BETA_END = 0.0195


def make_scheduler():
    """A fresh MONAI DDPMScheduler with the training schedule."""
    from monai.networks.schedulers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        schedule="scaled_linear_beta",
        beta_start=BETA_START,
        beta_end=BETA_END,
        clip_sample=False,
    )


def make_rflow_scheduler():
    """A fresh MONAI RFlowScheduler configured as MAISI's rectified-flow releases are."""
    from monai.networks.schedulers import RFlowScheduler

    return RFlowScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        use_discrete_timesteps=False,
        use_timestep_transform=True,
        sample_method="uniform",
        scale=1.4,
    )


@lru_cache(maxsize=1)
def _alphas_cumprod() -> torch.Tensor:
    return make_scheduler().alphas_cumprod.to(torch.float64)


def _check_t(t: int) -> int:
    t = int(t)
    if not 0 <= t < NUM_TRAIN_TIMESTEPS:
        raise MedDiftError(f"timestep must be in 0..{NUM_TRAIN_TIMESTEPS - 1}, got {t}")
    return t


def noise_level(t: int) -> tuple[float, float]:
    """(alpha_bar, noise std) at timestep t: x_t = sqrt(alpha_bar) x_0 + std * eps."""
    ab = float(_alphas_cumprod()[_check_t(t)])
    return ab, math.sqrt(1.0 - ab)


def add_noise(latent: torch.Tensor, t: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise ``latent`` to timestep t (the forward diffusion q(x_t | x_0)).

    The noise is drawn on the CPU from ``generator`` so a seed gives the same draw on any device.
    """
    t = _check_t(t)
    noise = torch.randn(latent.shape, generator=generator, dtype=torch.float32, device="cpu")
    noise = noise.to(device=latent.device, dtype=latent.dtype)
    timesteps = torch.full((latent.shape[0],), t, dtype=torch.long, device=latent.device)
    return make_scheduler().add_noise(original_samples=latent, noise=noise, timesteps=timesteps)


# ---------------------------------------------------------------- noise/signal across schedules

#: the MedDIFT paper's operating point: timestep 20 of the DDPM schedule above
PAPER_TIMESTEP = 20


def _coefficients(scheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of ``x_t = a x_0 + b eps`` at each of ``timesteps``, read from ``add_noise`` itself
    (on a copy: MONAI's DDPM ``add_noise`` moves its table to the input's dtype and device)."""
    sched = copy.deepcopy(scheduler)
    shape = (len(timesteps), 1, 1, 1, 1)
    one = torch.ones(shape, dtype=torch.float64)
    zero = torch.zeros(shape, dtype=torch.float64)
    a = sched.add_noise(original_samples=one, noise=zero, timesteps=timesteps).reshape(-1)
    b = sched.add_noise(original_samples=zero, noise=one, timesteps=timesteps).reshape(-1)
    return a.double(), b.double()


def noise_coefficients(scheduler, t: float) -> tuple[float, float]:
    """(signal a, noise b) of ``x_t = a x_0 + b eps`` at timestep ``t``, from ``add_noise``."""
    ts = torch.tensor([t], dtype=torch.long if float(t) == int(t) else torch.float32)
    a, b = _coefficients(scheduler, ts)
    return float(a[0]), float(b[0])


def noise_signal(scheduler, t: float) -> float:
    """Noise/signal ratio b/a of ``scheduler.add_noise`` at timestep ``t`` (an integer for DDPM;
    rectified flow also takes fractional t). DDPM: sqrt(1 - alpha_bar) / sqrt(alpha_bar);
    rectified flow: (t/1000) / (1 - t/1000)."""
    a, b = noise_coefficients(scheduler, t)
    return b / a if a > 0 else math.inf


def noise_signal_table(scheduler) -> torch.Tensor:
    """Noise/signal at every integer timestep 0 .. num_train_timesteps - 1 (float64)."""
    a, b = _coefficients(scheduler, torch.arange(int(scheduler.num_train_timesteps), dtype=torch.long))
    return b / a


def equivalent_timestep(scheduler, ratio: float) -> int:
    """The integer timestep of ``scheduler`` whose noise/signal is nearest ``ratio`` (in log
    ratio; the extractions pass integer timesteps to every scheduler)."""
    table = noise_signal_table(scheduler)
    with torch.no_grad():
        dist = (torch.log(table.clamp_min(1e-300)) - math.log(ratio)).abs()
    return int(torch.argmin(dist))


@lru_cache(maxsize=1)
def paper_noise_signal() -> float:
    """Noise/signal of the paper's operating point, DDPM t = 20 (0.184)."""
    return noise_signal(make_scheduler(), PAPER_TIMESTEP)


def operating_timestep(scheduler) -> int:
    """The timestep of ``scheduler`` with the noise/signal of DDPM t = 20: 20 for the DDPM
    schedule, 155 for MAISI's rectified flow (solved from the scheduler, not written down)."""
    return equivalent_timestep(scheduler, paper_noise_signal())


def schedule_name(backbone: str | None, config=None) -> str | None:
    """``ddpm`` | ``rflow`` for a diffusion backbone (by name and ``config``, as a store records
    them); None for one without a noise schedule (MIND-SSC)."""
    name = str(backbone or "").lower()
    if name == "maisi":
        return "rflow" if dict(config or {}).get("variant") == "rflow" else "ddpm"
    if name == "mini":
        return "ddpm"
    return None


SCHEDULE_TITLES = {"ddpm": "DDPM", "rflow": "rectified flow"}


def schedule_scheduler(schedule: str):
    """A fresh scheduler of ``schedule`` (``ddpm`` or ``rflow``)."""
    if schedule == "rflow":
        return make_rflow_scheduler()
    if schedule == "ddpm":
        return make_scheduler()
    raise MedDiftError(f"unknown noise schedule {schedule!r}; use ddpm or rflow")
