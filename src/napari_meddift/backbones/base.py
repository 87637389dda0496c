"""What every descriptor source provides: named feature levels at native resolution."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import torch

from ..io.volume import Volume
from ..progress import ProgressCallback


@dataclass(frozen=True)
class ExtractionSettings:
    """How descriptors are taken from a backbone; stored verbatim in the store's attributes."""

    timestep: int = 20
    levels: tuple[str, ...] | None = None  # None: the backbone's default levels
    seed: int = 0
    samples: int = 1  # noise samples averaged
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (fp32 on CPU, fp16 on CUDA) | float32 | float16 | bfloat16

    def to_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = list(self.levels) if self.levels is not None else None
        return d


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is a clear error."""
    from ..errors import MedDiftError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedDiftError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise MedDiftError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Autocast dtype: half precision on GPU, float32 on CPU unless asked otherwise."""
    from ..errors import MedDiftError

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise MedDiftError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return table[dtype]


@runtime_checkable
class Backbone(Protocol):
    """A descriptor source. ``extract`` returns {level name: tensor (C, z, y, x)} on the CPU,
    float32, at the level's native resolution; the level grid spans the whole image as
    ``F.interpolate(..., size=image_shape, mode="trilinear", align_corners=False)`` does."""

    name: str
    level_names: tuple[str, ...]  # every level it can give, in fusion order
    default_levels: tuple[str, ...]

    @property
    def weights_hash(self) -> str: ...

    def extract(
        self, volume: Volume, settings: ExtractionSettings, progress: ProgressCallback | None = None
    ) -> dict[str, torch.Tensor]: ...
