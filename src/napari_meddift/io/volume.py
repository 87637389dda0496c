"""A CT volume with its geometry, in numpy order (z, y, x).

Reading and writing go through SimpleITK: NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd),
NRRD (.nrrd) and DICOM series (a folder). Every user-fixable problem raises
:class:`~napari_meddift.errors.MedDiftError` with one line naming the file and the way out.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from ..errors import MedDiftError

#: File name endings :func:`read_volume` and :func:`write_volume` accept (a folder is read as DICOM).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


@dataclass
class Volume:
    """Voxel array plus the geometry needed to map voxels to millimetres.

    ``array`` is float32 in numpy order (z, y, x), as SimpleITK returns it.
    ``spacing`` and ``origin`` are in the same (z, y, x) order, in mm; ``direction``
    is the 3x3 direction-cosine matrix in ITK's (x, y, z) convention. Together they place voxel
    (z, y, x) at an ITK physical point (LPS, mm): :meth:`index_to_physical`, :meth:`affine_zyx`.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    name: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def physical_size(self) -> tuple[float, float, float]:
        """Extent of the voxel grid in mm, (z, y, x): shape * spacing (edge to edge)."""
        return tuple(float(n) * float(s) for n, s in zip(self.shape, self.spacing))  # type: ignore[return-value]

    @property
    def direction_zyx(self) -> np.ndarray:
        """The direction matrix in (z, y, x) order, (3, 3): column k = world axis of index axis k."""
        return direction_zyx(self.direction)

    def affine_zyx(self) -> np.ndarray:
        """(4, 4) homogeneous index -> physical map in (z, y, x) order, mm (see :func:`affine_zyx`)."""
        return affine_zyx(self.spacing, self.origin, self.direction)

    def index_to_physical(self, zyx) -> np.ndarray:
        """Continuous voxel index (z, y, x), (3,) or (N, 3) -> ITK physical point (z, y, x) mm, LPS."""
        return voxel_to_world(self, zyx)

    def physical_to_index(self, zyx_mm) -> np.ndarray:
        """ITK physical point (z, y, x) mm, (3,) or (N, 3) -> continuous voxel index (z, y, x)."""
        return world_to_voxel(self, zyx_mm)


# --------------------------------------------------------------------------- geometry
#
# Physical ("world") coordinates are ITK's: millimetres in the scanner's LPS frame (x towards the
# patient's left, y towards posterior, z towards superior), written in (z, y, x) order like every
# array here. napari's world coordinates are exactly these (see ``_qt/_layers.py``).


def direction_zyx(direction) -> np.ndarray:
    """ITK's (x, y, z) direction-cosine matrix, (3, 3), rewritten for (z, y, x) order on both sides."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    return d[::-1, ::-1].copy()


def affine_zyx(spacing, origin=(0.0, 0.0, 0.0), direction=None) -> np.ndarray:
    """(4, 4) homogeneous matrix taking a voxel index (z, y, x) to its physical point (z, y, x) mm.

    ``spacing`` and ``origin`` in (z, y, x) order, mm; ``direction`` the 3x3 ITK matrix in
    (x, y, z) order (identity when None). Equals ITK's ``TransformContinuousIndexToPhysicalPoint``:
    physical = origin + direction @ diag(spacing) @ index.
    """
    sp = np.asarray(spacing, dtype=np.float64).reshape(3)
    org = np.asarray(origin, dtype=np.float64).reshape(3)
    d = direction_zyx(np.eye(3) if direction is None else direction)
    a = np.eye(4)
    a[:3, :3] = d * sp[None, :]
    a[:3, 3] = org
    return a


def lps_text(zyx_mm, decimals: int = 1) -> str:
    """A physical point (z, y, x) mm as the one-line text the widgets show: ``x .. y .. z .. mm (LPS)``."""
    z, y, x = (float(v) for v in np.asarray(zyx_mm, dtype=np.float64).reshape(3))
    return f"x {x:.{decimals}f}  y {y:.{decimals}f}  z {z:.{decimals}f} mm (LPS)"


def index_to_physical(affine: np.ndarray, zyx) -> np.ndarray:
    """Continuous indices (..., 3) (z, y, x) -> physical points (z, y, x) mm through a (4, 4)
    :func:`affine_zyx` (the one index -> physical formula of volumes and grids)."""
    return np.asarray(zyx, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]


def physical_to_index(affine: np.ndarray, zyx_mm) -> np.ndarray:
    """Physical points (..., 3) (z, y, x) mm -> continuous indices (z, y, x): the inverse of
    :func:`index_to_physical` through the same (4, 4) :func:`affine_zyx`."""
    return (np.asarray(zyx_mm, dtype=np.float64) - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T


def voxel_to_world(vol: Volume, zyx: ArrayLike) -> np.ndarray:
    """Voxel indices to world (physical) coordinates.

    Same as ITK's ``TransformContinuousIndexToPhysicalPoint`` (direction honoured), with both
    sides in zyx order: world_xyz = origin_xyz + direction @ (spacing_xyz * index_xyz).

    ``vol``: the volume whose geometry (spacing, origin, direction) places the voxels; any object
    with those three attributes (a Volume, _qt/_layers.LayerGeometry).
    ``zyx``: continuous voxel indices, shape (3,) or (N, 3), (z, y, x).

    Returns world points in mm, same shape, (z, y, x), float64.

    Raises MedDiftError: the last axis is not of length 3.
    """
    p = np.asarray(zyx, dtype=np.float64)
    if p.shape[-1:] != (3,):
        raise MedDiftError(f"voxel_to_world needs points of shape (3,) or (N, 3), got {p.shape}")
    # spacing/origin/direction read off ``vol`` (not Volume.affine_zyx): any object with the three
    # attributes maps, e.g. _qt/_layers.LayerGeometry, as before the formula moved here
    return index_to_physical(affine_zyx(vol.spacing, vol.origin, vol.direction), p)


def world_to_voxel(vol: Volume, zyx_mm: ArrayLike) -> np.ndarray:
    """World (physical) coordinates to voxel indices; the inverse of :func:`voxel_to_world`.

    ``vol``: the volume whose geometry (spacing, origin, direction) places the voxels; any object
    with those three attributes (a Volume, _qt/_layers.LayerGeometry).
    ``zyx_mm``: world points in mm, shape (3,) or (N, 3), (z, y, x).

    Returns continuous voxel indices, same shape, (z, y, x), float64.

    Raises MedDiftError: the last axis is not of length 3.
    """
    p = np.asarray(zyx_mm, dtype=np.float64)
    if p.shape[-1:] != (3,):
        raise MedDiftError(f"world_to_voxel needs points of shape (3,) or (N, 3), got {p.shape}")
    return physical_to_index(affine_zyx(vol.spacing, vol.origin, vol.direction), p)


# --------------------------------------------------------------------------- SimpleITK


def volume_from_sitk(image, name: str = "", source: str = "image") -> Volume:
    """A :class:`Volume` from a SimpleITK image.

    ``image``: a 3D scalar ``SimpleITK.Image``.
    ``name``: the volume's name (shown in napari, used in store names).
    ``source``: how to name the image in error messages (a file path, "layer ...").

    Returns the volume: array (z, y, x) float32, spacing and origin (z, y, x) in mm, ITK direction.

    Raises MedDiftError: not 3D, not scalar, empty, or holding NaN/inf values.
    """
    import SimpleITK as sitk

    dim = image.GetDimension()
    size = tuple(int(s) for s in image.GetSize())
    comps = image.GetNumberOfComponentsPerPixel()
    size_txt = "x".join(str(s) for s in size)
    if comps != 1:
        raise MedDiftError(
            f"{source}: has {comps} values per voxel (vector/colour image); "
            "give a single-channel (scalar) 3D CT instead"
        )
    if dim == 2:
        raise MedDiftError(
            f"{source}: is a 2D image ({size_txt}); give a 3D volume (a NIfTI/MHA/NRRD file or a DICOM folder)"
        )
    if dim != 3:
        raise MedDiftError(
            f"{source}: is a {dim}D image ({size_txt}); extract one 3D volume (e.g. one 4D-CT phase) and load that"
        )
    if 0 in size:
        raise MedDiftError(f"{source}: is empty (size {size_txt}); the file holds no voxels, re-export the volume")
    if 1 in size:
        raise MedDiftError(f"{source}: is a single slice (size {size_txt}), i.e. 2D; give a 3D volume")
    if "complex" in image.GetPixelIDTypeAsString():
        raise MedDiftError(
            f"{source}: holds complex voxel values ({image.GetPixelIDTypeAsString()}); give a real-valued "
            "CT (e.g. the magnitude, saved as a scalar image)"
        )
    check_geometry(image.GetSpacing()[::-1], image.GetOrigin()[::-1], image.GetDirection(), source)
    arr = sitk.GetArrayFromImage(image)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise MedDiftError(
            f"{source}: holds {bad} NaN/inf voxel value(s); fix or replace them (e.g. with -1000 HU) and save again"
        )
    return Volume(
        array=arr,
        spacing=tuple(float(s) for s in image.GetSpacing()[::-1]),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in image.GetOrigin()[::-1]),  # type: ignore[arg-type]
        direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
        name=name,
    )


def check_geometry(spacing_zyx, origin_zyx, direction, source: str = "image") -> None:
    """MedDiftError unless the geometry can place a voxel: finite positive spacing, finite origin,
    an orthonormal direction matrix (io/metadata.py's rules, shared with stores)."""
    from .metadata import geometry_problems

    problems = geometry_problems({"image_shape": [1, 1, 1], "spacing": list(spacing_zyx), "origin": list(origin_zyx),
                                  "direction": np.asarray(direction, dtype=np.float64).reshape(3, 3).tolist()})
    if problems:
        raise MedDiftError(f"{source}: has impossible geometry ({'; '.join(problems)}); fix the header (spacing, "
                           "origin, orientation) and save again")


#: NIfTI datatype codes of complex and multi-component voxels
_NIFTI_COMPLEX = {32: "complex64", 1792: "complex128", 2048: "complex256"}
_NIFTI_VECTOR = {128: "RGB", 2304: "RGBA"}


def _check_nifti(path: Path) -> None:
    """What ITK's NIfTI reader would paper over, found with nibabel before SimpleITK reads the file:
    a file that is not NIfTI, empty or truncated (ITK accepts it silently); a spacing of 0, NaN or inf
    (ITK substitutes 1 mm), a NaN quaternion, offset or sform row; complex and colour voxels; NaN/inf
    voxels (ITK turns them into 0). The header is read unfixed (``check=False``): nibabel would
    otherwise "fix" a zero pixdim to 1 as ITK does."""
    import nibabel as nib
    from nibabel.arrayproxy import ArrayProxy
    from nibabel.openers import ImageOpener

    def unreadable(exc: BaseException) -> MedDiftError:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        return MedDiftError(f"{path}: cannot be read, the file is truncated or corrupt ({first}); "
                            "copy or export it again")

    try:
        with ImageOpener(str(path), "rb") as f:
            block = f.read(540)
            kind = next((k for k in (nib.Nifti2Header, nib.Nifti1Header) if k.may_contain_header(block)), None)
            if len(block) < 348:
                raise MedDiftError(f"{path}: is too short to be a NIfTI file; copy or export it again")
            if kind is None:
                raise MedDiftError(f"{path}: is not a NIfTI file (bad header); check the file or its name ending")
            f.seek(0)
            try:
                hdr = kind.from_fileobj(f, check=False)
                dtype = hdr.get_data_dtype()
            except (OSError, EOFError, zlib.error):
                raise
            except Exception as exc:  # noqa: BLE001 - nibabel's many header errors are one user problem
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
                raise MedDiftError(f"{path}: has a corrupt NIfTI header ({first}); export the volume again") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise unreadable(exc) from None
    code = int(hdr["datatype"])
    if code in _NIFTI_COMPLEX:
        raise MedDiftError(f"{path}: holds complex voxel values ({_NIFTI_COMPLEX[code]}); give a real-valued CT "
                           "(e.g. the magnitude, saved as a scalar image)")
    if code in _NIFTI_VECTOR:
        raise MedDiftError(f"{path}: holds {_NIFTI_VECTOR[code]} colour voxels; give a single-channel (scalar) 3D CT")
    ndim = int(hdr["dim"][0])
    if not 1 <= ndim <= 7:
        raise MedDiftError(f"{path}: has a corrupt NIfTI header (dim[0]={ndim}); export the volume again")
    shape = hdr.get_data_shape()
    if any(d <= 0 for d in shape):
        raise MedDiftError(f"{path}: is empty (size {'x'.join(map(str, shape))}); the file holds no voxels, "
                           "re-export the volume")
    pixdim = np.asarray(hdr["pixdim"][1:4], dtype=np.float64)
    if not (np.isfinite(pixdim).all() and (pixdim != 0).all()):
        raise MedDiftError(f"{path}: has voxel spacing {pixdim.tolist()} in its header (pixdim); spacing must be "
                           "finite and non-zero: fix the header and save again")
    bad = []
    if int(hdr["qform_code"]) > 0:
        q = [float(hdr[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")]
        if not np.isfinite(q).all():
            bad.append(f"the qform (quaternion/offset {q}) holds NaN/inf")
    if int(hdr["sform_code"]) > 0:
        rows = np.asarray([hdr["srow_x"], hdr["srow_y"], hdr["srow_z"]], dtype=np.float64)
        if not np.isfinite(rows).all():
            bad.append("the sform rows hold NaN/inf")
        elif abs(np.linalg.det(rows[:, :3])) < 1e-12:
            bad.append("the sform matrix is singular")
    if bad:
        raise MedDiftError(f"{path}: has an impossible orientation in its header ({'; '.join(bad)}); fix the header "
                           "and save again")
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    if slope != 0 and not (np.isfinite(slope) and np.isfinite(inter)):
        raise MedDiftError(f"{path}: has a NaN/inf intensity scaling (scl_slope {slope}, scl_inter {inter}); "
                           "fix the header and save again")
    offset = max(int(hdr.get_data_offset()), kind.single_vox_offset)
    try:  # the raw voxels (memory-mapped when not compressed): nibabel reports a short file
        raw = ArrayProxy(str(path), (shape, dtype, offset)).get_unscaled()
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        short = re.search(r"Expected (\d+) bytes, got (\d+)", str(exc))
        if short:
            raise MedDiftError(f"{path}: is truncated ({short[2]} of {short[1]} bytes of image data); copy or download "
                               "it again") from None
        raise unreadable(exc) from None
    if np.issubdtype(raw.dtype, np.floating):
        flat = raw.reshape(-1, order="A")
        step = 1 << 22
        bad_voxels = sum(int(flat[i : i + step].size - np.count_nonzero(np.isfinite(flat[i : i + step])))
                         for i in range(0, flat.size, step))
        if bad_voxels:
            raise MedDiftError(
                f"{path}: holds {bad_voxels} NaN/inf voxel value(s) (a NIfTI reader would show them as 0); "
                "fix or replace them (e.g. with -1000 HU) and save again"
            )


#: MetaImage header keys holding geometry, and how many numbers each must be (per dimension: 3)
_META_GEOMETRY = {"elementspacing": 3, "elementsize": 3, "offset": 3, "origin": 3, "position": 3,
                  "transformmatrix": 9, "rotation": 9, "orientation": 9}


def _check_meta_header(path: Path) -> None:
    """The raw MetaImage (.mha/.mhd) header: ITK reads a NaN offset as 0 and a negative spacing as
    a flipped axis; both are refused here, before SimpleITK reads the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise MedDiftError(f"{path}: cannot be read ({exc.strerror or exc}); check the path and permissions") from None
    for raw in head.split(b"\n"):
        key, sep, value = raw.decode("latin-1").partition("=")
        key = key.strip().lower()
        if key == "elementdatafile":
            break
        if not sep or key not in _META_GEOMETRY:
            continue
        try:
            numbers = [float(v) for v in value.split()]
        except ValueError:
            numbers = []
        if len(numbers) != _META_GEOMETRY[key] or not all(np.isfinite(numbers)):
            raise MedDiftError(f"{path}: has an impossible {key} in its header ({value.strip()[:60]!r}); fix the "
                               "header and save again")
        if _META_GEOMETRY[key] == 9:
            from .metadata import direction_problem

            problem = direction_problem(numbers)
            if problem:
                raise MedDiftError(f"{path}: has an impossible {key} in its header ({problem}); fix the header and "
                                   "save again")
        if key in ("elementspacing", "elementsize") and min(numbers) <= 0:
            raise MedDiftError(
                f"{path}: has voxel spacing {value.strip()[:60]} in its header; spacing must be positive: "
                "fix the header and save again"
            )


def volume_to_sitk(volume: Volume):
    """The SimpleITK image of a :class:`Volume`.

    ``volume``: array (z, y, x), spacing/origin (z, y, x) mm, direction.

    Returns a float32 ``SimpleITK.Image`` with the same geometry (x, y, z order, as ITK has it).

    Raises MedDiftError: the array is not 3D.
    """
    import SimpleITK as sitk

    arr = np.asarray(volume.array)
    if arr.ndim != 3:
        raise MedDiftError(f"volume '{volume.name}' has a {arr.ndim}D array {arr.shape}; a Volume must be 3D (z, y, x)")
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    image.SetSpacing([float(s) for s in volume.spacing[::-1]])
    image.SetOrigin([float(o) for o in volume.origin[::-1]])
    image.SetDirection([float(v) for v in np.asarray(volume.direction, dtype=np.float64).reshape(9)])
    return image


# --------------------------------------------------------------------------- reading


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in VOLUME_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _stem(path: Path) -> str:
    s = _suffix(path)
    return path.name[: -len(s)] if s and path.name.lower().endswith(s) else path.name


def _check_dicom_series(path: Path, files, in_series: set[str]) -> None:
    """A DICOM series that ITK would stack without a word: files of the folder that are DICOM but
    belong to no series (truncated or corrupt slices, which GDCM drops), slices at one position,
    and unevenly spaced slices (a missing slice)."""
    import SimpleITK as sitk

    try:
        entries = [e for e in os.scandir(path) if e.is_file()]
    except OSError:
        entries = []
    dropped = []
    for e in entries:
        if os.path.abspath(e.path) in in_series:
            continue
        try:
            with open(e.path, "rb") as f:
                magic = f.read(132)[128:]
        except OSError:
            continue
        if magic == b"DICM":
            dropped.append(e.name)
    if dropped:
        raise MedDiftError(
            f"{path}: {len(dropped)} DICOM file(s) cannot be read as part of a series (e.g. {dropped[0]}: "
            "truncated or corrupt); copy the series again"
        )
    positions, normal = [], None
    info = sitk.ImageFileReader()
    for f in files:
        info.SetFileName(f)
        try:
            info.ReadImageInformation()
            pos = [float(v) for v in info.GetMetaData("0020|0032").split("\\")]
            if normal is None:
                o = [float(v) for v in info.GetMetaData("0020|0037").split("\\")]
                normal = np.cross(o[:3], o[3:6])
        except (RuntimeError, ValueError, IndexError):
            return  # no usable position tags: ITK's own ordering is all there is
        positions.append(float(np.dot(pos, normal)))
    if len(positions) < 2 or normal is None or not np.isfinite(positions).all():
        return
    d = np.diff(np.sort(positions))
    if (d < 1e-3).any():
        raise MedDiftError(f"{path}: {int((d < 1e-3).sum()) + 1} slices of the series sit at the same position; it is "
                           "not one volume (several series or phases mixed?): give a folder with one series")
    gap = float(np.median(d))
    if d.max() - d.min() > 0.01 * gap + 1e-3:
        raise MedDiftError(f"{path}: the slices are unevenly spaced ({d.min():.3g} to {d.max():.3g} mm apart): a slice "
                           "is missing or the series is mixed; copy the complete series")


def read_dicom_series(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """One DICOM series of the folder ``path``: ``series_uid``, or the largest when it is None or not
    there. Its slices are checked (complete, distinct, evenly spaced) before it is read; every problem
    is a MedDiftError naming the folder."""
    import SimpleITK as sitk

    path = Path(path)
    reader = sitk.ImageSeriesReader()
    try:
        series = reader.GetGDCMSeriesIDs(str(path)) or ()
    except RuntimeError:
        series = ()
    if not series:
        raise MedDiftError(
            f"{path}: is a folder without a DICOM series; give a folder of DICOM slices or a .nii.gz/.mha/.nrrd file"
        )
    all_files = {sid: reader.GetGDCMSeriesFileNames(str(path), sid) for sid in series}
    files = all_files[series_uid] if series_uid in all_files else max(all_files.values(), key=len)
    _check_dicom_series(path, files, {os.path.abspath(f) for group in all_files.values() for f in group})
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise MedDiftError(
            f"{path}: the DICOM series cannot be read ({msg}); check that all slices are complete"
        ) from None
    return volume_from_sitk(image, name=path.name, source=str(path))


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D CT.

    ``path``: a .nii/.nii.gz/.mha/.mhd/.nrrd file or a DICOM series folder (a folder holding
    several series gives the one with the most files).

    Returns the volume: array (z, y, x) float32 (HU for CT), spacing and origin (z, y, x) in mm,
    ITK direction; named after the file.

    Raises MedDiftError: no such file, a single DICOM file, an unsupported ending, a corrupt, empty
    or non-3D image.
    """
    import SimpleITK as sitk

    from .paths import check_not_special

    path = check_not_special(path, "image")
    if not path.exists():
        raise MedDiftError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        return read_dicom_series(path)
    suffix = _suffix(path)
    if suffix == ".dcm":
        raise MedDiftError(f"{path}: is a single DICOM file; give the folder holding the whole series")
    if suffix not in VOLUME_SUFFIXES:
        raise MedDiftError(
            f"{path}: unsupported file type '{suffix or path.name}'; use .nii/.nii.gz/.mha/.mhd/.nrrd or a DICOM folder"
        )
    if suffix in (".nii", ".nii.gz"):
        _check_nifti(path)
    elif suffix in (".mha", ".mhd"):
        _check_meta_header(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        text = str(exc)
        if "size is zero" in text:
            raise MedDiftError(
                f"{path}: is empty (an axis of size 0); the file holds no voxels, re-export the volume"
            ) from None
        raise MedDiftError(
            f"{path}: cannot be read, the file is corrupt, truncated or not a {suffix} image; export it again"
        ) from None
    return volume_from_sitk(image, name=_stem(path), source=str(path))


def write_volume(volume: Volume, path: str | os.PathLike) -> None:
    """Write a :class:`Volume` as float32, keeping its geometry.

    ``volume``: array (z, y, x), spacing/origin (z, y, x) mm, direction.
    ``path``: a .nii/.nii.gz/.mha/.mhd/.nrrd file; missing folders are created.

    Raises MedDiftError: an unsupported ending, a volume that is not 3D, or a file that cannot be
    written (full disk, read-only folder: the file that was there is kept).
    """
    path = Path(path).expanduser()
    suffix = _suffix(path)
    if suffix not in VOLUME_SUFFIXES:
        raise MedDiftError(
            f"{path}: cannot write '{suffix or path.name}'; use a name ending in .nii.gz, .nii, .mha, .mhd or .nrrd"
        )
    from .outputs import write_image

    write_image(volume_to_sitk(volume), path, "output")  # whole or not at all (io/outputs.py)
