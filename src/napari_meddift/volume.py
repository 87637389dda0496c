"""A CT volume with its geometry, in numpy order (z, y, x)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    """Voxel array plus the geometry needed to map voxels to millimetres.

    ``array`` is float32 in numpy order (z, y, x), as SimpleITK returns it.
    ``spacing`` and ``origin`` are in the same (z, y, x) order, in mm; ``direction``
    is the 3x3 direction-cosine matrix in ITK's (x, y, z) convention, kept for writing back.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    name: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]
