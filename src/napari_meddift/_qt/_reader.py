"""npe2 readers: CT volumes and descriptor stores, each claiming only what it can read.

The volume reader takes NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr) and
DICOM (a .dcm/.ima file, read as its folder's series, or a folder of DICOM slices), each checked
by content (the file's magic bytes), and returns ``None`` for anything else: napari then uses
another reader. The store reader takes only napari-meddift descriptor stores (a zarr v3 group
whose attributes name our format); OME-Zarr and other zarr groups are left to their plugins.
Every layer carries the scan's full geometry (see ``_layers.py``).
"""

from __future__ import annotations

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


def get_volume_reader(path):
    """npe2 ``get_reader``: a reader for our CT formats (checked by content), else ``None``."""
    p = _single(path)
    if p is None:
        return None
    pp = Path(p)
    if pp.is_dir():
        return read_volume_layers if is_dicom_folder(pp) else None
    return read_volume_layers if is_volume_file(pp) else None


def read_volume_layers(path):
    """The volume as one Image layer in physical coordinates (a DICOM file opens its series)."""
    from ..io.volume import read_volume

    p = Path(_single(path))
    if p.is_file() and is_dicom_file(p):
        p = p.parent  # a DICOM series is a folder
    volume = read_volume(p)
    return [(volume.array, volume_layer_kwargs(volume, metadata={"meddift_path": str(p)}), "image")]


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
