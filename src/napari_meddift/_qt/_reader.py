"""npe2 readers: CT volumes (scale = spacing, translate = origin) and descriptor stores (PCA view)."""

from __future__ import annotations

from pathlib import Path

from ._layers import STORE_KEY, volume_layer_kwargs

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def _single(path):
    if isinstance(path, (list, tuple)):
        return str(path[0]) if len(path) == 1 else None
    return str(path)


def _is_store_dir(p: Path) -> bool:
    return p.is_dir() and (p.suffix == ".zarr" or (p / "zarr.json").is_file())


def _looks_like_dicom_dir(p: Path) -> bool:
    if not p.is_dir() or _is_store_dir(p):
        return False
    for i, f in enumerate(p.iterdir()):
        if i > 200:
            break
        if f.is_file():
            if f.suffix.lower() in (".dcm", ".ima"):
                return True
            try:
                with open(f, "rb") as fh:
                    head = fh.read(132)
                if head[128:132] == b"DICM":
                    return True
            except OSError:
                continue
    return False


def get_volume_reader(path):
    """A reader for NIfTI/MHA/NRRD files, a .dcm file's folder or a DICOM folder; None otherwise."""
    p = _single(path)
    if p is None:
        return None
    pp = Path(p)
    if pp.is_dir():
        return read_volume_layers if _looks_like_dicom_dir(pp) else None
    if p.lower().endswith(_VOLUME_SUFFIXES) or p.lower().endswith(".dcm"):
        return read_volume_layers
    return None


def read_volume_layers(path):
    from ..io.volume import read_volume

    p = Path(_single(path))
    if p.is_file() and p.suffix.lower() == ".dcm":
        p = p.parent  # a DICOM series is a folder
    volume = read_volume(p)
    return [(volume.array, volume_layer_kwargs(volume, metadata={"meddift_path": str(p)}), "image")]


def get_store_reader(path):
    """A reader for napari-meddift descriptor stores (.zarr folders); None for other paths."""
    p = _single(path)
    if p is None or not _is_store_dir(Path(p)):
        return None
    return read_store_layers


def read_store_layers(path, levels=None, max_grid: int = 96):
    """The store's fused descriptors as a PCA RGB image placed over the image it came from."""
    from ..pca import grid_geometry, pca_rgb
    from ..io.store import open_store

    store = open_store(_single(path))
    names = tuple(levels) if levels else tuple(store.level_names)
    view = pca_rgb(store.load_levels(names), store.image_shape, names, max_grid=max_grid)
    scale, translate = grid_geometry(view.grids[0], store.image_shape, store.spacing, store.origin)
    name = Path(store.path).name
    meta = {STORE_KEY: str(store.path), "meddift_pca_levels": list(names),
            "meddift_pca_explained": [float(e) for e in view.explained]}
    return [(view.rgb[0], {"name": f"{name} PCA ({'+'.join(names)})", "rgb": True, "scale": scale,
                           "translate": translate, "metadata": meta, "opacity": 0.8}, "image")]
