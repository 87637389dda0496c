"""npe2 writers: a Points layer saved as a Learn2Reg CSV or an elastix point file.

napari hands a writer the layer's data (N, 3) and its attributes (scale, translate, rotate,
shear, affine, metadata). The data-to-world map of those attributes gives each point's physical
position (ITK LPS mm, see ``_layers.py``), whatever layer the points were drawn on.

* elastix (``.txt``): ``point`` file of physical x y z in mm, valid for any Points layer.
* Learn2Reg (``.csv``): x,y,z voxel indices (0-based) of the scan the layer belongs to: with
  ``meddift_volume`` metadata (the readers' and sample's layers) physical positions are mapped
  into that scan's grid; a layer napari-meddift placed on a scan's grid without it (mm units,
  z/y/x labels, e.g. the explorer's points) holds voxel indices already. Other layers (napari's
  own new Points layer, in viewer units) are refused with a one-line reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._layers import AXIS_LABELS, VOLUME_KEY


def _physical_zyx(data, attributes: dict) -> np.ndarray:
    """(N, 3) physical points (z, y, x) mm of a Points layer's data, via its layer transforms."""
    from napari.utils.transforms import Affine

    from ..errors import MedDiftError

    pts = np.asarray(data, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise MedDiftError(f"only 3D points can be saved as landmarks; this layer holds points of shape {pts.shape}")
    phys = Affine(scale=attributes.get("scale", (1.0, 1.0, 1.0)),
                  translate=attributes.get("translate", (0.0, 0.0, 0.0)),
                  rotate=attributes.get("rotate"), shear=attributes.get("shear"), ndim=3)
    world = attributes.get("affine")
    world = Affine(affine_matrix=np.asarray(world, float)) if world is not None else Affine(ndim=3)
    return world.compose(phys)(pts) if len(pts) else pts.copy()


def _scan(attributes: dict):
    """The Volume geometry (empty array) a layer's ``meddift_volume`` metadata names, or None."""
    from ..io.volume import Volume

    meta = (attributes.get("metadata") or {}).get(VOLUME_KEY)
    if not meta:
        return None
    return Volume(np.zeros((1, 1, 1), np.float32), spacing=tuple(meta["spacing"]), origin=tuple(meta["origin"]),
                  direction=np.asarray(meta["direction"], float), name=str(meta.get("name", "")))


def _on_a_scan_grid(attributes: dict) -> bool:
    """True for a layer napari-meddift placed on a scan's voxel grid (mm units, z/y/x labels, no
    sub-box offset recorded): its data are that scan's voxel indices (e.g. the explorer's points)."""
    if (attributes.get("metadata") or {}).get("meddift_points") == "world":  # physical mm, no scan
        return False
    units = [str(u) for u in (attributes.get("units") or ())]
    labels = tuple(attributes.get("axis_labels") or ())
    return bool(units) and all(u in ("mm", "millimeter") for u in units) and labels == AXIS_LABELS


def write_elastix_points(path: str, data, attributes: dict) -> list[str]:
    """Save a Points layer as an elastix ``point`` file (physical x y z, mm)."""
    from ..io.landmarks import write_points_elastix

    write_points_elastix(path, _physical_zyx(data, attributes), units="mm")
    return [str(path)]


def write_l2r_points(path: str, data, attributes: dict) -> list[str]:
    """Save a Points layer as a Learn2Reg CSV (x,y,z voxel indices of the layer's scan, no header)."""
    from ..errors import MedDiftError
    from ..io.landmarks import write_points_csv

    scan = _scan(attributes)
    if scan is None and _on_a_scan_grid(attributes):
        write_points_csv(Path(path), np.asarray(data, dtype=np.float64).reshape(-1, 3), header=False)
        return [str(path)]
    if scan is None:
        name = attributes.get("name", "points")
        raise MedDiftError(
            f"points layer '{name}' is not tied to a scan, and a Learn2Reg CSV holds voxel indices of one; "
            "save it as an elastix point file (.txt, physical mm) or draw the points on a layer napari-meddift added"
        )
    voxels = scan.physical_to_index(_physical_zyx(data, attributes)).reshape(-1, 3)
    write_points_csv(Path(path), voxels, header=False)
    return [str(path)]
