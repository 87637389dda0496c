"""What every diffusion backbone does the same way, written once.

* :func:`check_request`: validation of the requested levels, timestep (the range comes from the
  backbone's scheduler) and number of noise samples (at least 1, refused otherwise, never clamped);
* :func:`seeded`: seeded construction without touching the global RNG (a forked RNG);
* :func:`capture_levels`: noising at the timestep with the scheduler's own ``add_noise``
  (noise drawn on the CPU from a private generator, so a seed gives the same draw on any
  device), one network pass per noise sample with forward hooks on the level modules, and the
  average over samples.

A diffusion backbone then only says which network runs, which modules are its levels and how
its input ``x0`` is prepared (image for mini, autoencoder latent for MAISI).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..errors import MedDiftError
from ..progress import ProgressCallback
from .base import ExtractionSettings


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded by ``seed``; the caller's RNG state is restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def noise_generator(seed: int) -> torch.Generator:
    """The private CPU generator every noise draw of one extraction comes from."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def check_request(
    settings: ExtractionSettings,
    level_names: Sequence[str],
    default_levels: Sequence[str],
    scheduler: Any,
    backbone: str,
) -> tuple[str, ...]:
    """The levels to extract; MedDiftError for an unknown level, a timestep outside
    ``0 .. scheduler.num_train_timesteps - 1`` or fewer than one noise sample."""
    levels = tuple(settings.levels) if settings.levels is not None else tuple(default_levels)
    bad = [lv for lv in levels if lv not in level_names]
    if bad or not levels:
        raise MedDiftError(
            f"{backbone} has no level(s) {', '.join(bad) or '(none given)'}; available: {', '.join(level_names)}"
        )
    steps = int(scheduler.num_train_timesteps)
    if int(settings.timestep) != settings.timestep or not 0 <= int(settings.timestep) < steps:
        raise MedDiftError(f"timestep must be in 0..{steps - 1} for {backbone}, got {settings.timestep}")
    if int(settings.samples) < 1:
        raise MedDiftError(f"samples (noise draws averaged) must be at least 1, got {settings.samples}")
    return levels


class _AllCaptured(Exception):
    """Raised by the last level's hook: the forward pass stops once every level is captured."""


def capture_levels(
    run: Callable[[torch.Tensor, torch.Tensor], Any],
    modules: Mapping[str, torch.nn.Module],
    levels: Sequence[str],
    x0: torch.Tensor,
    scheduler: Any,
    settings: ExtractionSettings,
    dtype: torch.dtype = torch.float32,
    progress: ProgressCallback | None = None,
    done: int = 0,
    total: int | None = None,
    label: str = "",
) -> dict[str, torch.Tensor]:
    """Average over ``settings.samples`` noise draws of the outputs of ``modules[level]``.

    ``run``: ``run(x_t, timesteps)`` calls the network once (with its conditioning).
    ``modules``: level name -> module whose forward output is that level.
    ``levels``: the levels to capture (validated with :func:`check_request`).
    ``x0``: clean network input (1, C, a, b, c) on the device the network runs on.
    ``scheduler``: a MONAI scheduler; ``scheduler.add_noise(x0, noise, timesteps)`` noises.
    ``settings``: timestep, seed, samples.
    ``dtype``: autocast dtype; float32 runs without autocast.
    ``progress``: called with ``(done + i + 1, total, message)`` after noise sample i.
    ``done``, ``total``: progress steps before this call, and in the whole extraction
    (default ``done + samples``).

    Returns {level: tensor (C, a', b', c') float32} on ``x0``'s device: the mean over the samples of
    the batch's first item. The forward pass stops as soon as the last requested level is
    captured (the decoder blocks after it and the output head never run). Hooks are removed
    even when ``progress`` raises.
    """
    samples = int(settings.samples)
    total = done + samples if total is None else total
    device = x0.device
    gen = noise_generator(settings.seed)
    timesteps = torch.full((x0.shape[0],), int(settings.timestep), dtype=torch.long, device=device)
    autocast = (
        torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    )
    captured: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            captured[name] = output.detach()
            if len(captured) == len(levels):
                raise _AllCaptured  # the rest of the network would only cost time and memory

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in levels]
    try:
        for i in range(samples):
            noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(device=device, dtype=x0.dtype)
            with torch.inference_mode():
                xt = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=timesteps)
                captured.clear()
                try:
                    with autocast:
                        run(xt, timesteps)
                except _AllCaptured:
                    pass
                for name in levels:
                    f = captured[name][0].float()
                    sums[name] = f if name not in sums else sums[name] + f
            captured.clear()
            if progress is not None:
                prefix = f"{label}: " if label else ""
                progress(done + i + 1, total, f"{prefix}noise sample {i + 1}/{samples} at t={settings.timestep}")
    finally:
        for h in handles:
            h.remove()
        captured.clear()
    return {name: sums[name] / samples for name in levels}
