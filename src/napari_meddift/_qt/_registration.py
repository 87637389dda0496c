"""Registration dock (magicgui): a dense field from two layers' descriptor stores, shown in napari.

Thin: the core's :func:`napari_meddift.registration.register_stores` does the work on a napari
worker (off the GUI thread) through the shared ``TaskPanel`` (progress in the dock and napari's
activity dock, Cancel, one red line per problem); Cancel makes the progress callback raise
CancelledError inside the core. Results appear as layers on the source grid: the
warped target, a difference or checkerboard view against the source, the deformation grid (a
regular grid in the target, pulled back through the field) and the Jacobian-determinant map.
"""

from __future__ import annotations

import time

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox

from ..errors import MedDiftError
from ._layers import geometry_kwargs, layer_store_path, layer_to_volume
from ._task_panel import TaskPanel

__all__ = ["FIELD_KEY", "RegistrationWidget", "checkerboard", "grid_image"]

VIEWS = ("difference", "checkerboard")
#: source layer metadata key holding the last DisplacementField (for the explorer: field.map_points(zyx))
FIELD_KEY = "meddift_field"


def checkerboard(a: np.ndarray, b: np.ndarray, tile: int = 8) -> np.ndarray:
    """Alternate cubes of ``tile`` voxels from a and b (same shape, z, y, x)."""
    idx = np.indices(a.shape).sum(0) if tile <= 0 else sum(np.indices(a.shape) // int(tile))
    return np.where(idx % 2 == 0, a, b).astype(np.float32)


def grid_image(shape, every: int = 6) -> np.ndarray:
    """1 on grid planes every ``every`` voxels along y and x (lines seen in every z slice), else 0."""
    img = np.zeros(shape, np.float32)
    img[:, ::every, :] = 1.0
    img[:, :, ::every] = 1.0
    return img


class RegistrationWidget(Container):
    """The "Registration" dock widget."""

    def __init__(self, napari_viewer):
        from ..registration import RegistrationSettings as S

        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.source = ComboBox(label="Source layer", choices=self._choices)
        self.target = ComboBox(label="Target layer", choices=self._choices)
        self.grid_spacing = SpinBox(label="Grid spacing (vox)", min=1, max=16, value=S.grid_spacing)
        self.search_radius = SpinBox(label="Search radius (vox)", min=1, max=40, value=S.search_radius)
        self.search_step = SpinBox(label="Search step (vox)", min=1, max=8, value=S.search_step)
        self.smoothness = FloatSpinBox(label="Smoothness", min=0.0, max=100.0, step=0.01, value=S.smoothness)
        self.iterations = SpinBox(label="Adam iterations", min=0, max=1000, value=S.iterations)
        self.inverse = CheckBox(text="inverse consistent", value=False)
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"], value="auto")
        self.view = ComboBox(label="Compare as", choices=list(VIEWS), value="difference")
        self.panel = TaskPanel("registration", "Register")
        self.run_button, self.cancel_button, self.progress, self.message, self.error = self.panel.widgets
        self.extend([self.source, self.target, self.grid_spacing, self.search_radius, self.search_step,
                     self.smoothness, self.iterations, self.inverse, self.device, self.view, *self.panel.widgets])
        self.run_button.changed.connect(self.start)
        self.view.changed.connect(lambda *_: self._show_compare())
        self.last_result = None  # RegistrationResult of the last run
        self._warped = None
        self._source_volume = None
        self.viewer.layers.events.inserted.connect(self._reset)
        self.viewer.layers.events.removed.connect(self._reset)
        self._reset()

    # ------------------------------------------------------------------ choices

    def _choices(self, *_):
        from napari.layers import Image

        return [ly.name for ly in self.viewer.layers
                if isinstance(ly, Image) and not ly.rgb and ly.ndim == 3 and not ly.name.startswith("registration:")]

    def _reset(self, *_):
        self.source.reset_choices()
        self.target.reset_choices()
        names = self._choices()
        if len(names) >= 2 and (self.target.value is None or self.target.value == self.source.value):
            self.target.value = names[1] if self.source.value == names[0] else names[0]

    def settings(self):
        from ..registration import RegistrationSettings

        s = RegistrationSettings(grid_spacing=int(self.grid_spacing.value), search_radius=int(self.search_radius.value),
                                 search_step=int(self.search_step.value), smoothness=float(self.smoothness.value),
                                 iterations=int(self.iterations.value), inverse_consistent=bool(self.inverse.value),
                                 device=str(self.device.value))
        s.check()
        return s

    def _inputs(self):
        from ..io.store import open_store

        names = (self.source.value, self.target.value)
        if not all(names) or names[0] == names[1]:
            raise MedDiftError("choose two different image layers as source and target")
        layers = [self.viewer.layers[n] for n in names]
        stores = []
        for ly in layers:
            path = layer_store_path(ly)
            if path is None:
                raise MedDiftError(f"layer '{ly.name}' has no descriptor store; run 'Extract descriptors' on it first")
            stores.append(open_store(path))
        return layers, stores

    # ------------------------------------------------------------------ run

    @property
    def running(self) -> bool:
        return self.panel.running

    def start(self, *_):
        """Register on a napari worker; returns the LongTask (None when inputs are wrong)."""
        from ..registration import check_stores, register_stores

        if self.running:
            return None
        try:
            layers, (src, tgt) = self._inputs()
            check_stores(src, tgt)
            settings = self.settings()
            moving = layer_to_volume(layers[1])
            self._source_volume = layer_to_volume(layers[0])
            if tuple(moving.shape) != tuple(tgt.image_shape):
                raise MedDiftError(f"layer '{layers[1].name}' is not the image its store was made from "
                                   f"({moving.shape} vs {tuple(tgt.image_shape)})")
        except MedDiftError as exc:
            self.panel.refuse(str(exc))
            return None

        def work(progress):
            t0 = time.perf_counter()
            res = register_stores(src, tgt, settings, progress=progress)
            progress(1, 1, "warping the target")
            warped = res.field.warp(moving)
            grid = res.field.warp(
                type(moving)(grid_image(moving.shape), moving.spacing, moving.origin, moving.direction),
                default_value=0.0,
            )
            return {"result": res, "warped": warped, "grid": grid, "seconds": time.perf_counter() - t0}

        return self.panel.start(work, self._done)

    def cancel(self, *_):
        self.panel.cancel()

    # ------------------------------------------------------------------ results

    def _layer(self, name, data, **kw):
        full = f"registration: {name}"
        if full in self.viewer.layers:
            ly = self.viewer.layers[full]
            ly.data = data
            for k, v in kw.items():
                setattr(ly, k, v)
            return ly
        g = self.last_result.field.source  # on the source grid, in ITK physical mm like every layer
        geo = geometry_kwargs(g.spacing, g.origin, np.reshape(g.direction, (3, 3)))
        return self.viewer.add_image(data, name=full, **geo, **kw)

    def _show_compare(self):
        if self._warped is None or self._source_volume is None:
            return
        a, b = self._source_volume.array, self._warped.array
        if self.view.value == "checkerboard":
            data, kw = checkerboard(a, b), {"colormap": "gray"}
        else:
            data = (a - b).astype(np.float32)
            m = float(np.percentile(np.abs(data), 99)) or 1.0
            kw = {"colormap": "twilight_shifted", "contrast_limits": (-m, m)}
        other = [n for n in VIEWS if n != self.view.value][0]
        if f"registration: {other}" in self.viewer.layers:
            self.viewer.layers.remove(f"registration: {other}")
        self._layer(self.view.value, data, **kw)

    def _done(self, out):
        res = out["result"]
        self.last_result = res
        self._warped = out["warped"]
        src_layer = self.viewer.layers[self.source.value] if self.source.value in self.viewer.layers else None
        limits = tuple(src_layer.contrast_limits) if src_layer is not None else None
        if src_layer is not None and isinstance(src_layer.metadata, dict):
            src_layer.metadata[FIELD_KEY] = res.field
        self._layer("warped target", self._warped.array, colormap="gray",
                    **({"contrast_limits": limits} if limits else {}))
        self._show_compare()
        self._layer("deformation grid", out["grid"].array, colormap="yellow", blending="additive", opacity=0.6,
                    contrast_limits=(0.0, 1.0))
        self._layer("jacobian", res.field.jacobian(), colormap="PiYG", contrast_limits=(0.0, 2.0), visible=False)
        self.panel.done(f"{res.jacobian.line()} ({out['seconds']:.1f} s)")

    @property
    def field(self):
        """The last DisplacementField (Qt-free; ``field.map_points(zyx)`` predicts a source voxel's target)."""
        return None if self.last_result is None else self.last_result.field
