"""What happens to a CT before a backbone sees it: HU window, RAS orientation, resizing.

Everything here is reversible bookkeeping: the backbone runs on a canonical (RAS-ordered,
resized) copy, and the feature levels it returns are brought back with
:func:`from_canonical` so that stores always span the ORIGINAL array in (z, y, x) order.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MedDiftError


@dataclass(frozen=True)
class PreprocessSettings:
    """HU window and network-shape rule; stored verbatim in the store's attributes."""

    hu_min: float = -1000.0
    hu_max: float = 1000.0
    multiple: int = 128  # each network axis is a multiple of this
    min_size: int = 128  # ...and at least this long
    #: how a size exactly halfway between two multiples rounds: "even" as the MAISI tutorials
    #: do (Python's round: 320 -> 256, 448 -> 512), "up" as mini was trained (40 -> 48 at 16)
    ties: str = "even"

    def __post_init__(self) -> None:
        if not self.hu_max > self.hu_min:
            raise MedDiftError(f"HU window must have hu_max > hu_min, got [{self.hu_min}, {self.hu_max}]")
        if self.multiple < 1 or self.min_size < 1:
            raise MedDiftError("multiple and min_size must be positive")
        if self.ties not in ("even", "up"):
            raise MedDiftError(f"ties must be 'even' or 'up', got {self.ties!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- intensity


def window_intensity(array: np.ndarray | torch.Tensor, s: PreprocessSettings | None = None) -> torch.Tensor:
    """Clip to [hu_min, hu_max] and scale linearly to [0, 1] (MONAI ScaleIntensityRange, clip=True)."""
    from monai.data import MetaTensor
    from monai.transforms import ScaleIntensityRange

    s = s or PreprocessSettings()
    t = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array).to(torch.float32)
    out = ScaleIntensityRange(a_min=s.hu_min, a_max=s.hu_max, b_min=0.0, b_max=1.0, clip=True)(t)
    return out.as_tensor() if isinstance(out, MetaTensor) else torch.as_tensor(out)


# ---------------------------------------------------------------- shapes


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def network_shape(
    shape: tuple[int, ...], multiple: int = 128, min_size: int = 128, ties: str = "even"
) -> tuple[int, ...]:
    """Nearest multiple of ``multiple`` per axis, at least ``min_size`` (rounded up to a multiple).

    ``ties="even"`` is the MAISI tutorials' rule (Python's ``round``: 192 -> 256, 320 -> 256,
    448 -> 512); ``ties="up"`` sends every tie up (320 -> 384). ``(192, 192, 208) -> (256, 256, 256)``.
    """
    floor = max(multiple, -(-min_size // multiple) * multiple)
    rnd = round if ties == "even" else _round_half_up
    return tuple(max(floor, int(rnd(int(n) / multiple)) * multiple) for n in shape)


def resize(array: np.ndarray | torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Trilinear resize (align_corners=False) of the last three axes; a leading channel axis is kept."""
    t = torch.as_tensor(array)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    shape = tuple(int(n) for n in shape)
    if tuple(t.shape[-3:]) == shape:
        return t
    lead = t.shape[:-3]
    x = t.reshape(1, -1, *t.shape[-3:])
    y = F.interpolate(x, size=shape, mode="trilinear", align_corners=False)
    return y.reshape(*lead, *shape)


# ---------------------------------------------------------------- orientation


@dataclass(frozen=True)
class CanonicalAxes:
    """How the (z, y, x) array maps to the network's RAS order (MONAI's x=R, y=A, z=S).

    ``perm[k]`` is the array axis that becomes network axis k; ``flips[k]`` says whether network
    axis k is reversed after the transpose.
    """

    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flips)


def canonical_axes(direction: np.ndarray | None) -> CanonicalAxes:
    """Permutation + flips bringing an array in numpy (z, y, x) order to RAS network order.

    ``direction`` is ITK's 3x3 direction matrix (LPS world, columns = index axes x, y, z).
    Oblique directions are snapped to the closest axis-aligned orientation.
    """
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64).reshape(3, 3)
    ras = np.diag([-1.0, -1.0, 1.0]) @ d  # LPS -> RAS world
    # column j of `ras` is the world direction of ITK index axis j = numpy axis 2 - j
    best, best_score = None, -1.0
    for world_of_index in itertools.permutations(range(3)):
        score = sum(abs(ras[world_of_index[j], j]) for j in range(3))
        if score > best_score + 1e-12:
            best, best_score = world_of_index, score
    assert best is not None
    perm = [0, 0, 0]
    flips = [False, False, False]
    for j in range(3):  # ITK index axis j
        w = best[j]  # network axis (0=R, 1=A, 2=S)
        perm[w] = 2 - j
        flips[w] = bool(ras[w, j] < 0)
    return CanonicalAxes(tuple(perm), tuple(flips))  # type: ignore[arg-type]


def to_canonical(t: torch.Tensor, axes: CanonicalAxes) -> torch.Tensor:
    """Apply ``axes`` to the last three dims of ``t`` (leading dims are kept)."""
    n = t.ndim
    lead = list(range(n - 3))
    t = t.permute(*lead, *[n - 3 + p for p in axes.perm])
    dims = [n - 3 + k for k in range(3) if axes.flips[k]]
    return t.flip(dims) if dims else t


def from_canonical(t: torch.Tensor, axes: CanonicalAxes) -> torch.Tensor:
    """Inverse of :func:`to_canonical`: network order back to the array's (z, y, x) order."""
    n = t.ndim
    dims = [n - 3 + k for k in range(3) if axes.flips[k]]
    if dims:
        t = t.flip(dims)
    inv = [0, 0, 0]
    for k, p in enumerate(axes.perm):
        inv[p] = k
    lead = list(range(n - 3))
    return t.permute(*lead, *[n - 3 + i for i in inv]).contiguous()


def canonical_spacing(spacing_zyx: tuple[float, float, float], axes: CanonicalAxes) -> tuple[float, float, float]:
    """Spacing in network axis order."""
    return tuple(float(spacing_zyx[p]) for p in axes.perm)  # type: ignore[return-value]


@dataclass(frozen=True)
class Prepared:
    """The network input and the bookkeeping needed to bring features back."""

    tensor: torch.Tensor  # (1, 1, a, b, c) float32 in [0, 1], canonical order, network shape
    axes: CanonicalAxes
    spacing: tuple[float, float, float]  # mm per voxel of ``tensor``, canonical order
    original_shape: tuple[int, int, int]  # (Z, Y, X)


def prepare(volume, s: PreprocessSettings | None = None) -> Prepared:
    """Window, orient to RAS and resize a :class:`~napari_meddift.io.volume.Volume` for a network."""
    s = s or PreprocessSettings()
    arr = np.asarray(volume.array)
    if arr.ndim != 3:
        raise MedDiftError(f"expected a 3D volume, got an array of shape {arr.shape}")
    axes = canonical_axes(getattr(volume, "direction", None))
    t = to_canonical(window_intensity(arr, s), axes)
    src_shape = tuple(int(n) for n in t.shape)
    net = network_shape(src_shape, s.multiple, s.min_size, s.ties)
    t = resize(t, net).contiguous()
    sp = canonical_spacing(tuple(volume.spacing), axes)
    net_spacing = tuple(float(sp[k]) * src_shape[k] / net[k] for k in range(3))
    return Prepared(t[None, None], axes, net_spacing, tuple(int(n) for n in arr.shape))  # type: ignore[arg-type]


def _antialias(image, target_spacing_xyz):
    """Gaussian pre-filter for downsampling: FWHM^2 = target^2 - source^2 along axes that coarsen."""
    import SimpleITK as sitk
    from scipy import ndimage as ndi

    sp_xyz = np.array(image.GetSpacing(), dtype=float)
    sig_mm = np.sqrt(np.maximum(np.asarray(target_spacing_xyz, dtype=float) ** 2 - sp_xyz**2, 0.0)) / 2.3548
    if not np.any(sig_mm > 0):
        return image
    smooth = sitk.GetImageFromArray(ndi.gaussian_filter(sitk.GetArrayFromImage(image), (sig_mm / sp_xyz)[::-1]))
    smooth.CopyInformation(image)
    return smooth


def _resample_sitk(image, size_xyz, spacing_xyz, origin_xyz, direction, antialias: bool):
    import SimpleITK as sitk

    if antialias:
        image = _antialias(image, spacing_xyz)
    res = sitk.ResampleImageFilter()
    res.SetOutputSpacing([float(s) for s in spacing_xyz])
    res.SetSize([int(n) for n in size_xyz])
    res.SetOutputOrigin([float(o) for o in origin_xyz])
    res.SetOutputDirection([float(v) for v in direction])
    res.SetInterpolator(sitk.sitkLinear)
    res.SetDefaultPixelValue(-1000.0)  # air outside the scan
    return res.Execute(image)


def resample_isotropic(path, spacing: float, antialias: bool = True):
    """Read a CT with SimpleITK and resample it to isotropic ``spacing`` mm (linear, air outside).

    The grid keeps the origin (first voxel centre) and direction; each axis gets round(n * s / spacing)
    voxels of exactly ``spacing``. With ``antialias`` a Gaussian (FWHM^2 = target^2 - source^2 along
    axes that coarsen) comes first, so thin vessels do not alias. Returns a SimpleITK image (float32 HU).
    Used to build the demo pair and mini's training data; extraction uses :func:`resample_volume`."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path), sitk.sitkFloat32)
    size = [max(1, int(round(n * s / spacing))) for n, s in zip(img.GetSize(), img.GetSpacing())]
    return _resample_sitk(img, size, [float(spacing)] * 3, img.GetOrigin(), img.GetDirection(), antialias)


def resample_volume(volume, grid, antialias: bool = True):
    """``volume`` resampled onto ``grid`` (a :class:`~napari_meddift.io.geometry.Grid`) in physical space.

    Linear interpolation in HU, air (-1000 HU) outside the scan; with ``antialias`` a Gaussian
    pre-filter along the axes that coarsen (as :func:`resample_isotropic`). The result is a
    :class:`~napari_meddift.io.volume.Volume` with the grid's geometry and the volume's name.
    """
    import SimpleITK as sitk

    from ..io.volume import Volume, volume_to_sitk

    image = _resample_sitk(volume_to_sitk(volume), grid.shape[::-1], grid.spacing[::-1], grid.origin[::-1],
                           grid.direction, antialias)
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image), dtype=np.float32)
    return Volume(array, tuple(grid.spacing), tuple(grid.origin), np.asarray(grid.direction).reshape(3, 3),
                  volume.name)
