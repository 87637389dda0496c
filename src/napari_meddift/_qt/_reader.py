"""npe2 readers: CT volumes, landmark files and descriptor stores, each claiming only what it can read.

The volume reader takes NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr) and
DICOM (a .dcm/.ima file, read as its series, or a folder of DICOM slices), each checked by
content (the file's magic bytes), then by header (SimpleITK ``ReadImageInformation``, no voxels
read): what is not a 3D scalar volume (2D, 4D, RGB, a single slice) is declined, so napari asks
another plugin. A selection of DICOM files opens one layer per series (the other files of a
series already opened a moment ago give no second copy).

The landmark reader takes Learn2Reg CSV (x,y,z voxel), DIR-Lab text (x y z voxel, 1-based) and
elastix point files (``point``: physical mm, ``index``: voxel) and returns a Points layer in the
world coordinates of the scan they belong to: the active 3D image layer of the current viewer
(else its first one); an elastix ``point`` file needs no scan. Other CSV/text files are declined.
The store reader takes only napari-meddift descriptor stores (a zarr v3 group
whose attributes name our format); OME-Zarr and other zarr groups are left to their plugins.
Every layer carries the scan's full geometry (see ``_layers.py``).
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

from ._layers import STORE_KEY, grid_layer_kwargs, volume_layer_kwargs

#: file endings the volume reader looks at (napari.yaml lists the same patterns)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
META_SUFFIXES = (".mha", ".mhd")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
#: at most this many files of a folder are sniffed for DICOM content
_DICOM_SNIFF = 64


def _single(path) -> str | None:
    if isinstance(path, (list, tuple)):
        return str(path[0]) if len(path) == 1 else None
    return str(path)


def _head(path: Path, n: int, gz: bool = False) -> bytes:
    try:
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError):
        return b""


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    return path.is_file() and _head(path, 132)[128:132] == b"DICM"


def is_dicom_folder(path: Path) -> bool:
    """True for a folder holding DICOM files (sniffs up to 64 files, by content not name)."""
    if not path.is_dir():
        return False
    seen = 0
    for f in sorted(path.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        if is_dicom_file(f):
            return True
        seen += 1
        if seen >= _DICOM_SNIFF:
            break
    return False


def is_volume_file(path: Path) -> bool:
    """True when the file's content matches its NIfTI / MetaImage / NRRD / DICOM name ending."""
    name = path.name.lower()
    if not path.is_file():
        return False
    if name.endswith(NIFTI_SUFFIXES):
        head = _head(path, 348, gz=name.endswith(".gz"))
        return head[344:348] in (b"n+1\0", b"ni1\0") or head[4:8] in (b"n+2\0", b"ni2\0")
    if name.endswith(META_SUFFIXES):
        text = _head(path, 2048).decode("latin-1").lower()
        return "ndims" in text and ("elementtype" in text or "objecttype" in text)
    if name.endswith(NRRD_SUFFIXES):
        return _head(path, 8).startswith(b"NRRD000")
    if name.endswith(DICOM_SUFFIXES):
        return is_dicom_file(path)
    return False


def header_info(path: Path) -> dict | None:
    """The header of an image file (SimpleITK ``ReadImageInformation``: no voxels are read):
    ``dimension``, ``size`` (x, y, z ...), ``components`` and, for DICOM, ``series`` (UID);
    None when SimpleITK cannot read it."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    info = {"dimension": reader.GetDimension(), "size": tuple(reader.GetSize()),
            "components": reader.GetNumberOfComponents()}
    if reader.HasMetaDataKey("0020|000e"):
        info["series"] = reader.GetMetaData("0020|000e").strip()
    return info


def is_3d_scalar(info: dict | None, dicom_slice: bool = False) -> bool:
    """True for a header of a 3D scalar volume (a DICOM slice: of a 2D scalar slice)."""
    if info is None or info["components"] != 1:
        return False
    size = [s for s in info["size"]]
    if dicom_slice:  # one slice of a series; GDCM reports it as 3D with one slice, or as 2D
        return len(size) in (2, 3) and (len(size) == 2 or size[2] == 1)
    return info["dimension"] == 3 and all(s > 1 for s in size)


def get_volume_reader(path):
    """npe2 ``get_reader``: a reader for our CT formats (checked by content, then by header:
    3D scalar volumes only), else ``None``."""
    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    if len(paths) > 1:  # a selection (stacked): DICOM slices only, one layer per series
        ok = all(is_dicom_file(p) and is_3d_scalar(header_info(p), dicom_slice=True) for p in paths)
        return read_volume_layers if ok else None
    pp = paths[0]
    if pp.is_dir():
        return read_volume_layers if is_dicom_folder(pp) else None
    if not is_volume_file(pp):
        return None
    return read_volume_layers if is_3d_scalar(header_info(pp), dicom_slice=is_dicom_file(pp)) else None


#: (folder, series UID) -> when a file of that series was last opened (monotonic s)
_RECENT_SERIES: dict[tuple[str, str], float] = {}
#: files of one series opened within this many seconds of each other give one layer
SERIES_WINDOW_S = 30.0


def _dicom_series_layer(folder: Path, uid: str | None):
    """One Image layer of the series ``uid`` in ``folder`` (``None``: the folder's largest), read and
    checked as ``read_volume`` reads a DICOM folder."""
    from ..io.volume import read_dicom_series

    volume = read_dicom_series(folder, uid)
    meta = {"meddift_path": str(folder)}
    if uid:
        meta["meddift_dicom_series"] = uid
    return (volume.array, volume_layer_kwargs(volume, metadata=meta), "image")


def _series_shown(key: tuple[str, str]) -> bool:
    """Whether the current viewer shows the series ``(folder, uid)`` (True without a viewer)."""
    try:
        import napari

        viewer = napari.current_viewer()
    except ImportError:  # pragma: no cover
        viewer = None
    if viewer is None:
        return True
    return any(isinstance(ly.metadata, dict) and ly.metadata.get("meddift_path") == key[0]
               and ly.metadata.get("meddift_dicom_series", "") == key[1] for ly in viewer.layers)


def read_volume_layers(path):
    """The volume as one Image layer in physical coordinates; DICOM files open their series,
    one layer per series of the selection (a file of a series that a file opened less than
    :data:`SERIES_WINDOW_S` ago gives napari's empty sentinel instead of a copy)."""
    import time

    from ..io.volume import read_volume

    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    if not all(p.is_file() and is_dicom_file(p) for p in paths):
        p = paths[0]
        if p.is_dir():
            return [_dicom_series_layer(p, None)]
        volume = read_volume(p)
        return [(volume.array, volume_layer_kwargs(volume, metadata={"meddift_path": str(p)}), "image")]
    series: dict[tuple[str, str], None] = {}
    for p in paths:
        info = header_info(p) or {}
        series.setdefault((str(p.parent), info.get("series", "")), None)
    now = time.monotonic()
    layers = []
    for folder, uid in series:
        key = (folder, uid)
        recent = _RECENT_SERIES.get(key)
        _RECENT_SERIES[key] = now
        if len(paths) == 1 and recent is not None and now - recent < SERIES_WINDOW_S and _series_shown(key):
            continue  # another file of this selection already opened the series
        layers.append(_dicom_series_layer(Path(folder), uid or None))
    return layers or [(None,)]


# --- landmark files ------------------------------------------------------------------------

LANDMARK_SUFFIXES = (".csv", ".txt", ".pts")
#: layer.metadata key: ``"voxel"`` (data are voxel indices of the scan in VOLUME_KEY) or
#: ``"world"`` (data are physical z, y, x mm; no scan)
POINTS_KEY = "meddift_points"


def _landmark_kind(path: Path) -> str | None:
    """``l2r``/``dirlab``/``elastix`` when the file is one of those, strictly (three numbers a
    row, or a header naming x,y,z; an elastix header and count), else None."""
    from ..errors import MedDiftError
    from ..io.landmarks import detect_format

    if not path.is_file() or not path.name.lower().endswith(LANDMARK_SUFFIXES):
        return None
    try:
        if path.stat().st_size > 64 * 2**20:
            return None
        fmt = detect_format(path)
        text = path.read_text(encoding="utf-8-sig")
    except (MedDiftError, OSError, UnicodeDecodeError):
        return None
    rows = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if fmt == "elastix":
        return "elastix"
    if fmt == "dirlab":
        return "dirlab" if all(len(r.split()) == 3 for r in rows) else None
    cells = [r.replace(";", ",").split(",") for r in rows]
    head = [c.strip().lower() for c in cells[0]]
    if {"x", "y", "z"} <= set(head):
        return "csv"
    return "l2r" if all(len(c) == 3 for c in cells) else None


def get_landmarks_reader(path):
    """npe2 ``get_reader``: a reader for Learn2Reg CSV, DIR-Lab and elastix point files."""
    p = _single(path)
    if p is None or _landmark_kind(Path(p)) is None:
        return None
    return read_landmark_layers


def current_scan():
    """The Volume geometry (no voxels) of the scan landmarks belong to: the current viewer's
    active 3D image layer, else its first; None without one."""
    try:
        import napari
    except ImportError:  # pragma: no cover
        return None
    from ..errors import MedDiftError
    from ._layers import layer_to_volume
    from ._writer import _scan

    viewer = napari.current_viewer()
    if viewer is None:
        return None
    from napari.layers import Image

    active = viewer.layers.selection.active
    images = [ly for ly in viewer.layers if isinstance(ly, Image) and not ly.rgb and ly.ndim == 3]
    for layer in ([active] if active in images else []) + images:
        try:  # the geometry our readers recorded (no copy of the voxels), else the layer's transforms
            vol = _scan({"metadata": layer.metadata}) or layer_to_volume(layer)
        except (MedDiftError, KeyError, TypeError, ValueError):
            continue
        return dataclasses.replace(vol, name=layer.name)
    return None


def read_landmark_layers(path, scan=None):
    """The landmark file as one Points layer. Voxel files (Learn2Reg, DIR-Lab, elastix
    ``index``) are placed on ``scan`` (default: :func:`current_scan`), so they sit in its world
    coordinates and save back to the same file; elastix ``point`` files (mm) go on the scan's
    grid when there is one, else they are world points."""
    import numpy as np

    from ..errors import MedDiftError
    from ..io.landmarks import read_points
    from ._layers import AXIS_LABELS, points_layer_kwargs

    p = Path(_single(path))
    kind = _landmark_kind(p)
    if kind is None:
        raise MedDiftError(f"{p}: is not a Learn2Reg CSV, DIR-Lab or elastix point file")
    scan = current_scan() if scan is None else scan
    first = p.read_text(encoding="utf-8-sig").split(None, 1)[0].lower() if kind == "elastix" else ""
    in_mm = kind == "elastix" and first == "point"
    meta = {"meddift_landmark_file": str(p)}
    name = p.name.split(".")[0]
    if in_mm:
        zyx_mm = read_points(p, fmt="elastix", spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
        if scan is None:
            kw = {"name": name, "units": ("mm",) * 3, "axis_labels": AXIS_LABELS, "size": 4,
                  "metadata": {**meta, POINTS_KEY: "world"}, "face_color": "orange"}
            return [(zyx_mm, kw, "points")]
        pts = scan.physical_to_index(zyx_mm)
    else:
        pts = read_points(p, fmt=kind)
        if scan is None:
            raise MedDiftError(
                f"{p.name} holds voxel indices of a scan; open that scan first (drop its image), then the landmark file"
            )
    kw = points_layer_kwargs(scan, name=f"{name} (on {scan.name})" if scan.name else name,
                             metadata={**meta, POINTS_KEY: "voxel"}, face_color="orange")
    return [(np.asarray(pts, float), kw, "points")]


def get_store_reader(path):
    """npe2 ``get_reader``: a reader for napari-meddift descriptor stores only, else ``None``."""
    from ..io.store import is_store

    p = _single(path)
    if p is None or not is_store(Path(p)):
        return None
    return read_store_layers


def read_store_layers(path, levels=None, max_grid: int = 96):
    """The store's fused descriptors as a PCA RGB image placed over the image it came from."""
    from ..pca import pca_rgb
    from ..io.store import open_store

    store = open_store(_single(path))
    names = tuple(levels) if levels else tuple(store.level_names)
    view = pca_rgb(store.load_levels(names), store.image_shape, names, max_grid=max_grid)
    name = Path(store.path).name
    meta = {STORE_KEY: str(store.path), "meddift_pca_levels": list(names),
            "meddift_pca_explained": [float(e) for e in view.explained]}
    kw = grid_layer_kwargs(store, view.grids[0])
    return [(view.rgb[0], {"name": f"{name} PCA ({'+'.join(names)})", "rgb": True, **kw,
                           "metadata": meta, "opacity": 0.8}, "image")]
