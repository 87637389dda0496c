"""What the matcher returns: a similarity map, one match, a table of matches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .grid import best_in_maps

@dataclass
class SimilarityResult:
    """A fused cosine map over a target region; ``box`` places it in the target (z, y, x)."""

    box: tuple[slice, slice, slice]
    fused: np.ndarray
    per_level: dict[str, np.ndarray]
    center_zyx: tuple[int, int, int]

    @property
    def offset(self) -> tuple[int, int, int]:
        """Target index of ``fused[0, 0, 0]``."""
        return tuple(int(s.start) for s in self.box)  # type: ignore[return-value]

    def best(self, exclusion: int = 2) -> tuple[tuple[int, int, int], float, float]:
        """(target voxel, score, ambiguity) of this map by the matcher's own rule: first of ties in
        C order, rival taken outside the exclusion cube. Lets a viewer reuse the map it shows."""
        box = [(s.start, s.stop) for s in self.box]
        tgt, score, amb = best_in_maps(torch.from_numpy(np.array(self.fused, np.float32))[None], box, exclusion)
        return tuple(int(v) for v in tgt[0]), float(score[0]), float(amb[0])  # type: ignore[return-value]


@dataclass
class Match:
    """Best target voxel for one source voxel, with the cues that tell a good match from a guess.

    ``ambiguity`` is the best fused score outside the cube of half-width ``exclusion`` around the
    match divided by the match score (near 1: a rival as good exists; nan: no voxel outside).
    ``fb_distance`` is the voxel distance between the source point and the back-match of the
    target point (target -> source, same radius); ``consistent`` is ``fb_distance <= threshold``,
    or None when consistency was not checked.
    """

    source_zyx: tuple[int, int, int]
    target_zyx: tuple[int, int, int]
    score: float
    ambiguity: float
    fb_distance: float = math.nan
    consistent: bool | None = None


@dataclass
class MatchTable:
    """Batch matches as arrays (row i belongs to ``source_zyx[i]``)."""

    source_zyx: np.ndarray  # (N, 3) int64
    target_zyx: np.ndarray  # (N, 3) int64
    score: np.ndarray  # (N,) float32
    ambiguity: np.ndarray  # (N,) float32
    fb_distance: np.ndarray  # (N,) float32, nan when not checked
    consistent: np.ndarray  # (N,) bool, False when not checked
    checked: bool = True  # whether forward-backward consistency was computed

    def __len__(self) -> int:
        return int(self.target_zyx.shape[0])

    def to_rows(self) -> list[dict]:
        """Plain dicts (one per point) for CSV writers and tables; indices are z, y, x."""
        rows = []
        for i in range(len(self)):
            s, t = self.source_zyx[i], self.target_zyx[i]
            rows.append(
                {
                    "source_z": int(s[0]),
                    "source_y": int(s[1]),
                    "source_x": int(s[2]),
                    "target_z": int(t[0]),
                    "target_y": int(t[1]),
                    "target_x": int(t[2]),
                    "score": float(self.score[i]),
                    "ambiguity": float(self.ambiguity[i]),
                    "fb_distance": float(self.fb_distance[i]),
                    "consistent": bool(self.consistent[i]) if self.checked else None,
                }
            )
        return rows
