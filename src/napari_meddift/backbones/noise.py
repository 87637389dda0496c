"""The noise schedules of the diffusion backbones, as MONAI schedulers.

* DDPM (MAISI's DDPM releases and mini): 1000 steps, ``scaled_linear_beta`` from 0.0015 to
  0.0195: alpha_bar(20) = 0.967, so the noise added at the default t=20 has standard deviation
  sqrt(1 - 0.967) = 0.18.
* Rectified flow (MAISI's rectified-flow releases): MONAI's ``RFlowScheduler`` with the
  releases' settings (1000 steps, continuous timesteps, timestep transform, uniform sampling,
  scale 1.4). Its ``add_noise`` is ``x_t = (1 - t/1000) x_0 + (t/1000) eps``: at t=20 the image
  keeps 0.98 of its amplitude and the noise has standard deviation 0.02.
"""

from __future__ import annotations

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
