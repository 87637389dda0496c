"""The explorer's controls: magicgui widgets bound both ways to the evented ExplorerState.

``bind(widget, state, field)`` makes a magicgui value widget and a state field one thing:
moving the widget sets the field, setting the field (from a script, a test or another widget)
moves the widget, without loops. The layer combo boxes list the viewer's 3D image layers and
follow renames, insertions and removals; the store fields are magicgui ``FileEdit``s.
"""

from __future__ import annotations

from typing import Callable

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    Slider,
    SpinBox,
)

from ...explorer import DISPLAY_MODES, MAP_RANGES
from .._layers import layer_store_path

__all__ = ["ExplorerControls", "bind"]


def bind(widget, state, name: str, to_widget: Callable = lambda v: v, to_state: Callable = lambda v: v):
    """Tie magicgui ``widget`` and ``state.<name>`` both ways; returns a function that unties them."""

    def w2s(value):
        new = to_state(value)
        if getattr(state, name) != new:
            setattr(state, name, new)

    def s2w(value):
        new = to_widget(value)
        if widget.value != new:
            with widget.changed.blocked():
                widget.value = new

    s2w(getattr(state, name))
    widget.changed.connect(w2s)
    sig = getattr(state.events, name)
    sig.connect(s2w)

    def unbind():
        widget.changed.disconnect(w2s)
        sig.disconnect(s2w)

    return unbind


class LevelRow(Container):
    """One descriptor level: a checkbox (fused or not) and its weight."""

    def __init__(self, name: str, on: bool, weight: float):
        self.level = name
        self.check = CheckBox(text=name, value=on)
        self.weight = FloatSpinBox(value=float(weight), min=0.0, max=10.0, step=0.25)
        super().__init__(widgets=[self.check, self.weight], layout="horizontal", labels=False)
        self.margins = (0, 0, 0, 0)


class ExplorerControls(Container):
    """Pair, search, display, timestep and landmark controls of the correspondence explorer."""

    def __init__(self, viewer, state):
        self.viewer = viewer
        self.state = state
        self._unbind: list[Callable] = []
        self.source = ComboBox(label="Source image", choices=self._image_choices, nullable=False)
        self.source_store = FileEdit(label="Source store", mode="d", nullable=True,
                                     tooltip="descriptor store (.zarr folder) of the source image")
        self.target = ComboBox(label="Target image", choices=self._image_choices, nullable=False)
        self.target_store = FileEdit(label="Target store", mode="d", nullable=True,
                                     tooltip="descriptor store (.zarr folder) of the target image")
        self.connect_button = PushButton(text="Connect", tooltip="Load both stores and open the target viewer")
        self.radius = FloatSpinBox(label="Window radius (mm)", min=0.0, max=500.0, step=1.0,
                                   tooltip="half-width of the search window around the corresponding position, "
                                           "in mm: ceil(radius / spacing) voxels along each axis of the target, "
                                           "the box drawn around the map; 0 = the whole target")
        self.window_label = Label(value="")
        #: the per-axis voxel radius the window searches (set by the explorer: its session's)
        self.window_voxels: Callable[[], tuple | None] = lambda: None
        self.exclusion = SpinBox(label="Rival exclusion (vox)", min=1, max=32,
                                 tooltip="the rivalry compares the best score with the best one farther than "
                                         "this from it")
        self.levels = Container(label="Levels (weight)", labels=False)
        self.display_mode = ComboBox(label="Map display", choices=list(DISPLAY_MODES))
        self.color_range = ComboBox(label="Raw colour range", choices=list(MAP_RANGES),
                                    tooltip="fixed range of raw cosine maps, chosen per pair on Connect, "
                                            "then fixed so maps stay comparable")
        self.per_level = CheckBox(text="per-level maps beside the fused map")
        self.following = CheckBox(text="target follows the match")
        self.show_truth = CheckBox(text="show the true point (when the pair has a truth)")
        self.timesteps_text = LineEdit(label="Timesteps", value="0,20,50,100,200",
                                       tooltip="timesteps to extract with the connected stores' backbone and settings")
        self.extract_timesteps = PushButton(text="Extract timesteps")
        self.cancel_timesteps = PushButton(text="Cancel", enabled=False)
        self.timestep = Slider(label="Timestep (cached)", min=0, max=0, value=0, enabled=False,
                               tooltip="switch between the cached timesteps (a search, no extraction)")
        self.timestep_label = Label(value="t = (connected stores)")
        self.compare = CheckBox(text="compare strip: this voxel at every cached timestep")
        self.show_landmarks = CheckBox(text="show landmarks (coloured by error)")
        self.min_error = FloatSlider(label="Landmarks with error >= (mm)", min=0.0, max=30.0, step=0.5)
        super().__init__(widgets=[
            self.source, self.source_store, self.target, self.target_store, self.connect_button,
            self.radius, self.window_label, self.exclusion, self.levels, self.display_mode, self.color_range,
            self.per_level,
            self.following, self.show_truth, self.timesteps_text, self.extract_timesteps, self.cancel_timesteps,
            self.timestep, self.timestep_label, self.compare, self.show_landmarks, self.min_error,
        ], labels=True)
        b = self._unbind.append
        b(bind(self.radius, state, "radius", lambda v: 0.0 if v is None else float(v),
               lambda v: None if float(v) == 0 else float(v)))
        state.events.radius.connect(self.show_window)
        for name in ("exclusion", "display_mode", "color_range", "per_level", "following", "show_truth",
                     "show_landmarks"):
            b(bind(getattr(self, name), state, name))
        b(bind(self.compare, state, "compare_timesteps"))
        b(bind(self.min_error, state, "min_error_mm", float, float))
        self.source.changed.connect(lambda v: self._fill_store(v, self.source_store))
        self.target.changed.connect(lambda v: self._fill_store(v, self.target_store))
        self._cached: list[int] = []
        #: how a timestep is labelled (set by the explorer: its session's, with noise/signal)
        self.timestep_label_of: Callable[[object], str] = lambda t: (
            "t = (connected stores)" if t is None else f"t = {t}")
        self.timestep.changed.connect(self._slider_to_state)
        state.events.timestep.connect(self._state_to_slider)
        self._watch_layers(True)
        self.reset_choices()
        images = [c[1] for c in self._image_choices()]
        if len(images) > 1 and self.target.value is self.source.value:
            self.target.value = images[1]
        self._fill_store(self.source.value, self.source_store)
        self._fill_store(self.target.value, self.target_store)

    def show_window(self, *_) -> None:
        """The voxels the mm window searches, under the radius box (anisotropic scans differ per axis)."""
        if self.state.radius is None:
            self.window_label.value = "window: the whole target"
            return
        vox = self.window_voxels()
        self.window_label.value = "" if vox is None else (
            "window: +-{} x {} x {} target voxels (z, y, x)".format(*vox))

    # ------------------------------------------------------------------ layer choices

    def _image_choices(self, *_):
        from napari.layers import Image

        return [(ly.name, ly) for ly in self.viewer.layers
                if isinstance(ly, Image) and not ly.rgb and ly.ndim == 3]

    def _watch_layers(self, on: bool) -> None:
        ev = self.viewer.layers.events
        for sig in (ev.inserted, ev.removed, ev.moved):
            (sig.connect if on else sig.disconnect)(self._layers_changed)
        for layer in self.viewer.layers:
            (layer.events.name.connect if on else layer.events.name.disconnect)(self._renamed)

    def _layers_changed(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if event is not None and getattr(event, "type", "") == "inserted" and layer is not None:
            layer.events.name.connect(self._renamed)
        self.refresh_layers()

    def _renamed(self, *_):
        self.refresh_layers()

    def refresh_layers(self) -> None:
        """New layer names and choices, keeping the chosen layers (magicgui drops a renamed value)."""
        keep = {w: w.value for w in (self.source, self.target)}
        self.reset_choices()
        for w, layer in keep.items():
            if layer is not None and w.value is not layer and layer in w.choices:
                with w.changed.blocked():
                    w.value = layer
        images = [c[1] for c in self._image_choices()]
        if len(images) > 1 and self.target.value is self.source.value:
            self.target.value = next(ly for ly in images if ly is not self.source.value)

    def _fill_store(self, layer, edit) -> None:
        p = layer_store_path(layer) if layer is not None else None
        if p is not None:
            edit.value = p

    # ------------------------------------------------------------------ levels and timesteps

    def set_levels(self, available, on_change: Callable[[tuple, dict], None]) -> None:
        """One row per available level; ``on_change(levels, weights)`` when the user edits them."""
        self.levels.clear()
        chosen = set(self.state.levels)
        for name in available:
            row = LevelRow(name, name in chosen, float(self.state.weights.get(name, 1.0)))
            row.check.changed.connect(lambda *_: on_change(*self.level_choice()))
            row.weight.changed.connect(lambda *_: on_change(*self.level_choice()))
            self.levels.append(row)

    def level_choice(self) -> tuple[tuple, dict]:
        levels = tuple(r.level for r in self.levels if r.check.value)
        return levels, {r.level: float(r.weight.value) for r in self.levels if r.check.value}

    def sync_levels(self) -> None:
        """Show the state's levels and weights in the rows (after a refusal or a script change)."""
        chosen = set(self.state.levels)
        for r in self.levels:
            with r.check.changed.blocked(), r.weight.changed.blocked():
                r.check.value = r.level in chosen
                if r.level in self.state.weights:
                    r.weight.value = float(self.state.weights[r.level])

    def set_timesteps(self, cached: list[int]) -> None:
        """The slider's stops: ``cached`` in the order given (t, or noise/signal when mixed)."""
        self._cached = list(cached)
        with self.timestep.changed.blocked():
            self.timestep.max = max(0, len(cached) - 1)
            self.timestep.enabled = len(cached) > 1
        self._state_to_slider(self.state.timestep)

    def _slider_to_state(self, idx) -> None:
        if self._cached:
            t = self._cached[min(int(idx), len(self._cached) - 1)]
            self.timestep_label.value = self.timestep_label_of(t)
            if self.state.timestep != t:
                self.state.timestep = t

    def _state_to_slider(self, t) -> None:
        self.timestep_label.value = self.timestep_label_of(t)
        if t in self._cached:
            with self.timestep.changed.blocked():
                self.timestep.value = self._cached.index(t)

    def close(self) -> None:
        for u in self._unbind:
            try:
                u()
            except Exception:  # pragma: no cover - already gone
                pass
        self._unbind = []
        try:
            self.state.events.timestep.disconnect(self._state_to_slider)
            self.state.events.radius.disconnect(self.show_window)
            self._watch_layers(False)
        except Exception:  # pragma: no cover - viewer already torn down
            pass
