"""npe2 sample data: the packaged demo pair (inhale -> exhale), its lung masks and landmarks.

Every layer carries its scan's full geometry (napari world = ITK physical mm, see ``_layers.py``).
The landmark layers are Points in voxel indices with features: ``id`` (row of the landmark
files, the same in both layers) and ``motion_mm`` (the exact physical distance between the pair).
"""

from __future__ import annotations

import numpy as np

from ._layers import labels_layer_kwargs, points_layer_kwargs, volume_layer_kwargs


def demo_pair():
    """Layer data: inhale and exhale CT (Image), their lung masks (Labels), landmarks (Points)."""
    from ..synthetic.demo import load_demo_lungs, load_demo_pair

    inhale, exhale, src_pts, tgt_pts = load_demo_pair()
    lungs_in, lungs_ex = load_demo_lungs()
    src_name = inhale.name or "inhale"
    tgt_name = exhale.name or "exhale"
    motion = np.linalg.norm(exhale.index_to_physical(tgt_pts) - inhale.index_to_physical(src_pts), axis=1)
    features = {"id": np.arange(len(src_pts)), "motion_mm": np.round(motion, 2)}
    layers = [
        (inhale.array, volume_layer_kwargs(inhale, name=src_name), "image"),
        (exhale.array, volume_layer_kwargs(exhale, name=tgt_name, visible=False), "image"),
    ]
    for mask, vol, name, visible in ((lungs_in, inhale, src_name, False), (lungs_ex, exhale, tgt_name, False)):
        layers.append(
            (mask.astype(np.uint8), labels_layer_kwargs(vol, name=f"{name} lungs", visible=visible), "labels")
        )
    for pts, vol, name, color, visible in ((src_pts, inhale, src_name, "cyan", True),
                                           (tgt_pts, exhale, tgt_name, "lime", False)):
        layers.append((np.asarray(pts, float), points_layer_kwargs(
            vol, name=f"{name} landmarks", face_color=color, visible=visible,
            features={k: v.copy() for k, v in features.items()}), "points"))
    return layers
