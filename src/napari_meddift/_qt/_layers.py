"""Small helpers between napari layers and the core's Volume / voxel conventions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

STORE_KEY = "meddift_store"  # layer.metadata key: path of the layer's descriptor store
VOLUME_KEY = "meddift_volume"  # layer.metadata key: geometry of the volume the layer shows


def volume_layer_kwargs(volume, name: str | None = None, **extra) -> dict:
    """napari Image kwargs for a :class:`~napari_meddift.io.volume.Volume`: scale = spacing, translate = origin."""
    meta = {
        VOLUME_KEY: {
            "spacing": tuple(float(s) for s in volume.spacing),
            "origin": tuple(float(o) for o in volume.origin),
            "direction": np.asarray(volume.direction, float).tolist(),
            "name": volume.name,
        }
    }
    meta.update(extra.pop("metadata", {}) or {})
    lo, hi = _ct_limits(volume.array)
    kw = {
        "name": name or volume.name or "volume",
        "scale": tuple(float(s) for s in volume.spacing),
        "translate": tuple(float(o) for o in volume.origin),
        "metadata": meta,
        "colormap": "gray",
        "contrast_limits": (lo, hi),
    }
    kw.update(extra)
    return kw


def _ct_limits(arr) -> tuple[float, float]:
    """A lung/soft-tissue friendly window when the data look like HU, else the data range."""
    a = np.asarray(arr)
    lo, hi = float(a.min()), float(a.max())
    if lo < -500 and hi > 200:  # Hounsfield units
        return -1000.0, 400.0
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def layer_to_volume(layer):
    """A Volume from a napari Image layer (3D, scalar); MedDiftError otherwise."""
    from ..errors import MedDiftError
    from ..io.volume import Volume

    if layer is None:
        raise MedDiftError("no image layer chosen; open a CT volume first")
    if getattr(layer, "rgb", False) or np.ndim(layer.data) != 3 or getattr(layer, "multiscale", False):
        raise MedDiftError(
            f"layer '{layer.name}' is not a 3D grey-value image (shape {np.shape(layer.data)}); choose a CT volume layer"
        )
    meta = layer.metadata.get(VOLUME_KEY, {}) if isinstance(layer.metadata, dict) else {}
    direction = np.asarray(meta.get("direction", np.eye(3)), float)
    return Volume(
        array=np.asarray(layer.data, dtype=np.float32),
        spacing=tuple(float(s) for s in layer.scale[-3:]),
        origin=tuple(float(t) for t in layer.translate[-3:]),
        direction=direction,
        name=str(meta.get("name") or layer.name),
    )


def layer_store_path(layer) -> Path | None:
    p = layer.metadata.get(STORE_KEY) if layer is not None and isinstance(layer.metadata, dict) else None
    return Path(p) if p else None


def world_to_voxel(layer, world) -> tuple[int, int, int] | None:
    """Nearest voxel (z, y, x) of ``layer`` at a world position, or None outside the data."""
    data_pos = np.asarray(layer.world_to_data(np.asarray(world, float)), float)[-3:]
    idx = np.rint(data_pos).astype(np.int64)
    shape = np.asarray(np.shape(layer.data)[-3:])
    if np.any(idx < 0) or np.any(idx >= shape):
        return None
    return tuple(int(v) for v in idx)  # type: ignore[return-value]


def voxel_to_world(layer, zyx) -> np.ndarray:
    return np.asarray(layer.data_to_world(np.asarray(zyx, float)), float)
