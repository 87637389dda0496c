"""The settings of a registration: plain data, importable without PyTorch (the command line
builds its ``--help`` from the defaults)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import MedDiftError

REGULARISERS = ("diffusion", "bending")


@dataclass
class RegistrationSettings:
    """Settings of :func:`register` (voxel units are target voxels; 2.5 mm on the demo pair).

    grid_spacing: cost-volume node spacing (voxels); search_radius / search_step: displacement
    range and step of the cost volume (voxels); smoothness: weight of the Adam stage's penalty;
    iterations: Adam steps (0: convex result only); adam_spacing: lattice of the Adam stage.
    """

    levels: tuple[str, ...] | None = None
    weights: dict[str, float] | None = None
    grid_spacing: int = 4
    search_radius: int = 10
    search_step: int = 2
    smoothness: float = 0.02
    regulariser: str = "diffusion"
    iterations: int = 40
    adam_spacing: int = 4
    learning_rate: float = 0.2
    adam_smoothing: int = 2
    inverse_consistent: bool = False
    device: str = "auto"
    #: torch intra-op threads on the CPU (None: torch's setting). One by default, as the matcher:
    #: on a small shared CPU the thread pool's fork/join costs more than it gains.
    cpu_threads: int | None = 1

    def check(self) -> None:
        for name in ("grid_spacing", "search_step", "adam_spacing"):
            if int(getattr(self, name)) < 1:
                raise MedDiftError(f"{name.replace('_', '-')} must be >= 1 voxel, got {getattr(self, name)}")
        if int(self.search_radius) < int(self.search_step):
            raise MedDiftError(
                f"search radius ({self.search_radius}) must be at least the search step ({self.search_step}) voxels"
            )
        if int(self.search_radius) // int(self.search_step) > 12:
            raise MedDiftError(f"search radius {self.search_radius} / step {self.search_step} gives more than 25 "
                               "displacements per axis; raise the step or lower the radius")
        if not (self.smoothness >= 0 and math.isfinite(self.smoothness)):
            raise MedDiftError(f"smoothness must be a finite number >= 0, got {self.smoothness}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise MedDiftError(f"learning rate must be a finite number > 0, got {self.learning_rate}")
        if int(self.iterations) < 0:
            raise MedDiftError(f"iterations must be >= 0, got {self.iterations}")
        if self.regulariser not in REGULARISERS:
            raise MedDiftError(f"unknown regulariser {self.regulariser!r}; use {' or '.join(REGULARISERS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = list(self.levels) if self.levels is not None else None
        return d
