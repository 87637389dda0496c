"""A dense displacement field from a source grid into a target grid, and its ITK form.

Convention (the same direction as ``meddift match``): the field is defined on the SOURCE voxel
grid and maps every source voxel ``p`` (z, y, x) to a continuous TARGET voxel position
``phi(p)``. In physical space (ITK's LPS world, x, y, z order) that is the displacement
``u(x) = world_target(phi(p)) - world_source(p)`` at ``x = world_source(p)``, which is exactly
what ``SimpleITK.DisplacementFieldTransform`` expects: resampling the target image through it
onto the source grid gives the target warped into the source frame (fixed = source,
moving = target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MedDiftError
from ..io.geometry import Grid


@dataclass(frozen=True)
class Geometry(Grid):
    """The source or target grid of a displacement field: an :class:`~napari_meddift.io.geometry.Grid`
    (shape and spacing/origin in (z, y, x), ITK direction (x, y, z)), whose index <-> physical maps
    it uses, with 1 mm spacing unless told, built from anything that has a geometry
    (:meth:`of`), and the SimpleITK reference image a resampling needs."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @classmethod
    def of(cls, obj) -> "Geometry":
        """From a Volume, a DescriptorStore, a Grid or a SimpleITK image."""
        if hasattr(obj, "GetSize"):
            return cls(tuple(int(s) for s in obj.GetSize()[::-1]), tuple(float(s) for s in obj.GetSpacing()[::-1]),
                       tuple(float(s) for s in obj.GetOrigin()[::-1]), tuple(float(v) for v in obj.GetDirection()))
        shape = obj.image_shape if hasattr(obj, "image_shape") else obj.shape
        return cls(tuple(int(s) for s in shape), tuple(float(s) for s in obj.spacing),
                   tuple(float(s) for s in getattr(obj, "origin", (0.0, 0.0, 0.0))),
                   tuple(float(v) for v in np.asarray(getattr(obj, "direction", np.eye(3)), float).reshape(-1)))

    @property
    def matrix(self) -> np.ndarray:
        """4x4 affine: homogeneous voxel (z, y, x, 1) -> world (z, y, x, 1) in mm (:meth:`Grid.affine_zyx`)."""
        return self.affine_zyx()

    def to_world(self, zyx) -> np.ndarray:
        """Voxel (z, y, x) points (..., 3) -> world mm in (z, y, x) order (:meth:`Grid.index_to_physical`)."""
        return self.index_to_physical(zyx)

    def to_voxel(self, zyx_mm) -> np.ndarray:
        """World (z, y, x) mm points (..., 3) -> continuous voxel (z, y, x) (:meth:`Grid.physical_to_index`)."""
        return self.physical_to_index(zyx_mm)

    def reference_image(self):
        """An empty SimpleITK image of this grid (for resampling onto it)."""
        import SimpleITK as sitk

        img = sitk.Image([int(s) for s in self.shape[::-1]], sitk.sitkUInt8)
        img.SetSpacing([float(s) for s in self.spacing[::-1]])
        img.SetOrigin([float(s) for s in self.origin[::-1]])
        img.SetDirection([float(v) for v in self.direction])
        return img


@dataclass
class JacobianStats:
    """Jacobian determinant of the source -> target map: folding (det <= 0) and range."""

    folding_percent: float
    det_min: float
    det_max: float
    det_mean: float
    std_log_det: float  # Learn2Reg's SDlogJ over non-folding voxels

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def line(self) -> str:
        return (f"Jacobian determinant {self.det_min:.3f} .. {self.det_max:.3f} (mean {self.det_mean:.3f}), "
                f"folding {self.folding_percent:.3f} % of voxels, SDlogJ {self.std_log_det:.3f}")


def _grid(shape) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))


@dataclass
class DisplacementField:
    """``positions[:, z, y, x]``: the continuous target voxel (z, y, x) of source voxel (z, y, x).

    ``positions`` is float32 (3, Z, Y, X) on the source grid; ``source``/``target`` carry the
    geometry needed for millimetres and the ITK form.
    """

    positions: np.ndarray
    source: Geometry
    target: Geometry
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = np.asarray(self.positions)
        if p.ndim != 4 or p.shape[0] != 3 or tuple(p.shape[1:]) != tuple(self.source.shape):
            raise MedDiftError(f"a displacement field on a source grid of shape {tuple(self.source.shape)} must have "
                               f"shape (3, {', '.join(map(str, self.source.shape))}), got {tuple(p.shape)}")
        self.positions = p.astype(np.float32, copy=False)

    # ---------------------------------------------------------------- queries

    @property
    def displacement_voxels(self) -> np.ndarray:
        """(3, Z, Y, X) target position minus source index, in voxels (equal grids: the motion)."""
        return self.positions - _grid(self.source.shape).astype(np.float32)

    def displacement_mm(self) -> np.ndarray:
        """(Z, Y, X, 3) physical displacement in mm, vector components in ITK (x, y, z) order."""
        src = self.source.to_world(np.moveaxis(_grid(self.source.shape), 0, -1))
        tgt = self.target.to_world(np.moveaxis(self.positions.astype(np.float64), 0, -1))
        return (tgt - src)[..., ::-1].copy()

    def map_points(self, points_zyx) -> np.ndarray:
        """Source voxel points (N, 3) or (3,), continuous, -> target voxel points (z, y, x).

        Trilinear interpolation of the field; points outside the grid take the nearest edge value
        of the displacement. This is the field's prediction for the explorer's cursor.
        """
        from scipy import ndimage as ndi

        pts = np.asarray(points_zyx, dtype=np.float64)
        single = pts.ndim == 1
        pts = np.atleast_2d(pts)
        if pts.ndim != 2 or pts.shape[1] != 3 or not np.all(np.isfinite(pts)):
            raise MedDiftError(
                f"points must be finite (N, 3) voxel (z, y, x) triples, got shape {np.asarray(points_zyx).shape}"
            )
        if len(pts) == 0:
            return np.zeros((0, 3))
        disp = self.displacement_voxels.astype(np.float64)
        out = pts + np.stack([ndi.map_coordinates(disp[a], pts.T, order=1, mode="nearest") for a in range(3)], axis=1)
        return out[0] if single else out

    def jacobian(self) -> np.ndarray:
        """det of d world_target(phi(p)) / d world_source(p) on the source grid (central differences)."""
        pos = self.positions.astype(np.float64)
        g = np.empty((3, 3) + pos.shape[1:])
        for i in range(3):
            gi = np.gradient(pos[i])
            for j in range(3):
                g[i, j] = gi[j]
        det = (g[0, 0] * (g[1, 1] * g[2, 2] - g[1, 2] * g[2, 1]) - g[0, 1] * (g[1, 0] * g[2, 2] - g[1, 2] * g[2, 0])
               + g[0, 2] * (g[1, 0] * g[2, 1] - g[1, 1] * g[2, 0]))
        scale = np.linalg.det(self.target.matrix[:3, :3]) / np.linalg.det(self.source.matrix[:3, :3])
        return (det * scale).astype(np.float32)

    def jacobian_stats(self, mask: np.ndarray | None = None) -> JacobianStats:
        det = self.jacobian()
        vals = det[mask] if mask is not None else det.reshape(-1)
        pos = vals[vals > 0]
        return JacobianStats(
            folding_percent=float(100.0 * np.mean(vals <= 0)),
            det_min=float(vals.min()), det_max=float(vals.max()), det_mean=float(vals.mean()),
            std_log_det=float(np.log(pos).std()) if pos.size else math.nan,
        )

    # ---------------------------------------------------------------- ITK form

    def to_sitk(self):
        """The field as a SimpleITK vector image (float64, physical mm, LPS x, y, z components)."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.displacement_mm().astype(np.float64), isVector=True)
        ref = self.source.reference_image()
        img.CopyInformation(ref)
        return img

    def to_transform(self):
        """A ``sitk.DisplacementFieldTransform`` mapping source world points to target world points."""
        import SimpleITK as sitk

        return sitk.DisplacementFieldTransform(sitk.Cast(self.to_sitk(), sitk.sitkVectorFloat64))

    def write(self, path) -> Path:
        """Write the ITK displacement field (.nii.gz, .nii, .mha, .mhd, .nrrd), atomically."""
        from ..io.outputs import write_image
        from ..io.volume import VOLUME_SUFFIXES, _suffix

        path = Path(path).expanduser()
        if _suffix(path) not in VOLUME_SUFFIXES:
            raise MedDiftError(
                f"{path}: a displacement field is written as .nii.gz, .nii, .mha, .mhd or .nrrd; rename it"
            )
        return write_image(self.to_sitk(), path, "displacement field")  # whole or not at all

    @classmethod
    def from_sitk(cls, image, target: Geometry) -> "DisplacementField":
        """Read back an ITK displacement field defined on the source grid; ``target`` gives voxel positions."""
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
            raise MedDiftError(f"a displacement field must be a 3D image with 3 components per voxel, got "
                               f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()}")
        import SimpleITK as sitk

        source = Geometry.of(image)
        disp_xyz = sitk.GetArrayFromImage(image).astype(np.float64)  # (Z, Y, X, 3), x, y, z
        src = source.to_world(np.moveaxis(_grid(source.shape), 0, -1))
        pos = target.to_voxel(src + disp_xyz[..., ::-1])
        return cls(np.moveaxis(pos, -1, 0).astype(np.float32), source, target)

    @classmethod
    def read(cls, path, target: Geometry, source: Geometry | None = None) -> "DisplacementField":
        """Read a field file; with ``source`` given its grid must match (one clear line otherwise)."""
        import SimpleITK as sitk

        path = Path(path).expanduser()
        if not path.is_file():
            raise MedDiftError(f"{path}: no such displacement field file; check the path")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError:
            raise MedDiftError(
                f"{path}: cannot be read as an image; give an ITK displacement field (.nii.gz/.mha)"
            ) from None
        f = cls.from_sitk(image, target)
        if source is not None and tuple(f.source.shape) != tuple(source.shape):
            raise MedDiftError(
                f"{path}: the field's grid is {'x'.join(map(str, f.source.shape))} (z,y,x) but the source "
                f"is {'x'.join(map(str, source.shape))}; give the field made for this source"
            )
        return f

    def warp(self, moving, default_value: float | None = None, order: int = 1):
        """Resample ``moving`` (a Volume or SimpleITK image on the TARGET side) onto the source grid.

        Returns a Volume on the source grid: ``moving(phi(p))``, via ``sitk.Resample`` with this
        field's ``DisplacementFieldTransform`` (linear, or nearest for ``order=0``).
        """
        import SimpleITK as sitk

        from ..io.volume import Volume, volume_from_sitk, volume_to_sitk

        img = moving if hasattr(moving, "GetSize") else volume_to_sitk(moving)
        img = sitk.Cast(img, sitk.sitkFloat32)
        if default_value is None:
            default_value = float(sitk.GetArrayViewFromImage(img).min())
        interp = sitk.sitkNearestNeighbor if order == 0 else sitk.sitkLinear
        out = sitk.Resample(
            img, self.source.reference_image(), self.to_transform(), interp, default_value, sitk.sitkFloat32
        )
        vol = volume_from_sitk(out, name="warped")
        return Volume(vol.array, vol.spacing, vol.origin, vol.direction, name="warped")
