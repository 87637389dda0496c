"""All landmarks of a pair at once: truth, prediction, error (mm), score and rivalry per pair."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LandmarkSet"]


@dataclass
class LandmarkSet:
    """Landmark pairs in voxel (z, y, x): ``source_zyx`` in the source image, ``target_zyx``
    (the truth) in the target; ``spacing_zyx`` (mm) of the target measures errors.
    After matching: ``predicted`` (N, 3), ``score``, ``rivalry``, ``psr`` (N,)."""

    source_zyx: np.ndarray
    target_zyx: np.ndarray
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)
    predicted: np.ndarray | None = None
    score: np.ndarray | None = None
    rivalry: np.ndarray | None = None
    psr: np.ndarray | None = None
    settings: dict = field(default_factory=dict)  # levels, radius (mm), timestep the predictions used

    def __post_init__(self):
        self.source_zyx = np.asarray(self.source_zyx, dtype=np.float64).reshape(-1, 3)
        self.target_zyx = np.asarray(self.target_zyx, dtype=np.float64).reshape(-1, 3)
        if self.source_zyx.shape != self.target_zyx.shape:
            raise ValueError(f"{len(self.source_zyx)} source landmarks but {len(self.target_zyx)} target landmarks")

    def __len__(self) -> int:
        return int(self.source_zyx.shape[0])

    @property
    def matched(self) -> bool:
        return self.predicted is not None

    @property
    def errors_mm(self) -> np.ndarray:
        """||predicted - truth|| in mm per pair (NaN before matching)."""
        if self.predicted is None:
            return np.full(len(self), np.nan)
        return np.linalg.norm((self.predicted - self.target_zyx) * np.asarray(self.spacing_zyx), axis=1)

    @property
    def initial_mm(self) -> np.ndarray:
        """The error of not matching at all (source voxel taken as the target voxel), mm."""
        return np.linalg.norm((self.source_zyx - self.target_zyx) * np.asarray(self.spacing_zyx), axis=1)

    def shown(self, min_error_mm: float = 0.0) -> np.ndarray:
        """Which pairs a filter 'error >= min_error_mm' keeps (all before matching)."""
        e = self.errors_mm
        if not self.matched or min_error_mm <= 0:
            return np.ones(len(self), bool)
        return e >= float(min_error_mm)

    def features(self) -> dict[str, np.ndarray]:
        """Per-point table for napari features (one row per pair)."""
        n = len(self)
        nan = np.full(n, np.nan)
        return {
            "index": np.arange(n),
            "error_mm": self.errors_mm,
            "score": nan if self.score is None else np.asarray(self.score, float),
            "rivalry": nan if self.rivalry is None else np.asarray(self.rivalry, float),
            "psr": nan if self.psr is None else np.asarray(self.psr, float),
        }

    def rivalry_error_correlation(self) -> float:
        """Spearman rank correlation of rivalry with error over matched pairs (NaN if undefined)."""
        if self.rivalry is None:
            return math.nan
        from scipy.stats import spearmanr

        a, e = np.asarray(self.rivalry, float), self.errors_mm
        ok = np.isfinite(a) & np.isfinite(e)
        if ok.sum() < 3:
            return math.nan
        return float(spearmanr(a[ok], e[ok]).statistic)
