"""Where a source voxel should go: a known mapping for a pair, answered per query in milliseconds.

Two kinds of truth, both in voxel (z, y, x) of the source and target grids:

* ``FieldTruth``: a dense displacement field ``u`` (voxels, on the *target* grid) with
  ``source = target + u(target)``, as a synthetic deformation gives it (the demo pair's breathing
  motion). The target of a source point p is the q with ``q + u(q) = p`` (Newton steps on the
  trilinear field, a few per query): exact to 1e-4 voxel, "interpolated field" in the status.
* ``LandmarkTruth``: landmark pairs only. A query is carried by the displacement of its nearest
  source landmark, ``q = p + (t_i - s_i)``; the answer names that landmark and how far it is,
  because the truth is only exact *at* a landmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["TruthAnswer", "FieldTruth", "LandmarkTruth"]


@dataclass(frozen=True)
class TruthAnswer:
    """The true target of one source voxel. ``kind``: 'field' or 'landmark'; for landmarks,
    ``landmark`` is its index and ``distance_mm`` the query's distance to it (mm)."""

    target_zyx: tuple[float, float, float]
    kind: str
    landmark: int | None = None
    distance_mm: float = 0.0

    def describe(self) -> str:
        if self.kind == "field":
            return "interpolated field"
        return f"nearest landmark #{self.landmark}, {self.distance_mm:.1f} mm away"


class FieldTruth:
    """Truth from a displacement field ``u_vox`` (3, Z, Y, X) voxels on the target grid, with
    ``source_point = target_point + u(target_point)``."""

    kind = "field"

    def __init__(self, u_vox: np.ndarray):
        u = np.asarray(u_vox, dtype=np.float64)
        if u.ndim != 4 or u.shape[0] != 3:
            raise ValueError(f"a displacement field is (3, Z, Y, X), got shape {u.shape}")
        self.u = u
        self.shape = tuple(int(n) for n in u.shape[1:])
        # d u_i / d x_j on the grid, once (Newton needs it at every step)
        self.grad = np.stack([np.stack(np.gradient(u[i]), axis=0) for i in range(3)])

    def _at(self, arr: np.ndarray, p: np.ndarray) -> np.ndarray:
        c = p.reshape(3, 1)
        return np.array([ndi.map_coordinates(a, c, order=1, mode="nearest")[0] for a in arr])

    def target_of(self, source_zyx: Sequence[float], tol: float = 1e-4, max_iter: int = 30) -> TruthAnswer:
        """The target point q with ``q + u(q) = source_zyx`` (Newton, damped to a fixed-point step)."""
        p = np.asarray(source_zyx, dtype=np.float64)
        q = p - self._at(self.u, p)
        for _ in range(max_iter):
            r = q + self._at(self.u, q) - p
            if float(np.linalg.norm(r)) < tol:
                break
            J = self._at(self.grad.reshape(9, *self.shape), q).reshape(3, 3) + np.eye(3)
            try:
                step = np.linalg.solve(J, r)
            except np.linalg.LinAlgError:
                step = r
            q_new = q - step
            if np.linalg.norm(q_new + self._at(self.u, q_new) - p) > np.linalg.norm(r):
                q_new = q - r
            q = q_new
        return TruthAnswer(tuple(float(v) for v in q), "field")  # type: ignore[arg-type]


class LandmarkTruth:
    """Truth from landmark pairs ``source_zyx``/``target_zyx`` (N, 3) voxels; ``spacing_zyx``
    (mm) of the source measures the distance to the nearest landmark."""

    kind = "landmark"

    def __init__(self, source_zyx, target_zyx, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)):
        from scipy.spatial import cKDTree

        self.source = np.asarray(source_zyx, dtype=np.float64).reshape(-1, 3)
        self.target = np.asarray(target_zyx, dtype=np.float64).reshape(-1, 3)
        if self.source.shape != self.target.shape or len(self.source) == 0:
            raise ValueError(
                f"need matching, non-empty landmark arrays, got {self.source.shape} and {self.target.shape}"
            )
        self.spacing = np.asarray(spacing_zyx, dtype=np.float64)
        self._tree = cKDTree(self.source * self.spacing)  # nearest in mm, not in voxels

    def target_of(self, source_zyx: Sequence[float]) -> TruthAnswer:
        p = np.asarray(source_zyx, dtype=np.float64)
        d, i = self._tree.query(p * self.spacing)
        i = int(i)
        q = p + (self.target[i] - self.source[i])
        return TruthAnswer(tuple(float(v) for v in q), "landmark", landmark=i,  # type: ignore[arg-type]
                           distance_mm=float(d) if math.isfinite(d) else math.nan)
