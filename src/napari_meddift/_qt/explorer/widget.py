"""Correspondence explorer: hover over the source, see the match, its maps and the truth.

The dock widget only wires things together; each concern lives in its own module of this
subpackage:

* ``napari_meddift.explorer`` (the core, no Qt): the session (pair, evented state, truth,
  landmarks, timesteps) and the compute step;
* ``controls``: magicgui controls bound to the state;
* ``target_view``: the docked second canvas; ``map_layers``: maps, strips, markers,
  crosshairs, search window (``in_place_updates``: in-place layer updates);
  ``landmark_layers``: every landmark coloured by error;
* ``latest_request_worker``: the mouse path's one-slot worker (stale positions are dropped,
  never queued); ``long_jobs``: long work (loading stores, timestep extraction, matching all
  landmarks) on napari workers with progress in the activity dock (``_qt/_long_task.py``);
* ``latency``: a recorder of the mouse path's timings that a benchmark attaches (the widget
  only emits the timestamps).

Other widgets (Landmarks, Feature view) share the explorer's ``session`` and call its public
methods (``show_query``, ``go_to_landmark``, ``match_landmarks``); they find the explorer with
:func:`explorer_in` among the window's docked widgets.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ...errors import MedDiftError
from ...explorer import ExplorerSession, format_status, pick_along_ray, suggest_map_range
from .._controls import StatusText, error_label
from .._layers import STORE_KEY, voxel_to_world, world_to_voxel
from .._long_task import error_text, notify_error
from .controls import ExplorerControls
from .landmark_layers import LandmarkLayers
from .latest_request_worker import LatestRequestWorker
from .long_jobs import ExplorerJobs
from .map_layers import MapLayers
from .target_view import CloseWatcher, DockArranger, TargetView, set_slice

__all__ = ["ExplorerWidget", "explorer_in"]


def explorer_in(viewer) -> "ExplorerWidget | None":
    """The connected-or-not explorer docked in ``viewer``'s window (None when there is none)."""
    window = getattr(viewer, "window", None)
    docks = getattr(window, "dock_widgets", None)
    if docks is None:
        return None
    for w in list(docks.values()):
        if isinstance(w, ExplorerWidget) and not w.closed:
            return w
    return None


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(int(n))


class ExplorerWidget(QWidget):
    """The "Correspondence explorer" dock widget.

    Programmatic use: ``connect_pair(source_layer, target_layer, src_store, tgt_store)`` (or
    ``matcher=m``), then ``show_query(zyx)``; settings through ``state`` (``state.radius = 25.0``, mm).
    ``result_applied`` fires after the layers show a new result.

    The mouse path's timestamps (``time.perf_counter()`` seconds) go out as signals for whoever
    measures them (:class:`~napari_meddift._qt.explorer.latency.LatencyRecorder`):
    ``request_submitted(request, t_submit)`` when a search goes to the worker,
    ``result_timed(result, t_arrive, t_done)`` when a result reached the GUI thread and when its
    layers were updated (``result.request.t_event``: the mouse event), ``compare_timed(result,
    t_done)`` when the compare strip was drawn. ``search_worker`` (the map),
    ``consistency_worker`` (forward-backward check) and ``compare_worker`` (compare strip) are
    the three latest-request threads; their ``idle``/``wait_idle``/``dropped`` are public.
    """

    result_applied = Signal(object)
    consistency_ready = Signal(object)
    landmarks_applied = Signal(object)
    timesteps_ready = Signal(object)
    compare_applied = Signal(object)
    #: (request, t_submit): a search request went to the worker
    request_submitted = Signal(object, float)
    #: (result, t_arrive, t_done): a result reached the GUI thread; its layers were updated
    result_timed = Signal(object, float, float)
    #: (result, t_done): the compare strip of a result was drawn
    compare_timed = Signal(object, float)

    #: seconds the forward-backward check waits for the pointer to settle
    FB_SETTLE_S = 0.03

    def __init__(self, napari_viewer, parent=None, compute_threads: int | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = ExplorerSession()
        self.state = self.session.state
        self.source_layer = self.target_layer = None
        self.target_view: TargetView | None = None
        self.map_layers: MapLayers | None = None
        self.landmark_layers: LandmarkLayers | None = None
        self.result = None
        self.closed = False
        self._callbacks_on = False
        self._range_chosen = False  # the user chose the raw colour range: keep it on reconnect
        self._suggesting = False
        self._focus = None  # world point the target shows for a picked landmark

        # the search gets all cores but one, so the GUI thread keeps a core on small machines
        n = compute_threads or max(1, (os.cpu_count() or 2) - 1)
        self.compute_threads = n
        init = functools.partial(_set_torch_threads, n)
        self.search_worker = LatestRequestWorker(functools.partial(self.session.compute, compare=False), self,
                                                 name="meddift-explorer", init=init)
        self.search_worker.finished.connect(self._on_result)
        self.search_worker.failed.connect(lambda req, exc: self.show_error(exc))
        self.consistency_worker = LatestRequestWorker(self._compute_fb, self, name="meddift-consistency",
                                                      init=init)
        self.consistency_worker.finished.connect(self._on_fb)
        self.consistency_worker.failed.connect(lambda req, exc: None)
        # the timestep compare strip: one more search per cached timestep, after the main map
        self.compare_worker = LatestRequestWorker(self._compute_compare, self, name="meddift-compare", init=init)
        self.compare_worker.finished.connect(self._on_compare)
        self.compare_worker.failed.connect(lambda req, exc: self.show_error(exc))

        self.controls = ExplorerControls(napari_viewer, self.state)
        self.controls.window_voxels = self.session.window_voxels
        self.controls.timestep_label_of = self.session.timestep_label
        self.jobs = ExplorerJobs(self)
        self.controls.connect_button.changed.connect(lambda *_: self.jobs.connect_from_controls())
        self.controls.extract_timesteps.changed.connect(lambda *_: self.extract_timesteps())
        self.controls.cancel_timesteps.changed.connect(lambda *_: self.task and self.task.cancel())
        self.status_label = StatusText("Connect a pair, then move the mouse over the source image.", lines=8)
        self.error_label = error_label()
        lay = QVBoxLayout(self)
        lay.addWidget(self.controls.native)
        lay.addWidget(self.status_label)
        lay.addWidget(self.error_label)
        lay.addStretch(1)
        self.docks = DockArranger(self)
        self._close_watcher = CloseWatcher(self.close_explorer, self)

        ev, st = self.session.events, self.state.events
        ev.rerun.connect(self.rerun)
        ev.connected.connect(self.controls.show_window)
        ev.landmarks_changed.connect(self._show_landmarks)
        ev.timesteps_changed.connect(lambda: self.controls.set_timesteps(self.session.timesteps))
        st.levels.connect(self.controls.sync_levels)
        st.weights.connect(self.controls.sync_levels)
        st.color_range.connect(self._on_range)
        for name in ("per_level", "show_truth"):
            getattr(st, name).connect(self._redraw)
        st.following.connect(lambda v: v and self.result is not None and self._follow(self.result))
        st.show_landmarks.connect(self._filter_landmarks)
        st.min_error_mm.connect(self._filter_landmarks)

    # ------------------------------------------------------------------ connecting a pair

    @property
    def engine(self):
        return self.session.engine

    def show_error(self, exc) -> None:
        self.error_label.setText(error_text(exc) if isinstance(exc, BaseException) else str(exc))
        notify_error(exc)

    def connect_pair(self, source_layer, target_layer, src_store=None, tgt_store=None, matcher=None,
                     timestep: int | None = None):
        """Explore ``source_layer`` -> ``target_layer`` with their stores (or a ready matcher);
        ``timestep``: the diffusion timestep of the descriptors (default: from the stores)."""
        from ...io.store import open_store

        src_store = open_store(src_store) if isinstance(src_store, (str, Path)) else src_store
        tgt_store = open_store(tgt_store) if isinstance(tgt_store, (str, Path)) else tgt_store
        if matcher is None:
            from ...matching import Matcher

            if src_store is None or tgt_store is None:
                raise MedDiftError("the explorer needs a descriptor store for the source and for the target")
            matcher = Matcher.from_stores(src_store, tgt_store)
        for which, layer, shape in (("source", source_layer, matcher.source_shape),
                                    ("target", target_layer, matcher.target_shape)):
            if tuple(np.shape(layer.data)[-3:]) != tuple(shape):
                raise MedDiftError(
                    f"the {which} store was made from an image of shape {tuple(shape)} but layer "
                    f"'{layer.name}' has shape {tuple(np.shape(layer.data))}; pick the matching layer or store")
        self.search_worker.wait_idle(5)
        stores = (src_store, tgt_store) if src_store is not None and tgt_store is not None else None
        self.session.connect(matcher, tuple(source_layer.scale[-3:]), tuple(target_layer.scale[-3:]),
                             timestep=timestep, stores=stores)
        self.source_layer, self.target_layer = source_layer, target_layer
        for layer, store in ((source_layer, src_store), (target_layer, tgt_store)):
            path = getattr(store, "path", None)
            if path is not None and isinstance(layer.metadata, dict):
                layer.metadata[STORE_KEY] = str(path)
        c = self.controls
        c.set_levels(self.session.available_levels, self._levels_edited)
        c.set_timesteps(self.session.timesteps)
        with c.source.changed.blocked(), c.target.changed.blocked():
            c.reset_choices()
            c.source.value, c.target.value = source_layer, target_layer
        for edit, store in ((c.source_store, src_store), (c.target_store, tgt_store)):
            if getattr(store, "path", None) is not None:
                edit.value = store.path
        if not self._range_chosen:
            self._suggest_range()
        if self.target_view is None:
            self.target_view = TargetView("MedDIFT target")
            self.docks.dock_target(getattr(self.viewer, "window", None), self.target_view)
        if self.landmark_layers is not None:
            self.landmark_layers.remove()
        self.map_layers = MapLayers(self.viewer, self.target_view.viewer, source_layer, target_layer)
        self.map_layers.timestep_label = lambda t: self.session.timestep_label(t, short=True)
        self.landmark_layers = LandmarkLayers(self.viewer, self.target_view.viewer, source_layer, target_layer,
                                              on_pick=self.go_to_landmark)
        self.landmark_layers.connect()
        self._sync_dims()
        self._connect_callbacks()
        self._close_watcher.watch(self, self.target_view)
        self.error_label.setText("")
        self.status_label.setText("Move the mouse over the source image (2D) or click it (3D).")
        self.result = None
        return self

    def _suggest_range(self) -> None:
        try:
            from ...explorer import MAP_RANGES

            name = suggest_map_range(self.engine, MAP_RANGES, self.session.search_radius)
        except Exception:  # pragma: no cover - a suggestion only; [-1, 1] always works
            return
        self._suggesting = True
        try:
            self.state.color_range = name
        finally:
            self._suggesting = False

    def _on_range(self, *_):
        if not self._suggesting:
            self._range_chosen = True
        if self.map_layers is not None:
            self.map_layers.apply_limits(self.state)

    def _levels_edited(self, levels, weights) -> None:
        self.set_levels(levels, weights)

    def set_levels(self, levels, weights=None) -> bool:
        """Fuse ``levels`` (with optional weights) from now on; False (and a red line) if refused."""
        try:
            self.session.set_levels(levels, weights)
        except MedDiftError as exc:
            self.show_error(exc)
            self.controls.sync_levels()
            return False
        self.error_label.setText("")
        return True

    # ------------------------------------------------------------------ napari callbacks

    def _connect_callbacks(self) -> None:
        if self._callbacks_on:
            return
        self.viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self.viewer.mouse_drag_callbacks.append(self._on_mouse_drag)
        self.viewer.dims.events.ndisplay.connect(self._sync_dims)
        self.viewer.dims.events.order.connect(self._sync_dims)
        self._callbacks_on = True

    def _disconnect_callbacks(self) -> None:
        if not self._callbacks_on:
            return
        for lst, cb in ((self.viewer.mouse_move_callbacks, self._on_mouse_move),
                        (self.viewer.mouse_drag_callbacks, self._on_mouse_drag)):
            if cb in lst:
                lst.remove(cb)
        self.viewer.dims.events.ndisplay.disconnect(self._sync_dims)
        self.viewer.dims.events.order.disconnect(self._sync_dims)
        self._callbacks_on = False

    def _sync_dims(self, *_):
        if self.target_view is None:
            return
        tv = self.target_view.viewer
        tv.dims.ndisplay = self.viewer.dims.ndisplay
        if tv.dims.ndim == self.viewer.dims.ndim:
            tv.dims.order = tuple(self.viewer.dims.order)

    def _on_mouse_move(self, viewer, event):
        if self.engine is None or viewer.dims.ndisplay != 2:
            return
        vox = world_to_voxel(self.source_layer, event.position)
        if vox is None or vox == self.session.last_query:
            return
        self.submit(vox, tag="mouse", t_event=time.perf_counter())

    def _on_mouse_drag(self, viewer, event):
        if self.engine is None or viewer.dims.ndisplay != 3:
            return
        press_pos = np.asarray(event.position, float)
        yield
        moved = False
        while event.type == "mouse_move":
            moved = True
            yield
        if moved and np.linalg.norm(np.asarray(event.position, float) - press_pos) > 1e-6:
            return  # a rotation, not a click
        self.pick_3d(event.position, event.view_direction, event.dims_displayed)

    def pick_3d(self, position, view_direction, dims_displayed):
        """Pick the voxel a 3D click means (along the view ray) and search from it."""
        layer = self.source_layer
        start, end = layer.get_ray_intersections(position, view_direction, list(dims_displayed), world=True)
        vox = pick_along_ray(layer.data, start, end, rendering=str(layer.rendering),
                             threshold=getattr(layer, "iso_threshold", None))
        if vox is not None:
            self.submit(vox, tag="click3d", t_event=time.perf_counter())
        return vox

    # ------------------------------------------------------------------ requests

    def submit(self, vox, tag: str = "api", t_event: float | None = None) -> None:
        """Search from source voxel ``vox`` (z, y, x): the latest request wins."""
        if self.engine is None:
            return
        req = self.session.request(vox, tag=tag, t_event=t_event)
        self.request_submitted.emit(req, time.perf_counter())
        self.search_worker.submit(req)

    def show_query(self, vox, move_source: bool = True) -> None:
        """Go to source voxel ``vox`` (moves the source slice there) and search from it."""
        if self.engine is None:
            return
        if move_source:
            set_slice(self.viewer, voxel_to_world(self.source_layer, vox))
        self.submit(vox, tag="api")

    def rerun(self) -> None:
        if self.session.last_query is not None:
            self.submit(self.session.last_query, tag="settings")

    def _compute_fb(self, result):
        time.sleep(self.FB_SETTLE_S)
        if self.engine is None or not self.search_worker.idle or self.result is not result:
            return None  # closed, or a newer map is on its way: this check is stale
        return result, self.session.consistency(result)

    # ------------------------------------------------------------------ results -> layers

    def _on_result(self, req, result) -> None:
        if self.closed or self.map_layers is None or result is None:
            return
        t_arrive = time.perf_counter()
        self.result = result
        # the maps change in place first; when the target slice then follows the match, napari
        # re-slices them there once (no second redraw at the old slice)
        with self.map_layers.deferred():
            self.map_layers.show(result, self.state, self.session.available_levels)
            if result.request.tag == "landmark" and self._focus is not None:
                set_slice(self.target_view.viewer, self._focus)  # a picked landmark: stay at its truth
            elif self.state.following:
                self._follow(result)
        self._update_status(result, pending_fb=True)
        self.result_timed.emit(result, t_arrive, time.perf_counter())
        self.error_label.setText("")
        self.result_applied.emit(result)
        if result.request.compare:
            self.compare_worker.submit(result)
        self.consistency_worker.submit(result)

    def _compute_compare(self, result):
        if self.result is not result or not self.search_worker.idle:
            return None  # a newer map is on its way: this strip would be stale
        return self.session.compute_compare(result)

    def _on_compare(self, req, result) -> None:
        if result is None or self.closed or self.map_layers is None or result is not self.result:
            return
        self.map_layers.show_compare(result, self.state)
        self.compare_timed.emit(result, time.perf_counter())
        self.compare_applied.emit(result)

    def _redraw(self, *_):
        if self.result is not None and self.map_layers is not None:
            self.map_layers.show(self.result, self.state, self.session.available_levels)

    def _on_fb(self, req, out) -> None:
        if out is None or self.closed:
            return
        result, (fb, ok) = out
        result.fb_distance, result.consistent = fb, ok
        if result is self.result:
            self._update_status(result)
        self.consistency_ready.emit(result)

    def _follow(self, result) -> None:
        if self.target_view is not None:
            set_slice(self.target_view.viewer, voxel_to_world(self.target_layer, result.target_zyx))

    def _update_status(self, result, pending_fb: bool = False) -> None:
        text = format_status(result, voxel_to_world(self.source_layer, result.request.query_zyx),
                             voxel_to_world(self.target_layer, result.target_zyx), pending_fb=pending_fb)
        self.status_label.setText(text)
        try:
            self.viewer.status = text.replace("\n", "   ")
        except Exception:  # pragma: no cover - status is cosmetic
            pass

    def per_level_map(self, name: str) -> np.ndarray:
        """The shown map of level ``name`` (cut from the per-level strip)."""
        return self.map_layers.strip_map("maps", 1 + self.map_layers.strip_names.index(name))

    def timestep_map(self, t: int) -> np.ndarray:
        """The shown map of timestep ``t`` (cut from the compare strip)."""
        return self.map_layers.strip_map("compare", self.map_layers.compare_names.index(int(t)))

    # ------------------------------------------------------------------ truth and landmarks

    def set_truth(self, truth) -> None:
        """A known mapping for the pair (``explorer.FieldTruth`` / ``LandmarkTruth``)."""
        self.session.set_truth(truth)

    def set_landmarks(self, source_zyx, target_zyx):
        return self.session.set_landmarks(source_zyx, target_zyx)

    def _show_landmarks(self) -> None:
        if self.landmark_layers is not None and self.session.landmarks is not None:
            self.landmark_layers.show(self.session.landmarks, self.state)
            self.landmarks_applied.emit(self.session.landmarks)

    def _filter_landmarks(self, *_):
        if self.landmark_layers is not None:
            self.landmark_layers.apply_filter(self.session.landmarks, self.state)

    def match_landmarks(self, run_async: bool = True, on_error=None):
        """Match every landmark with the current settings (napari progress, cancellable)."""
        return self.jobs.match_landmarks(run_async, on_error)

    def extract_timesteps(self, timesteps=None, cache_dir=None, run_async: bool = True):
        """Extract ``timesteps`` (default: the controls' list) for this pair into cached stores,
        in the background with napari progress; each becomes a choice of the timestep slider."""
        return self.jobs.extract_timesteps(timesteps, cache_dir, run_async)

    @property
    def task(self):
        """The running (or last) long task: ``task.cancel()`` stops it."""
        return self.jobs.task

    def go_to_landmark(self, i: int) -> None:
        """Both viewers to landmark pair ``i``: its source point searched, the target at its truth."""
        lm = self.session.landmarks
        if lm is None or self.engine is None:
            return
        shape = np.asarray(self.engine.matcher.source_shape)
        vox = tuple(int(v) for v in np.clip(np.rint(lm.source_zyx[i]), 0, shape - 1))
        set_slice(self.viewer, voxel_to_world(self.source_layer, vox))
        self._focus = voxel_to_world(self.target_layer, lm.target_zyx[i])  # the target shows the truth
        if self.target_view is not None:
            set_slice(self.target_view.viewer, self._focus)
        self.submit(vox, tag="landmark")

    # ------------------------------------------------------------------ docks

    def arrange_docks(self, others=()) -> None:
        """[main canvas | target canvas | explorer]; ``others`` (docks) tabbed with the explorer."""
        self.docks.arrange(others)

    def showEvent(self, event):  # noqa: N802
        self._close_watcher.watch(self, self.target_view)
        super().showEvent(event)

    def close_explorer(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.task is not None and self.task.running:
            self.task.cancel()
        self.search_worker.close()
        self.consistency_worker.close()
        self.compare_worker.close()
        try:
            self._disconnect_callbacks()
        except Exception:  # pragma: no cover - viewer already torn down
            pass
        if self.landmark_layers is not None:
            self.landmark_layers.disconnect()
        self.controls.close()
        self._close_watcher.stop()
        if self.target_view is not None:
            self.target_view.close_viewer()
        self.session.close()
        self.map_layers = None

    def closeEvent(self, event):  # noqa: N802
        self.close_explorer()
        super().closeEvent(event)
