"""Every landmark at a glance: points coloured by error in both viewers, truth -> prediction vectors.

Source landmarks in the source viewer, true targets in the target viewer, both Points layers
with napari features (index, error_mm, score, rivalry, psr: napari's features table shows
and sorts them) coloured by ``error_mm``; a Vectors layer from each truth to its prediction.
``state.min_error_mm`` hides the smaller errors. A click on a landmark (in either viewer)
calls ``on_pick(index)``.
"""

from __future__ import annotations

import numpy as np

from .._layers import same_geometry

__all__ = ["LandmarkLayers", "ERROR_COLORMAP"]

ERROR_COLORMAP = "turbo"
NAMES = ("landmarks (source)", "landmarks (truth)", "truth -> prediction")


class LandmarkLayers:
    """Creates and refreshes the three landmark layers (see the module docstring)."""

    def __init__(self, source_viewer, target_viewer, source_layer, target_layer, on_pick=None):
        self.source_viewer, self.target_viewer = source_viewer, target_viewer
        self.source_layer, self.target_layer = source_layer, target_layer
        self.on_pick = on_pick
        self.layers: dict[str, object] = {}
        self._press = None

    def _points(self, viewer, ref, name, data, features, vmax):
        kw = dict(features=features, face_color="error_mm", face_colormap=ERROR_COLORMAP,
                  face_contrast_limits=(0.0, vmax), border_color="white", border_width=0.05, size=4)
        if name in viewer.layers and viewer.layers[name].metadata.get("meddift_landmarks"):
            layer = viewer.layers[name]
            layer.data = data
            layer.features = features
            layer.face_color = "error_mm"
            layer.face_colormap = ERROR_COLORMAP
            layer.face_contrast_limits = (0.0, vmax)
            return layer
        layer = viewer.add_points(data, name=name, **kw, **same_geometry(ref))
        layer.metadata["meddift_landmarks"] = True
        return layer

    def show(self, landmarks, state) -> None:
        """(Re)draw ``landmarks`` (an explorer LandmarkSet) with ``state``'s filter and visibility."""
        if landmarks is None:
            return
        feats = landmarks.features()
        err = feats["error_mm"]
        feats = {k: v for k, v in feats.items()}
        feats["error_mm"] = np.where(np.isfinite(err), err, 0.0)
        vmax = float(np.nanmax(err)) if landmarks.matched and np.isfinite(err).any() else 1.0
        vmax = max(vmax, 1e-6)
        L = self.layers
        L["source"] = self._points(self.source_viewer, self.source_layer, NAMES[0], landmarks.source_zyx, feats, vmax)
        L["truth"] = self._points(self.target_viewer, self.target_layer, NAMES[1], landmarks.target_zyx, feats, vmax)
        if landmarks.matched:
            vec = np.stack([landmarks.target_zyx, landmarks.predicted - landmarks.target_zyx], axis=1)
            vfeat = {"error_mm": feats["error_mm"]}
            if NAMES[2] in self.target_viewer.layers:
                v = self.target_viewer.layers[NAMES[2]]
                v.data = vec
                v.features = vfeat
                v.edge_color = "error_mm"
                v.edge_contrast_limits = (0.0, vmax)
            else:
                v = self.target_viewer.add_vectors(vec, name=NAMES[2], features=vfeat, edge_color="error_mm",
                                                   edge_colormap=ERROR_COLORMAP, edge_contrast_limits=(0.0, vmax),
                                                   edge_width=0.4, vector_style="arrow",
                                                   **same_geometry(self.target_layer))
            L["vectors"] = v
        self.apply_filter(landmarks, state)

    def apply_filter(self, landmarks, state) -> None:
        if landmarks is None:
            return
        shown = landmarks.shown(float(state.min_error_mm))
        for key, layer in self.layers.items():
            if key == "vectors":
                layer.visible = bool(state.show_landmarks)
                # vectors have no 'shown': hidden ones are drawn with zero length
                if landmarks.matched:
                    d = landmarks.predicted - landmarks.target_zyx
                    d[~shown] = 0.0
                    layer.data = np.stack([landmarks.target_zyx, d], axis=1)
                continue
            layer.shown = shown
            layer.visible = bool(state.show_landmarks)

    def connect(self) -> None:
        """Listen for clicks in both viewers (whatever layer is active)."""
        for viewer in (self.source_viewer, self.target_viewer):
            if self._on_click not in viewer.mouse_drag_callbacks:
                viewer.mouse_drag_callbacks.append(self._on_click)

    def disconnect(self) -> None:
        for viewer in (self.source_viewer, self.target_viewer):
            if self._on_click in viewer.mouse_drag_callbacks:
                viewer.mouse_drag_callbacks.remove(self._on_click)

    def pick(self, viewer, position, view_direction=None, dims_displayed=None) -> int | None:
        """The index of the shown landmark under world ``position`` in ``viewer`` (None: none)."""
        layer = self.layers.get("source" if viewer is self.source_viewer else "truth")
        if layer is None or not layer.visible:
            return None
        idx = layer.get_value(position, view_direction=view_direction, dims_displayed=dims_displayed, world=True)
        return int(idx) if idx is not None and layer.shown[int(idx)] else None

    def _on_click(self, viewer, event):
        """A click (press and release without moving) on a landmark point picks it."""
        press = np.asarray(event.position, float)
        yield
        while event.type == "mouse_move":
            yield
        if np.linalg.norm(np.asarray(event.position, float) - press) > 1e-6:
            return
        idx = self.pick(viewer, event.position, event.view_direction, list(event.dims_displayed))
        if idx is not None and self.on_pick is not None:
            self.on_pick(idx)

    def remove(self) -> None:
        self.disconnect()
        for key, layer in list(self.layers.items()):
            viewer = self.source_viewer if key == "source" else self.target_viewer
            if layer in viewer.layers:
                viewer.layers.remove(layer)
        self.layers = {}
