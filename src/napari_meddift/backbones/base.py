"""What every descriptor source provides: named feature levels at native resolution.

The contract is :class:`Backbone`. Diffusion backbones (MAISI, mini) share one implementation of
validation, seeding, noising, forward-hook capture and sample averaging in
:mod:`napari_meddift.backbones.capture`; a new diffusion backbone is a network, the modules whose
outputs are its levels, and how it prepares its input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Protocol, runtime_checkable

import torch

from ..errors import MedDiftError
from ..io.volume import Volume
from ..progress import ProgressCallback
from .preprocessing import PreprocessSettings

__all__ = [
    "Backbone",
    "ExtractionSettings",
    "ProgressCallback",
    "backbone_noise_signal",
    "default_timestep",
    "parse_spacing",
    "resolve_device",
    "resolve_dtype",
]


@dataclass(frozen=True)
class ExtractionSettings:
    """How descriptors are taken from a backbone; stored verbatim in the store's attributes.

    ``timestep``: diffusion timestep of the added noise, in ``0 .. num_train_timesteps - 1`` of
    the backbone's scheduler (1000 steps for MAISI and mini); None (default): the
    backbone's ``default_timestep``, the paper's operating point on its own schedule
    (20 for DDPM, 155 for rectified flow: the same noise/signal 0.184). Extraction
    resolves it (:meth:`resolved`) before the cache key, so a store records the number.
    ``levels``: level names to return; None: the backbone's ``default_levels``.
    ``seed``: seed of the noise draws (a private generator; the global RNG is never touched).
    ``samples``: noise draws averaged, at least 1.
    ``device``: ``auto`` | ``cpu`` | ``cuda`` (not part of the cache key).
    ``dtype``: ``auto`` (float32 on CPU, float16 on CUDA) | ``float32`` | ``float16`` | ``bfloat16``.
    ``spacing``: the grid the backbone runs on: None, the backbone's own (``Backbone.grid_spacing``);
    ``"native"``, the scan's own grid; or isotropic millimetres (see :func:`parse_spacing`).
    The scan is resampled to that grid over its own field of view; the store records the grid
    (``extraction_grid``) and positions stay in the scan's own voxels.
    """

    timestep: int | None = None
    levels: tuple[str, ...] | None = None
    seed: int = 0
    samples: int = 1
    device: str = "auto"
    dtype: str = "auto"
    spacing: float | str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", parse_spacing(self.spacing))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = list(self.levels) if self.levels is not None else None
        return d

    def resolved(self, backbone: Any) -> "ExtractionSettings":
        """These settings with the timestep filled in: an explicit one as given, None as
        ``backbone``'s :func:`default_timestep`."""
        if self.timestep is not None:
            return self
        return replace(self, timestep=default_timestep(backbone))


def default_timestep(backbone: Any) -> int:
    """The timestep ``backbone`` extracts at unless told: its ``default_timestep`` (diffusion
    backbones: the noise/signal of DDPM t = 20 on their own schedule, ``backbones/noise.py``);
    the paper's t = 20 for a backbone that declares none (MIND-SSC ignores it)."""
    from .noise import PAPER_TIMESTEP

    t = getattr(backbone, "default_timestep", None)
    return PAPER_TIMESTEP if t is None else int(t)


def backbone_noise_signal(backbone: Any, timestep: int | None) -> float | None:
    """Noise/signal of ``backbone``'s scheduler at ``timestep`` (None: its default timestep);
    None for a backbone without a noise schedule."""
    from .noise import noise_signal

    scheduler = getattr(backbone, "scheduler", None)
    if scheduler is None:
        return None
    return noise_signal(scheduler, default_timestep(backbone) if timestep is None else int(timestep))


#: the spacings ``--spacing`` accepts, in mm (finer than 0.1 mm is no CT; coarser than 20 mm no anatomy)
SPACING_RANGE = (0.1, 20.0)


def parse_spacing(value: float | str | None) -> float | str | None:
    """``None`` (the backbone's own grid), ``"native"`` (the scan's grid) or millimetres in SPACING_RANGE.

    Accepts ``"2.5"``, ``"2.5mm"``, ``2.5`` and ``"native"``; anything else is a MedDiftError naming
    the choices.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "native":
            return "native"
        text = text[:-2].strip() if text.endswith("mm") else text
        try:
            value = float(text)
        except ValueError:
            raise MedDiftError(
                f"--spacing must be millimetres (e.g. 2.5 or 2.5mm) or 'native', got {value!r}"
            ) from None
    lo, hi = SPACING_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= float(value) <= hi):
        raise MedDiftError(f"--spacing must be between {lo:g} and {hi:g} mm, or 'native' (the scan's own grid); "
                           f"got {value!r}")
    return float(value)


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedDiftError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise MedDiftError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Autocast dtype: half precision on GPU, float32 on CPU unless asked otherwise."""
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise MedDiftError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return table[dtype]


@runtime_checkable
class Backbone(Protocol):
    """A descriptor source.

    ``extract`` returns {level name: tensor (C, z, y, x)} on the CPU, float32, at the level's
    native resolution; the level grid spans the whole image as
    ``F.interpolate(..., size=image_shape, mode="trilinear", align_corners=False)`` does.

    ``name``: registry name (``maisi``, ``mini``, ...).
    ``level_names``: every level it can give, in fusion order.
    ``default_levels``: the levels extracted when the settings name none.
    ``grid_spacing``: the isotropic voxel spacing (mm) the backbone wants its input at (mini: the
    spacing it was trained at), or None to run on the scan's own grid (MAISI, which resizes
    and conditions on spacing itself; MIND-SSC). Extraction resamples the scan to it.
    ``preprocessing``: the HU window and network-shape rule it applies by default, or None for a
    backbone that takes no preprocessing settings (``extract`` then refuses them).
    ``weights_hash``: identity of the weights (sha256 of the checkpoint files' bytes, or
    ``random-...`` for seeded random weights); part of every store's cache key.
    ``config``: everything else about the backbone that changes its features (for MAISI the
    variant, the body region and the latent choice); part of the cache key and stored.
    ``description``: one human-readable line (release, weights) stored beside the levels.

    A diffusion backbone also has ``scheduler`` (its MONAI noise scheduler) and
    ``default_timestep`` (the timestep of settings that name none); both are optional.
    """

    name: str
    level_names: tuple[str, ...]
    default_levels: tuple[str, ...]
    preprocessing: PreprocessSettings | None
    grid_spacing: float | None

    @property
    def weights_hash(self) -> str: ...

    @property
    def config(self) -> Mapping[str, Any]: ...

    @property
    def description(self) -> str: ...

    def extract(
        self,
        volume: Volume,
        settings: ExtractionSettings,
        progress: ProgressCallback | None = None,
        preprocessing: PreprocessSettings | None = None,
    ) -> dict[str, torch.Tensor]: ...
