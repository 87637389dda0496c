"""npe2 sample data: the packaged demo pair (inhale -> exhale) with its landmarks."""

from __future__ import annotations

import numpy as np

from ._layers import volume_layer_kwargs


def demo_pair():
    from ..synthetic.demo import load_demo_pair

    inhale, exhale, src_pts, tgt_pts = load_demo_pair()
    src_name = inhale.name or "inhale"
    tgt_name = exhale.name or "exhale"
    layers = [
        (inhale.array, volume_layer_kwargs(inhale, name=src_name), "image"),
        (exhale.array, volume_layer_kwargs(exhale, name=tgt_name, visible=False), "image"),
    ]
    for pts, vol, name, color in ((src_pts, inhale, f"{src_name} landmarks", "cyan"),
                                  (tgt_pts, exhale, f"{tgt_name} landmarks", "lime")):
        layers.append((np.asarray(pts, float), {
            "name": name, "scale": tuple(vol.spacing), "translate": tuple(vol.origin), "size": 4,
            "face_color": color, "visible": False,
        }, "points"))
    return layers
