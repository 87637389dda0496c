"""Voxel grids in physical space: the image's own grid, the grid a backbone runs on, each level's grid.

A :class:`Grid` places a (z, y, x) array in ITK physical space (LPS, mm), exactly as a
:class:`~napari_meddift.io.volume.Volume` does: ``physical = origin + D @ diag(spacing) @ index`` with
``D`` the direction in (z, y, x) order.

Two grids matter beyond the image's own one:

* the **extraction grid**: the scan resampled to the spacing its backbone was trained at
  (:meth:`Grid.at_spacing`), over the scan's own field of view;
* each **level grid**: a descriptor level's nodes. A level spans the grid it was computed on edge to
  edge (``F.interpolate(..., align_corners=False)``), and since the extraction grid spans the image's
  field of view edge to edge, every level spans the image too (:meth:`Grid.spanning`).

Spanning grids share the image's direction and field of view, so a level node ``i`` sits at the image's
continuous index ``(i + 0.5) * N / n - 0.5`` along each axis: the per-axis taps of
:mod:`napari_meddift.matching.grid` stay separable and exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import MedDiftError

#: relative tolerance for "the same grid" (float32 headers and JSON round trips stay far inside it)
TOLERANCE = 1e-5


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape and spacing (z, y, x), origin (z, y, x) mm (LPS), direction (ITK x, y, z).

    ``shape``: voxels per axis (z, y, x).
    ``spacing``: mm between voxel centres per axis (z, y, x).
    ``origin``: physical position of voxel (0, 0, 0), (z, y, x) mm.
    ``direction``: 3x3 direction cosines in ITK's (x, y, z) convention, as a tuple of 9 floats.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        from .metadata import geometry_problems  # the one set of geometry rules, shared with stores and volumes

        problems = geometry_problems({"image_shape": self.shape, "spacing": self.spacing,
                                      "origin": self.origin, "direction": self.direction})
        if problems:
            raise MedDiftError(f"not a voxel grid: {'; '.join(problems)}")
        shape = tuple(int(n) for n in self.shape)
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin)
        direction = tuple(float(v) for v in np.asarray(self.direction, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # ------------------------------------------------------------ construction

    @classmethod
    def of(cls, volume) -> "Grid":
        """The grid of a :class:`~napari_meddift.io.volume.Volume` (or anything with its geometry)."""
        return cls(tuple(volume.shape), tuple(volume.spacing), tuple(volume.origin),
                   tuple(np.asarray(volume.direction, dtype=np.float64).reshape(9)))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Grid":
        """Inverse of :meth:`to_dict`; a malformed entry is a MedDiftError."""
        try:
            return cls(tuple(doc["shape"]), tuple(doc["spacing"]), tuple(doc["origin"]),
                       tuple(np.asarray(doc["direction"], dtype=np.float64).reshape(-1)))
        except (KeyError, TypeError, ValueError) as exc:
            raise MedDiftError(f"not a grid description ({type(exc).__name__}: {exc})") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``shape``, ``spacing``, ``origin`` (z, y, x) and ``direction`` (3x3, ITK x, y, z)."""
        return {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": np.asarray(self.direction).reshape(3, 3).tolist()}

    # ------------------------------------------------------------ geometry

    @property
    def field_of_view(self) -> tuple[float, float, float]:
        """Edge-to-edge extent in mm (z, y, x): shape * spacing."""
        return tuple(n * s for n, s in zip(self.shape, self.spacing))  # type: ignore[return-value]

    def affine_zyx(self) -> np.ndarray:
        """(4, 4) index (z, y, x) -> physical (z, y, x) mm."""
        from .volume import affine_zyx

        return affine_zyx(self.spacing, self.origin, np.asarray(self.direction).reshape(3, 3))

    def index_to_physical(self, zyx) -> np.ndarray:
        """Continuous indices (3,) or (N, 3) -> physical points (z, y, x) mm."""
        from .volume import index_to_physical

        return index_to_physical(self.affine_zyx(), zyx)

    def physical_to_index(self, zyx_mm) -> np.ndarray:
        """Physical points (3,) or (N, 3), (z, y, x) mm -> continuous indices (z, y, x)."""
        from .volume import physical_to_index

        return physical_to_index(self.affine_zyx(), zyx_mm)

    def spanning(self, shape) -> "Grid":
        """The grid of ``shape`` nodes over this grid's field of view, edge to edge, same direction.

        This is where ``F.interpolate(size=shape, align_corners=False)`` puts its samples: node ``i``
        at this grid's continuous index ``(i + 0.5) * N / n - 0.5``.
        """
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise MedDiftError(f"a grid needs three positive sizes (z, y, x), got {shape!r}")
        first = np.array([0.5 * big / small - 0.5 for big, small in zip(self.shape, shape)])
        spacing = tuple(s * big / small for s, big, small in zip(self.spacing, self.shape, shape))
        return Grid(shape, spacing, tuple(self.index_to_physical(first)), self.direction)

    def at_spacing(self, spacing) -> "Grid":
        """The grid nearest to ``spacing`` mm (one number: isotropic; or z, y, x) over the same field of view.

        Each axis gets ``max(1, round(fov / spacing))`` voxels, so the spacing it really has is within
        half a voxel's worth of the one asked for (2.496 mm for 141 slices of 2 mm at 2.5 mm).
        """
        target = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
        if not np.all(np.isfinite(target)) or np.any(target <= 0):
            raise MedDiftError(f"a spacing must be positive millimetres, got {spacing!r}")
        shape = tuple(max(1, int(round(f / t))) for f, t in zip(self.field_of_view, target))
        return self.spanning(shape)

    def same_as(self, other: "Grid", tolerance: float = TOLERANCE) -> bool:
        """Equal shape, and spacing, origin and direction equal to ``tolerance`` (relative to the voxel size)."""
        if self.shape != other.shape:
            return False
        scale = max(max(self.spacing), max(other.spacing))
        return bool(
            np.allclose(self.spacing, other.spacing, rtol=tolerance, atol=0)
            and np.allclose(self.origin, other.origin, rtol=0, atol=tolerance * scale)
            and np.allclose(self.direction, other.direction, rtol=0, atol=tolerance)
        )
