"""Updating napari layers in place, and the geometry of the explorer's aids.

napari re-lays out a layer whenever ``.data`` gets a new array (colours, extents, events); the
live path instead writes into the existing array and redraws once. The aids (crosshairs and the
search window's outline) are napari vectors (N, 2, 3): start voxel and displacement (z, y, x).
"""

from __future__ import annotations

import numpy as np

from .._napari_private import refresh_blocker

__all__ = ["box_outline", "crosshair", "no_refresh", "set_points", "set_vectors", "set_visible"]


def set_visible(layer, value: bool) -> None:
    if layer.visible != bool(value):  # napari redraws on every assignment
        layer.visible = bool(value)


def no_refresh(layer):
    """napari's refresh blocker where it exists (one refresh per update instead of two)."""
    return refresh_blocker(layer)


def _refresh_now(layer) -> None:
    layer.refresh()


def _move_in_place(layer, new: np.ndarray, refresh) -> None:
    """Write ``new`` into ``layer.data`` in place when the shape is unchanged (setting ``.data``
    rebuilds colours and extents: several times slower); ``refresh(layer)`` redraws it then."""
    data = layer.data
    if data.shape == new.shape:
        if not np.array_equal(data, new):
            data[...] = new
            refresh(layer)
    else:
        layer.data = new


def set_points(layer, pts, refresh=_refresh_now) -> None:
    """Move the points (N, 3) of a Points layer, in place when their count is unchanged."""
    _move_in_place(layer, np.asarray(pts, float).reshape(-1, 3), refresh)


def set_vectors(layer, vecs, refresh=_refresh_now) -> None:
    """Move the vectors (N, 2, 3) of a Vectors layer, in place when their count is unchanged."""
    _move_in_place(layer, np.asarray(vecs, float), refresh)


def crosshair(point, shape) -> np.ndarray:
    """Three full-length lines through ``point`` along z, y and x: napari vectors (3, 2, 3).
    They run between voxel centres (0 .. n - 1), so they do not widen the viewer's slider grid."""
    p = np.asarray(point, float)
    out = np.zeros((3, 2, 3))
    for a in range(3):
        start = p.copy()
        start[a] = 0.0
        d = np.zeros(3)
        d[a] = float(shape[a]) - 1.0
        out[a] = (start, d)
    return out


def box_outline(point, lo, hi) -> np.ndarray:
    """The edges of box [lo, hi) (the outermost voxel centres, lo .. hi - 1) in the three planes
    through ``point``: napari vectors (12, 2, 3)."""
    p, lo, hi = np.asarray(point, float), np.asarray(lo, float), np.asarray(hi, float) - 1.0
    vecs = []
    for a in range(3):  # edge direction
        for b in range(3):  # plane (a, b); the third axis c stays at the point
            if b == a:
                continue
            c = 3 - a - b
            for edge in (lo[b], hi[b]):
                start = np.empty(3)
                start[a], start[b], start[c] = lo[a], edge, p[c]
                d = np.zeros(3)
                d[a] = hi[a] - lo[a]
                vecs.append((start, d))
    return np.asarray(vecs)
