"""napari layer geometry: every layer we add sits in ITK physical coordinates.

napari's world coordinates are ITK's physical ones: millimetres, LPS (x towards the patient's
left, y towards posterior, z towards superior), in (z, y, x) order. A layer holding voxel data
(an image, labels, points in voxel indices, a similarity map) gets

* ``scale`` = voxel spacing (z, y, x) mm (times the grid step for coarser maps),
* ``affine`` = the scan's direction matrix in (z, y, x) order (rotation/reflection only),
* ``translate`` = the scan's origin expressed along the scan's own axes, ``D^-1 @ origin``
  (so the origin itself when the direction is the identity), plus the offset of the layer's
  first element inside the scan's voxel grid in mm for sub-boxes (:func:`box_translate`),
* ``units`` = mm and ``axis_labels`` = (z, y, x),

so that ``layer.data_to_world(index)`` = ``D @ (spacing * index + translate)`` = ITK's
``TransformContinuousIndexToPhysicalPoint`` (in z, y, x order). In napari's default 2D view of
(y, x) the world y axis points down: anterior is up and the patient's left is on the right,
the usual radiological orientation.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..io.volume import affine_zyx
from ..io.volume import voxel_to_world as _voxel_to_world
from ..io.volume import world_to_voxel as _world_to_voxel

STORE_KEY = "meddift_store"  # layer.metadata key: path of the layer's descriptor store
VOLUME_KEY = "meddift_volume"  # layer.metadata key: geometry of the volume the layer shows

#: units and axis labels of every layer we add (napari world = ITK physical, z, y, x order)
UNITS = ("mm", "mm", "mm")
AXIS_LABELS = ("z", "y", "x")


# --------------------------------------------------------------------------- geometry kwargs


def direction_affine(direction=None) -> np.ndarray:
    """(4, 4) napari ``affine`` (z, y, x) holding a scan's direction only (ITK 3x3, x, y, z order)."""
    return affine_zyx((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)


def geometry_kwargs(spacing, origin=(0.0, 0.0, 0.0), direction=None, offset_mm=(0.0, 0.0, 0.0)) -> dict:
    """napari kwargs (scale, translate, affine, units, axis_labels) for data on a scan's voxel grid.

    ``spacing`` is the data's step (z, y, x) mm; ``offset_mm`` the position of data index 0 in
    the scan's voxel grid, in mm along the scan's axes (index offset * spacing);
    ``origin``/``direction`` as in :class:`~napari_meddift.io.volume.Volume`.
    """
    aff = direction_affine(direction)
    along_axes = np.linalg.solve(aff[:3, :3], np.asarray(origin, dtype=np.float64).reshape(3))
    return {
        "scale": tuple(float(s) for s in spacing),
        "translate": tuple(float(t + o) for t, o in zip(along_axes, np.asarray(offset_mm, float).reshape(3))),
        "affine": aff,
        "units": UNITS,
        "axis_labels": AXIS_LABELS,
    }


def volume_geometry_kwargs(volume) -> dict:
    """:func:`geometry_kwargs` of a :class:`~napari_meddift.io.volume.Volume` (or a descriptor store)."""
    return geometry_kwargs(volume.spacing, volume.origin, getattr(volume, "direction", None))


def _meta(volume, extra: dict) -> dict:
    meta = {
        VOLUME_KEY: {
            "spacing": tuple(float(s) for s in volume.spacing),
            "origin": tuple(float(o) for o in volume.origin),
            "direction": np.asarray(volume.direction, float).tolist(),
            "name": volume.name,
        }
    }
    meta.update(extra.pop("metadata", {}) or {})
    return meta


def volume_layer_kwargs(volume, name: str | None = None, **extra) -> dict:
    """napari Image kwargs for a :class:`~napari_meddift.io.volume.Volume`: full scan geometry, CT window."""
    lo, hi = _ct_limits(volume.array)
    kw = {
        "name": name or volume.name or "volume",
        **volume_geometry_kwargs(volume),
        "metadata": _meta(volume, extra),
        "colormap": "gray",
        "contrast_limits": (lo, hi),
    }
    kw.update(extra)
    return kw


def labels_layer_kwargs(volume, name: str | None = None, **extra) -> dict:
    """napari Labels kwargs for a mask on ``volume``'s voxel grid (same geometry as the image)."""
    kw = {"name": name or f"{volume.name or 'volume'} labels", **volume_geometry_kwargs(volume),
          "metadata": _meta(volume, extra), "opacity": 0.4}
    kw.update(extra)
    return kw


def points_layer_kwargs(volume, name: str | None = None, **extra) -> dict:
    """napari Points kwargs for points given as voxel indices (z, y, x) of ``volume``."""
    kw = {"name": name or f"{volume.name or 'volume'} points", **volume_geometry_kwargs(volume),
          "metadata": _meta(volume, extra), "size": 4}
    kw.update(extra)
    return kw


def grid_layer_kwargs(volume, grid_shape, **extra) -> dict:
    """Geometry kwargs for a coarser grid spanning ``volume``'s image (align_corners=False nodes).

    Node i of an axis with n nodes over N voxels sits at voxel (i + 0.5) * N / n - 0.5 (as
    :func:`napari_meddift.pca.grid_geometry`). ``volume`` may also be a descriptor store.
    """
    from ..pca import grid_geometry

    image_shape = getattr(volume, "image_shape", None) or volume.shape
    scale, offset = grid_geometry(grid_shape, image_shape, volume.spacing, (0.0, 0.0, 0.0))
    kw = geometry_kwargs(scale, volume.origin, getattr(volume, "direction", None), offset)
    kw.update(extra)
    return kw


def same_geometry(layer) -> dict:
    """Geometry kwargs (scale, translate, affine, units, axis_labels) copied from a napari layer."""
    return {
        "scale": tuple(float(s) for s in layer.scale[-3:]),
        "translate": tuple(float(t) for t in layer.translate[-3:]),
        "affine": np.asarray(layer.affine.affine_matrix, float)[-4:, -4:].copy(),
        "units": UNITS,
        "axis_labels": AXIS_LABELS,
    }


def box_translate(layer, offset_zyx) -> tuple[float, float, float]:
    """``translate`` for a sub-box whose voxel 0 sits at voxel ``offset_zyx`` of ``layer``.

    Give the box layer ``same_geometry(layer)`` and then this translate (not a world point:
    it is measured along the scan's axes; the direction stays in the box layer's ``affine``).
    """
    off = np.asarray(offset_zyx, float).reshape(3)
    return tuple(float(t + s * o) for t, s, o in zip(layer.translate[-3:], layer.scale[-3:], off))  # type: ignore[return-value]


def layer_affine_zyx(layer) -> np.ndarray:
    """(4, 4) data index (z, y, x) -> napari world = physical (z, y, x) mm map of a 3D layer."""
    o = np.asarray(layer.data_to_world(np.zeros(3)), float)[-3:]
    m = np.eye(4)
    for k in range(3):
        m[:3, k] = np.asarray(layer.data_to_world(np.eye(3)[k]), float)[-3:] - o
    m[:3, 3] = o
    return m


# --------------------------------------------------------------------------- layers -> core


def _ct_limits(arr) -> tuple[float, float]:
    """A lung/soft-tissue friendly window when the data look like HU, else the data range."""
    a = np.asarray(arr)
    lo, hi = float(a.min()), float(a.max())
    if lo < -500 and hi > 200:  # Hounsfield units
        return -1000.0, 400.0
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


class LayerGeometry(NamedTuple):
    """A 3D layer's voxel geometry, as a :class:`~napari_meddift.io.volume.Volume` holds it:
    ``shape``, ``spacing`` and ``origin`` (z, y, x; mm), ``direction`` (3x3, ITK x, y, z order)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray


def layer_geometry(layer) -> LayerGeometry:
    """The voxel geometry of a 3D layer, read from its data-to-world map (any reader's layer:
    scale/translate only, or a full affine). A zero scale gives a zero spacing (callers refuse it)."""
    m = layer_affine_zyx(layer)
    lin = m[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    d_zyx = lin / np.where(spacing > 0, spacing, 1.0)[None, :]
    return LayerGeometry(
        shape=tuple(int(n) for n in np.shape(layer.data)[-3:]),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        origin=tuple(float(t) for t in m[:3, 3]),  # type: ignore[arg-type]
        direction=d_zyx[::-1, ::-1].copy(),
    )


def layer_to_volume(layer):
    """A Volume from a napari Image layer (3D, scalar), geometry read from its transforms.

    Spacing, origin and direction come from the layer's data-to-world map
    (:func:`layer_geometry`), so a layer opened by any reader (scale/translate only, or a full
    affine) gives the right physical geometry.
    """
    from ..errors import MedDiftError
    from ..io.volume import Volume

    if layer is None:
        raise MedDiftError("no image layer chosen; open a CT volume first")
    if getattr(layer, "rgb", False) or np.ndim(layer.data) != 3 or getattr(layer, "multiscale", False):
        raise MedDiftError(
            f"layer '{layer.name}' is not a 3D grey-value image (shape {np.shape(layer.data)}); "
            "choose a CT volume layer"
        )
    meta = layer.metadata.get(VOLUME_KEY, {}) if isinstance(layer.metadata, dict) else {}
    geo = layer_geometry(layer)
    if min(geo.spacing) <= 0:
        raise MedDiftError(f"layer '{layer.name}' has a zero scale; set a positive voxel size (mm) in its scale")
    return Volume(
        array=np.asarray(layer.data, dtype=np.float32),
        spacing=geo.spacing,
        origin=geo.origin,
        direction=geo.direction,
        name=str(meta.get("name") or layer.name),
    )


def layer_store_path(layer) -> Path | None:
    p = layer.metadata.get(STORE_KEY) if layer is not None and isinstance(layer.metadata, dict) else None
    return Path(p) if p else None


def world_to_voxel(layer, world) -> tuple[int, int, int] | None:
    """Nearest voxel (z, y, x) of ``layer`` at a world (= physical, mm) position, or None outside the data.

    A thin wrapper: the layer's geometry (:func:`layer_geometry`) into the core's one map,
    :func:`napari_meddift.io.volume.world_to_voxel`, rounded to the nearest voxel. ``world`` may
    have more axes than the layer (a viewer position): its last three are (z, y, x).
    """
    geo = layer_geometry(layer)
    idx = np.rint(_world_to_voxel(geo, np.asarray(world, float)[-3:])).astype(np.int64)
    if np.any(idx < 0) or np.any(idx >= np.asarray(geo.shape)):
        return None
    return tuple(int(v) for v in idx)  # type: ignore[return-value]


def voxel_to_world(layer, zyx) -> np.ndarray:
    """World = ITK physical position (z, y, x) mm of a voxel index (z, y, x) of ``layer``.

    A thin wrapper: the layer's geometry (:func:`layer_geometry`) into the core's one map,
    :func:`napari_meddift.io.volume.voxel_to_world`.
    """
    return _voxel_to_world(layer_geometry(layer), zyx)
