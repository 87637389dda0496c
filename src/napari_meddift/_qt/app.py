"""``launch_explorer``: napari with a pair loaded and the explorer ready (used by ``meddift demo``)."""

from __future__ import annotations

import numpy as np

from ._layers import volume_layer_kwargs
from ._napari_private import hide_activity, show_activity

__all__ = ["launch_explorer"]


def add_pair_layers(viewer, source, target):
    """The pair's two image layers (the target hidden: it is shown in the docked target canvas)."""
    src_layer = viewer.add_image(source.array, **volume_layer_kwargs(source, name=source.name or "source"))
    tgt_layer = viewer.add_image(target.array, **volume_layer_kwargs(target, name=target.name or "target",
                                                                    visible=False))
    if tgt_layer.name == src_layer.name:
        tgt_layer.name = f"{tgt_layer.name} (target)"
    return src_layer, tgt_layer


def launch_explorer(source, target, src_store, tgt_store, landmarks=None, viewer=None, show: bool = True,
                    radius=None, truth=None, lung_mask=None, match_landmarks: bool = False,
                    layers=None):
    """Open napari with ``source`` (main canvas) and ``target`` (docked second canvas) ready to explore.

    ``source``/``target``: :class:`~napari_meddift.io.volume.Volume`; ``src_store``/``tgt_store``:
    descriptor stores (or their paths); ``landmarks``: optional (source_zyx, target_zyx) voxel
    arrays, shown in both viewers and listed in the Landmarks widget; ``truth``: a known mapping
    (``napari_meddift.explorer.FieldTruth``), else the landmarks serve as truth; ``lung_mask``:
    boolean lung mask of the target (per-region summary); ``match_landmarks``: match them all at
    once (in the background); ``radius``: the search window half-width, mm (a number or a
    ``Radius``; voxels as ``Radius(n, "vox")`` are taken as n times the target's largest spacing;
    None: the explorer's default; 0: the whole target). Returns the ``napari.Viewer`` (call
    ``napari.run()``).
    """
    import napari

    from ._feature_view import FeatureViewWidget
    from ._landmarks import LandmarksWidget
    from .explorer import ExplorerWidget

    if viewer is None:
        viewer = napari.Viewer(title="MedDIFT correspondence explorer", show=show)
    src_layer, tgt_layer = layers if layers is not None else add_pair_layers(viewer, source, target)
    explorer = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(explorer, name="Correspondence explorer", area="right")
    if radius is not None:
        from ..matching.window import Radius

        if isinstance(radius, Radius):
            radius = radius.value if radius.unit == "mm" else radius.value * max(target.spacing)
        explorer.state.radius = None if float(radius) == 0 else float(radius)
    explorer.connect_pair(src_layer, tgt_layer, src_store, tgt_store)
    if truth is not None:
        explorer.set_truth(truth)
    docks = []
    if landmarks is not None:
        lw = LandmarksWidget(viewer, explorer=explorer)
        docks.append(viewer.window.add_dock_widget(lw, name="Landmarks", area="right"))
        src_pts, tgt_pts = landmarks
        lw.set_pairs(np.asarray(src_pts, float), np.asarray(tgt_pts, float), lung_mask=lung_mask)
        if match_landmarks:
            lw.match()
    fv = FeatureViewWidget(viewer, explorer=explorer)
    docks.append(viewer.window.add_dock_widget(fv, name="Feature view (PCA)", area="right"))
    try:  # the feature-quality report (needs matplotlib, in the napari extra)
        from ._report import FeatureQualityWidget

        fq = FeatureQualityWidget(viewer, explorer=explorer)
        docks.append(viewer.window.add_dock_widget(fq, name="Feature quality", area="right"))
    except ImportError:  # pragma: no cover - depends on the install
        pass
    # [layers | source canvas | target canvas | explorer, landmarks, feature view, feature quality as tabs]
    explorer.arrange_docks(docks)
    # start at the centre of the source with a first map on screen
    centre = tuple(int(s) // 2 for s in np.shape(src_layer.data))
    explorer.show_query(centre)
    viewer.layers.selection.active = src_layer
    from qtpy.QtCore import QTimer

    QTimer.singleShot(150, viewer.reset_view)  # once the docks have their final sizes
    return viewer


def launch_demo(inhale, exhale, landmarks, prepare, radius: int | None = None, note=print):
    """``meddift demo``'s window, open at once: the pair is shown while ``prepare(progress)``
    (extracting or reusing the demo stores; returns ``(src_store, tgt_store, truth, lung_mask)``)
    runs on a worker with its progress in the activity dock; the explorer connects itself when
    it is done. ``note(text)``: one line for the terminal. Returns ``(viewer, task)``."""
    import napari

    from ._long_task import LongTask

    viewer = napari.Viewer(title="MedDIFT correspondence explorer")
    layers = add_pair_layers(viewer, inhale, exhale)
    viewer.layers.selection.active = layers[0]
    viewer.reset_view()

    def ready(result):
        hide_activity(viewer)  # it covered the canvas; the status bar's button reopens it
        src_store, tgt_store, truth, lung_mask = result
        launch_explorer(inhale, exhale, src_store, tgt_store, landmarks=landmarks, viewer=viewer, radius=radius,
                        truth=truth, lung_mask=lung_mask, match_landmarks=True, layers=layers)
        note("meddift demo: descriptors ready, explorer connected")

    def failed(exc):
        from ._long_task import error_text

        note(f"meddift demo: the demo descriptors could not be prepared: {error_text(exc)}")

    task = LongTask("Preparing the demo descriptors", prepare, ready, failed).start()
    show_activity(viewer)  # the extraction's bar in view, not behind the status-bar button
    return viewer, task
