"""Correspondence explorer: hover over the source, see the match and its similarity map.

The target is shown in a second napari canvas (a ``ViewerModel`` in its own ``QtViewer``) docked
in the main window, navigable on its own. A mouse move over the source (2D) or a click (3D,
picked along the ray) sends the voxel to one background worker with a 'latest' slot (stale
positions are dropped, never queued); the result updates existing layers in place.

All search work is the core's (:class:`napari_meddift.matching.Matcher`, through
:class:`~._model.ExplorerEngine`); this module only wires widgets, layers and events.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import weakref
from collections import deque
from pathlib import Path

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, Signal
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import MedDiftError
from ._layers import STORE_KEY, layer_store_path, voxel_to_world, world_to_voxel
from ._controls import error_label, path_field
from ._model import ExplorerEngine, ExplorerState, QueryResult, format_status, pick_along_ray, suggest_map_range
from ._worker import LatestRequestWorker

__all__ = ["ExplorerWidget", "TargetView", "find_explorer"]

SIM_COLORMAP = "coolwarm"
SIM_LIMITS = (-1.0, 1.0)
#: fixed colour ranges offered for the similarity maps (fixed, so maps stay comparable)
MAP_RANGES = {"[-1, 1]": (-1.0, 1.0), "[0, 1]": (0.0, 1.0), "[0.5, 1]": (0.5, 1.0), "[0.8, 1]": (0.8, 1.0),
              "[0.9, 1]": (0.9, 1.0), "[0.95, 1]": (0.95, 1.0)}
_EXPLORERS: "weakref.WeakValueDictionary[int, ExplorerWidget]" = weakref.WeakValueDictionary()


def find_explorer(viewer) -> "ExplorerWidget | None":
    """The explorer attached to ``viewer`` (the Landmarks and Feature view widgets use it)."""
    w = _EXPLORERS.get(id(viewer))
    return w if w is not None and w.viewer is viewer and not w._closed else None


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(int(n))


def _set_visible(layer, value: bool) -> None:
    if layer.visible != bool(value):  # napari redraws on every assignment
        layer.visible = bool(value)


def _set_point(layer, zyx) -> None:
    """Move a one-point Points layer in place (setting .data re-derives extents: ~8x slower)."""
    new = np.asarray([zyx], float)
    data = layer.data
    if data.shape == new.shape:
        if not np.array_equal(data, new):
            data[...] = new
            layer.refresh()
    else:
        layer.data = new


def _no_refresh(layer):
    """napari's refresh blocker where it exists (one refresh per update instead of two)."""
    blocker = getattr(layer, "_block_refresh", None)
    return blocker() if callable(blocker) else contextlib.nullcontext()


class TargetView(QWidget):
    """A second napari canvas: its own ViewerModel (layers, dims, camera) in a QtViewer."""

    def __init__(self, title: str = "MedDIFT target", parent=None):
        from napari._qt.qt_viewer import QtViewer
        from napari.components import ViewerModel

        super().__init__(parent)
        self.viewer = ViewerModel(title=title)
        self.qt_viewer = QtViewer(self.viewer)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.qt_viewer)

    def close_viewer(self) -> None:
        if self.qt_viewer is not None:
            self.qt_viewer.close()
            self.qt_viewer.deleteLater()
            self.qt_viewer = None
        self.viewer.layers.clear()


class _CloseWatcher(QObject):
    """Calls back when the watched window closes (the main window owns our docks)."""

    def __init__(self, callback, parent):
        super().__init__(parent)
        self._callback = callback

    def eventFilter(self, obj, event):  # noqa: N802 (Qt name)
        if event.type() == QEvent.Type.Close:
            self._callback()
        return False


class ExplorerWidget(QWidget):
    """The "Correspondence explorer" dock widget.

    Programmatic use (tests, ``launch_explorer``): ``connect_pair(source_layer, target_layer,
    src_store, tgt_store)`` or ``connect_pair(..., matcher=m)``; ``show_query(zyx)``.
    ``result_applied`` fires after the layers show a new result; ``latencies_ms`` holds the
    time from each mouse event to its updated layers.
    """

    result_applied = Signal(object)
    consistency_ready = Signal(object)

    def __init__(self, napari_viewer, parent=None, compute_threads: int | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = ExplorerState()
        self.engine: ExplorerEngine | None = None
        self.source_layer = None
        self.target_layer = None
        self.target_view: TargetView | None = None
        self._target_dock = None
        self.result: QueryResult | None = None
        self.latencies_ms: deque[float] = deque(maxlen=10000)
        #: per applied result: ms from the event to submit, compute, queue wait, layer update
        self.timings: deque[dict] = deque(maxlen=10000)
        self._t_submit: dict = {}
        self._last_vox = None
        self._closed = False
        self._callbacks_on = False
        self._layers: dict[str, object] = {}
        self._level_boxes: dict[str, tuple[QCheckBox, QDoubleSpinBox]] = {}
        #: the map colour range was chosen (not suggested from the pair): keep it on reconnect
        self._range_chosen = False
        self._suggesting_range = False

        # torch's intra-op thread count is per thread: the search gets all cores but one, so the
        # GUI thread (slicing, drawing) keeps a core of its own on small machines
        n = compute_threads or max(1, (os.cpu_count() or 2) - 1)
        self.compute_threads = n
        init = functools.partial(_set_torch_threads, n)
        self._worker = LatestRequestWorker(self._compute, self, name="meddift-explorer", init=init)
        self._worker.finished.connect(self._on_result)
        self._worker.failed.connect(self._on_error)
        self._fb_worker = LatestRequestWorker(self._compute_fb, self, name="meddift-consistency", init=init)
        self._fb_worker.finished.connect(self._on_fb)
        self._fb_worker.failed.connect(lambda req, exc: None)

        self._build_ui()
        self._refresh_layer_choices()
        self.viewer.layers.events.inserted.connect(self._refresh_layer_choices)
        self.viewer.layers.events.removed.connect(self._refresh_layer_choices)
        self.state.events.following.connect(self._on_following)
        self.state.events.per_level.connect(self._on_per_level)
        _EXPLORERS[id(self.viewer)] = self
        self._close_watcher = _CloseWatcher(self.close_explorer, self)
        self._watched = None

    def _watch_window(self) -> None:
        """Close with the main window (it owns our docks): watch it once we are inside it."""
        for w in (self, self.target_view):
            top = w.window() if w is not None else None
            watched = self._watched() if self._watched is not None else None
            if top is not None and top is not w and top is not watched:
                if watched is not None:
                    watched.removeEventFilter(self._close_watcher)
                top.installEventFilter(self._close_watcher)
                self._watched = weakref.ref(top)  # no strong reference to the main window
                return

    def showEvent(self, event):  # noqa: N802
        self._watch_window()
        super().showEvent(event)

    # ------------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        pair = QGroupBox("Pair")
        form = QFormLayout(pair)
        self.source_combo = QComboBox()
        self.target_combo = QComboBox()
        self.source_combo.currentIndexChanged.connect(lambda *_: self._fill_store_path(self.source_combo, self.src_store_edit))
        self.target_combo.currentIndexChanged.connect(lambda *_: self._fill_store_path(self.target_combo, self.tgt_store_edit))
        self.src_store_edit = QLineEdit()
        self.tgt_store_edit = QLineEdit()
        self.src_store_edit.setPlaceholderText("descriptor store (.zarr) of the source")
        self.tgt_store_edit.setPlaceholderText("descriptor store (.zarr) of the target")
        form.addRow("Source image", self.source_combo)
        form.addRow("Source store", path_field(self.src_store_edit, "Descriptor store (.zarr folder)", folder=True))
        form.addRow("Target image", self.target_combo)
        form.addRow("Target store", path_field(self.tgt_store_edit, "Descriptor store (.zarr folder)", folder=True))
        self.connect_button = QPushButton("Connect")
        self.connect_button.setToolTip("Load both stores and open the target viewer")
        self.connect_button.clicked.connect(self._connect_clicked)
        form.addRow(self.connect_button)
        outer.addWidget(pair)

        search = QGroupBox("Search")
        sform = QFormLayout(search)
        self.radius_spin = QSpinBox()
        self.radius_spin.setRange(0, 256)
        self.radius_spin.setSpecialValueText("global (whole target)")
        self.radius_spin.setValue(self.state.radius or 0)
        self.radius_spin.setSuffix(" vox")
        self.radius_spin.setToolTip("Half-width of the search window around the corresponding position; 0 = whole target")
        self.radius_spin.valueChanged.connect(self._on_radius)
        sform.addRow("Window radius", self.radius_spin)
        self.follow_check = QCheckBox("Target follows the match")
        self.follow_check.setChecked(self.state.following)
        self.follow_check.toggled.connect(lambda v: setattr(self.state, "following", bool(v)))
        sform.addRow(self.follow_check)
        self.per_level_check = QCheckBox("Per-level maps beside the fused map")
        self.per_level_check.setChecked(self.state.per_level)
        self.per_level_check.toggled.connect(lambda v: setattr(self.state, "per_level", bool(v)))
        sform.addRow(self.per_level_check)
        self.range_combo = QComboBox()
        self.range_combo.addItems(list(MAP_RANGES))
        self.range_combo.setToolTip("Fixed colour range of the similarity maps (cosine); chosen for each pair "
                                    "when it is connected (trained descriptors are alike over a whole window), "
                                    "then fixed so maps stay comparable; [-1, 1] suits any pair")
        self.range_combo.currentTextChanged.connect(self._on_range)
        sform.addRow("Map colour range", self.range_combo)
        outer.addWidget(search)

        self.levels_box = QGroupBox("Levels fused (weight)")
        self.levels_grid = QGridLayout(self.levels_box)
        outer.addWidget(self.levels_box)

        self.status_label = QLabel("Connect a pair, then move the mouse over the source image.")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        font = QFont("monospace")
        font.setStyleHint(QFont.StyleHint.TypeWriter)
        self.status_label.setFont(font)
        outer.addWidget(self.status_label)
        self.error_label = error_label()
        outer.addWidget(self.error_label)
        outer.addStretch(1)

    def _image_layers(self):
        from napari.layers import Image

        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and not ly.rgb and ly.ndim == 3]

    def _refresh_layer_choices(self, *_):
        if self._closed:
            return
        names = [ly.name for ly in self._image_layers()]
        for combo, default in ((self.source_combo, 0), (self.target_combo, 1)):
            cur = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if cur in names:
                combo.setCurrentText(cur)
            elif names:
                combo.setCurrentIndex(min(default, len(names) - 1))
            combo.blockSignals(False)
        self._fill_store_path(self.source_combo, self.src_store_edit)
        self._fill_store_path(self.target_combo, self.tgt_store_edit)

    def _fill_store_path(self, combo: QComboBox, edit: QLineEdit) -> None:
        name = combo.currentText()
        if name in self.viewer.layers:
            p = layer_store_path(self.viewer.layers[name])
            if p is not None:
                edit.setText(str(p))

    def _rebuild_levels(self) -> None:
        while self.levels_grid.count():
            item = self.levels_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self._level_boxes.clear()
        if self.engine is None:
            return
        chosen = set(self.state.levels)
        for row, name in enumerate(self.engine.available_levels):
            box = QCheckBox(name)
            box.setChecked(name in chosen)
            spin = QDoubleSpinBox()
            spin.setRange(0.0, 10.0)
            spin.setSingleStep(0.25)
            spin.setValue(float(self.state.weights.get(name, 1.0)))
            box.toggled.connect(self._on_levels_ui)
            spin.valueChanged.connect(self._on_levels_ui)
            self.levels_grid.addWidget(box, row, 0)
            self.levels_grid.addWidget(spin, row, 1)
            self._level_boxes[name] = (box, spin)

    # ------------------------------------------------------------------ connecting a pair

    def _connect_clicked(self) -> None:
        from superqt.utils import create_worker

        self.error_label.setText("")
        try:
            src_layer = self.viewer.layers[self.source_combo.currentText()]
            tgt_layer = self.viewer.layers[self.target_combo.currentText()]
        except (KeyError, ValueError):
            self.error_label.setText("open the source and target images first (two 3D image layers)")
            return
        src_path, tgt_path = self.src_store_edit.text().strip(), self.tgt_store_edit.text().strip()
        if not src_path or not tgt_path:
            self.error_label.setText("give a descriptor store for both images (run 'Extract descriptors' first)")
            return

        def load():
            from ..matching import Matcher
            from ..io.store import open_store

            s, t = open_store(src_path), open_store(tgt_path)
            return s, t, Matcher.from_stores(s, t)

        self.connect_button.setEnabled(False)
        self.status_label.setText("loading descriptor stores...")
        def done(res):
            self.connect_button.setEnabled(True)
            s, t, m = res
            self._try(self.connect_pair, src_layer, tgt_layer, s, t, matcher=m)

        def fail(exc):
            self.connect_button.setEnabled(True)
            self._show_error(exc)

        worker = create_worker(load, _start_thread=True, _connect={"returned": done, "errored": fail})
        self._connect_worker = worker

    def _try(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except (MedDiftError, ValueError, OSError) as exc:
            self._show_error(exc)
            return None

    def _show_error(self, exc) -> None:
        self.error_label.setText(str(exc) if isinstance(exc, MedDiftError) else f"{type(exc).__name__}: {exc}")

    def connect_pair(self, source_layer, target_layer, src_store=None, tgt_store=None, matcher=None):
        """Explore ``source_layer`` -> ``target_layer`` with their stores (or a ready matcher)."""
        if matcher is None:
            from ..matching import Matcher
            from ..io.store import open_store

            src_store = open_store(src_store) if isinstance(src_store, (str, Path)) else src_store
            tgt_store = open_store(tgt_store) if isinstance(tgt_store, (str, Path)) else tgt_store
            if src_store is None or tgt_store is None:
                raise MedDiftError("the explorer needs a descriptor store for the source and for the target")
            matcher = Matcher.from_stores(src_store, tgt_store)
        for which, layer, shape in (("source", source_layer, matcher.source_shape),
                                    ("target", target_layer, matcher.target_shape)):
            if tuple(np.shape(layer.data)[-3:]) != tuple(shape):
                raise MedDiftError(
                    f"the {which} store was made from an image of shape {tuple(shape)} but layer "
                    f"'{layer.name}' has shape {tuple(np.shape(layer.data))}; pick the matching layer or store"
                )
        self._worker.wait_idle(5)
        self.engine = ExplorerEngine(matcher)
        self.source_layer, self.target_layer = source_layer, target_layer
        for layer, store in ((source_layer, src_store), (target_layer, tgt_store)):
            path = getattr(store, "path", None)
            if path is not None and isinstance(layer.metadata, dict):
                layer.metadata[STORE_KEY] = str(path)
        self.state.levels = tuple(matcher.levels)
        self.state.weights = {n: float(w) for n, w in matcher.weights.items()}
        self._rebuild_levels()
        if not self._range_chosen:
            self._suggest_range()
        for combo, layer in ((self.source_combo, source_layer), (self.target_combo, target_layer)):
            combo.blockSignals(True)
            combo.setCurrentText(layer.name)
            combo.blockSignals(False)
        for edit, store in ((self.src_store_edit, src_store), (self.tgt_store_edit, tgt_store)):
            if getattr(store, "path", None) is not None:
                edit.setText(str(store.path))
        self._setup_layers()
        self._connect_callbacks()
        self._watch_window()
        self.error_label.setText("")
        self.status_label.setText("Move the mouse over the source image (2D) or click it (3D).")
        self._last_vox = None
        self.result = None
        return self

    def _ensure_target_view(self) -> TargetView:
        if self.target_view is None:
            self.target_view = TargetView("MedDIFT target")
            window = getattr(self.viewer, "window", None)
            if window is not None and hasattr(window, "add_dock_widget"):
                dock = window.add_dock_widget(self.target_view, name="MedDIFT target", area="right")
                try:  # floating GL canvases can crash: keep it docked
                    from qtpy.QtWidgets import QDockWidget

                    dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                                     | QDockWidget.DockWidgetFeature.DockWidgetClosable)
                except Exception:  # pragma: no cover
                    pass
                self._target_dock = dock
                self.arrange_docks()
        return self.target_view

    def own_dock(self):
        """The QDockWidget holding this widget (None when it is not docked)."""
        from qtpy.QtWidgets import QDockWidget

        w = self.parentWidget()
        while w is not None and not isinstance(w, QDockWidget):
            w = w.parentWidget()
        return w

    def arrange_docks(self, others=()) -> None:
        """[main canvas | target canvas | explorer]: split the target and explorer docks side by
        side (plain QMainWindow calls), and tabify ``others`` (docks) with the explorer."""
        from qtpy.QtWidgets import QMainWindow

        tdock, edock = self._target_dock, self.own_dock()
        main = tdock.parentWidget() if tdock is not None else None
        if not isinstance(main, QMainWindow) or edock is None or edock.parentWidget() is not main:
            return
        if not getattr(self, "_split_done", False):  # splitting twice scrambles Qt's tab groups
            main.splitDockWidget(tdock, edock, Qt.Orientation.Horizontal)
            self._split_done = True
        tabbed = getattr(self, "_tab_docks", [])
        for d in others:
            if d is not None and d is not edock and d not in tabbed:
                main.tabifyDockWidget(edock, d)
                tabbed.append(d)
        self._tab_docks = tabbed
        edock.raise_()
        self._resize_docks()
        from qtpy.QtCore import QTimer

        QTimer.singleShot(100, self._resize_docks)  # again once the window has its real size

    def _resize_docks(self) -> None:
        """Target canvas as wide as the source canvas; controls ~380 px."""
        tdock, edock = self._target_dock, self.own_dock()
        if self._closed or tdock is None or edock is None:
            return
        try:
            main = tdock.parentWidget()
            central = main.centralWidget()
            total = central.width() + tdock.width()
            ctrl = 380
            main.resizeDocks([tdock, edock], [max(250, total // 2), ctrl], Qt.Orientation.Horizontal)
            if self.target_view is not None:
                self.target_view.viewer.reset_view()
        except RuntimeError:  # pragma: no cover - window already gone
            pass

    def _setup_layers(self) -> None:
        tv = self._ensure_target_view().viewer
        tgt, src = self.target_layer, self.source_layer
        tv.layers.clear()
        self._layers = {}
        geo = {"scale": tuple(tgt.scale), "translate": tuple(tgt.translate)}
        tv.add_image(tgt.data, name=tgt.name, colormap=tgt.colormap.name,
                     contrast_limits=tuple(tgt.contrast_limits), **geo)
        empty = np.zeros((1, 1, 1), np.float32)
        self._layers["fused"] = tv.add_image(
            empty, name="similarity (fused)", colormap=SIM_COLORMAP, contrast_limits=self.map_limits,
            opacity=0.75, visible=False, **geo)
        # every level's own map in one strip beside the fused map (one layer: one refresh per event)
        self._layers["levels"] = tv.add_image(
            empty, name="similarity per level", colormap=SIM_COLORMAP, contrast_limits=self.map_limits,
            opacity=0.9, visible=False, **geo)
        self._layers["labels"] = tv.add_points(
            np.zeros((0, 3)), name="map labels", size=0.01, features={"label": np.array([], dtype=object)},
            text={"string": "{label}", "color": "white", "size": 10, "anchor": "lower_left"},
            visible=False, **geo)
        self._layers["match"] = tv.add_points(
            np.zeros((0, 3)), name="match", size=3, symbol="disc", face_color="yellow",
            border_color="black", **geo)
        # the query marker in the source (main) viewer: reuse ours if present
        qname = "query"
        if qname in self.viewer.layers and self.viewer.layers[qname].metadata.get("meddift_query"):
            q = self.viewer.layers[qname]
            q.data = np.zeros((0, 3))
        else:
            q = self.viewer.add_points(
                np.zeros((0, 3)), name=qname, size=3, symbol="disc", face_color="yellow",
                border_color="black", scale=tuple(src.scale), translate=tuple(src.translate),
                metadata={"meddift_query": True})
        self._layers["query"] = q
        # the hidden target copy in the main viewer would cover the source
        self.viewer.layers.selection.active = src
        tv.dims.ndisplay = self.viewer.dims.ndisplay
        if tv.dims.ndim == self.viewer.dims.ndim:
            tv.dims.order = tuple(self.viewer.dims.order)
        tv.reset_view()

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

    # ------------------------------------------------------------------ events -> requests

    def _on_mouse_move(self, viewer, event):
        if self.engine is None or viewer.dims.ndisplay != 2:
            return
        vox = world_to_voxel(self.source_layer, event.position)
        if vox is None or vox == self._last_vox:
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
        thr = getattr(layer, "iso_threshold", None)
        vox = pick_along_ray(layer.data, start, end, rendering=str(layer.rendering), threshold=thr)
        if vox is not None:
            self.submit(vox, tag="click3d", t_event=time.perf_counter())
        return vox

    def submit(self, vox, tag: str = "api", t_event: float | None = None) -> None:
        """Search from source voxel ``vox`` (z, y, x): latest request wins."""
        if self.engine is None:
            return
        self._last_vox = tuple(int(v) for v in vox)
        req = self.engine.request(self._last_vox, self.state, tag=tag, t_event=t_event)
        self._t_submit = {"request": req, "t": time.perf_counter()}
        self._worker.submit(req)

    def show_query(self, vox, move_source: bool = True) -> None:
        """Go to source voxel ``vox`` (moves the source slice there) and search from it."""
        if self.engine is None:
            return
        if move_source:
            world = voxel_to_world(self.source_layer, vox)
            self._set_slice(self.viewer, world)
        self.submit(vox, tag="api")

    def rerun(self) -> None:
        if self._last_vox is not None:
            self.submit(self._last_vox, tag="settings")

    # ------------------------------------------------------------------ settings

    def _on_radius(self, value: int) -> None:
        self.state.radius = None if int(value) == 0 else int(value)
        self.rerun()

    def _on_levels_ui(self, *_):
        chosen = tuple(n for n, (box, _) in self._level_boxes.items() if box.isChecked())
        weights = {n: float(spin.value()) for n, (box, spin) in self._level_boxes.items() if box.isChecked()}
        self.set_levels(chosen, weights)

    def set_levels(self, levels, weights=None) -> bool:
        """Fuse ``levels`` (with optional weights) from now on and redo the current map."""
        levels = tuple(levels)
        weights = dict(weights or {})
        try:
            if self.engine is not None:
                self.engine.set_levels(levels, weights)  # validates (raises MedDiftError)
        except MedDiftError as exc:
            self._show_error(exc)
            self._sync_level_boxes()
            return False
        self.error_label.setText("")
        self.state.levels, self.state.weights = levels, weights
        self._sync_level_boxes()
        self.rerun()
        return True

    def _sync_level_boxes(self) -> None:
        chosen = set(self.state.levels)
        for n, (box, spin) in self._level_boxes.items():
            box.blockSignals(True)
            spin.blockSignals(True)
            box.setChecked(n in chosen)
            if n in self.state.weights:
                spin.setValue(float(self.state.weights[n]))
            box.blockSignals(False)
            spin.blockSignals(False)

    @property
    def map_limits(self) -> tuple[float, float]:
        return MAP_RANGES.get(self.range_combo.currentText(), SIM_LIMITS)

    def _suggest_range(self) -> None:
        """Set the colour range that shows this pair's maps (see ``suggest_map_range``)."""
        try:
            name = suggest_map_range(self.engine, MAP_RANGES, self.state.radius)
        except Exception:  # pragma: no cover - a suggestion only; [-1, 1] always works
            return
        self._suggesting_range = True
        try:
            self.range_combo.setCurrentText(name)
        finally:
            self._suggesting_range = False

    def _on_range(self, *_):
        if not self._suggesting_range:
            self._range_chosen = True
        for key, layer in self._layers.items():
            if key in ("fused", "levels"):
                layer.contrast_limits = self.map_limits

    def _on_following(self, value: bool) -> None:
        if self.follow_check.isChecked() != bool(value):
            self.follow_check.setChecked(bool(value))
        if value and self.result is not None:
            self._follow(self.result)

    def _on_per_level(self, value: bool) -> None:
        if self.per_level_check.isChecked() != bool(value):
            self.per_level_check.setChecked(bool(value))
        if self.result is not None:
            self._show_maps(self.result)

    # ------------------------------------------------------------------ worker side

    def _compute(self, req):
        engine = self.engine
        if engine is None:
            return None
        return engine.compute(req)

    #: seconds the forward-backward check waits for the pointer to settle (it would only delay
    #: the next map while the mouse keeps moving)
    FB_SETTLE_S = 0.03

    def _compute_fb(self, result: QueryResult):
        time.sleep(self.FB_SETTLE_S)
        engine = self.engine
        if engine is None or not self._worker.idle or self.result is not result:
            return None  # closed, or a newer map is on its way: this check is stale
        return result, engine.consistency(result)

    # ------------------------------------------------------------------ results -> layers

    def _on_result(self, req, result: QueryResult) -> None:
        if self._closed or self.engine is None or result is None:
            return
        t_arrive = time.perf_counter()
        self.result = result
        self._show_maps(result)
        _set_point(self._layers["match"], result.target_zyx)
        _set_point(self._layers["query"], result.request.query_zyx)
        if self.state.following:
            self._follow(result)
        self._update_status(result, pending_fb=True)
        t_done = time.perf_counter()
        self.latencies_ms.append((t_done - req.t_event) * 1e3)
        t_sub = self._t_submit.get("t") if self._t_submit.get("request") is req else None
        self.timings.append({
            "event_to_submit": (t_sub - req.t_event) * 1e3 if t_sub else float("nan"),
            "compute": result.compute_ms,
            "wait_and_queue": ((t_arrive - t_sub) * 1e3 - result.compute_ms) if t_sub else float("nan"),
            "apply": (t_done - t_arrive) * 1e3,
        })
        self.error_label.setText("")
        self.result_applied.emit(result)
        self._fb_worker.submit(result)

    def _on_fb(self, req, out) -> None:
        if out is None or self._closed:
            return
        result, (fb, ok) = out
        result.fb_distance, result.consistent = fb, ok
        if result is self.result:
            self._update_status(result)
        self.consistency_ready.emit(result)

    def _on_error(self, req, exc) -> None:
        if not self._closed:
            self._show_error(exc)

    def _place(self, layer, data, offset_zyx, shift_x_vox: float = 0.0) -> None:
        """Show a map at its target box: in place when the shape is unchanged, one refresh."""
        tgt = self.target_layer
        world = voxel_to_world(tgt, np.asarray(offset_zyx, float) + np.array([0.0, 0.0, shift_x_vox]))
        old = layer.data
        same_shape = isinstance(old, np.ndarray) and old.shape == data.shape and old.dtype == data.dtype
        moved = not np.allclose(layer.translate, world)
        if same_shape:
            if moved:
                with _no_refresh(layer):
                    layer.translate = tuple(world)
            old[...] = data
            layer.refresh()
        else:
            with _no_refresh(layer):
                layer.translate = tuple(world)
            layer.data = np.array(data, copy=True)  # a buffer we own and update in place
        if tuple(layer.contrast_limits) != self.map_limits:
            layer.contrast_limits = self.map_limits

    #: voxels between the maps of the per-level strip
    STRIP_GAP = 2

    def _strip_slot(self, k: int, width: int) -> slice:
        start = (k + 1) * (width + self.STRIP_GAP)  # x offset from the fused map's start
        return slice(start, start + width)

    def per_level_map(self, name: str) -> np.ndarray:
        """The shown map of level ``name`` (cut from the per-level strip)."""
        res = self.result
        names = [n for n in self.engine.available_levels if res is not None and n in res.per_level]
        width = self._layers["fused"].data.shape[2]
        k = names.index(name)
        x0 = k * (width + self.STRIP_GAP)
        return self._layers["levels"].data[:, :, x0:x0 + width]

    def _show_maps(self, result: QueryResult) -> None:
        fused = self._layers["fused"]
        self._place(fused, result.fused, result.offset)
        _set_visible(fused, True)
        width = result.fused.shape[2]
        labels, label_pos = ["fused"], [np.asarray(result.offset, float)]
        strip_layer = self._layers["levels"]
        names = [n for n in self.engine.available_levels if n in result.per_level]
        if self.state.per_level and names:
            first = self._strip_slot(0, width).start
            strip = np.full(result.fused.shape[:2] + (len(names) * (width + self.STRIP_GAP) - self.STRIP_GAP,),
                            np.nan, np.float32)  # NaN: the gaps between maps stay empty
            for k, name in enumerate(names):
                sl = self._strip_slot(k, width)
                strip[:, :, sl.start - first: sl.stop - first] = result.per_level[name]
                used = name in result.request.levels
                labels.append(name if used else f"{name} (off)")
                label_pos.append(np.asarray(result.offset, float) + [0, 0, sl.start])
            self._place(strip_layer, strip, result.offset, shift_x_vox=first)
            _set_visible(strip_layer, True)
        else:
            _set_visible(strip_layer, False)
        lab = self._layers["labels"]
        if self.state.per_level:
            pos = np.stack(label_pos)
            pos[:, 0] = result.target_zyx[0]
            if lab.data.shape == pos.shape and list(lab.features["label"]) == labels:
                if not np.array_equal(lab.data, pos):
                    lab.data[...] = pos  # same labels: move them in place
                    lab.refresh()
            else:
                lab.data = pos
                lab.features = {"label": np.asarray(labels, dtype=object)}
                lab.refresh()
            _set_visible(lab, True)
        else:
            _set_visible(lab, False)

    def _set_slice(self, viewer, world) -> None:
        dims = viewer.dims
        displayed = set(dims.displayed)
        nd = dims.ndim
        point = list(dims.point)
        world = list(world)[-nd:] if len(world) >= nd else [0.0] * (nd - len(world)) + list(world)
        changed = False
        for ax in range(nd):
            if ax not in displayed and abs(point[ax] - world[ax]) > 1e-9:
                point[ax] = world[ax]
                changed = True
        if changed:
            dims.point = tuple(point)

    def _follow(self, result: QueryResult) -> None:
        if self.target_view is None:
            return
        world = voxel_to_world(self.target_layer, result.target_zyx)
        self._set_slice(self.target_view.viewer, world)

    def _update_status(self, result: QueryResult, pending_fb: bool = False) -> None:
        src_mm = voxel_to_world(self.source_layer, result.request.query_zyx)
        tgt_mm = voxel_to_world(self.target_layer, result.target_zyx)
        text = format_status(result, src_mm, tgt_mm, pending_fb=pending_fb)
        self.status_label.setText(text)
        try:
            self.viewer.status = text.replace("\n", "   ")
        except Exception:  # pragma: no cover - status is cosmetic
            pass

    # ------------------------------------------------------------------ extra markers

    def marker_layer(self, name: str, data, in_target: bool = True, **kw):
        """Create or update a Points layer ``name`` (voxel zyx) in the target (or source) viewer."""
        if self.engine is None:
            raise MedDiftError("connect a pair in the explorer first")
        viewer = self._ensure_target_view().viewer if in_target else self.viewer
        ref = self.target_layer if in_target else self.source_layer
        data = np.asarray(data, float).reshape(-1, 3)
        if name in viewer.layers:
            layer = viewer.layers[name]
            layer.data = data
            return layer
        kw.setdefault("size", 3)
        return viewer.add_points(data, name=name, scale=tuple(ref.scale), translate=tuple(ref.translate), **kw)

    # ------------------------------------------------------------------ teardown

    def close_explorer(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._worker.close()
        self._fb_worker.close()
        try:
            self._disconnect_callbacks()
            self.viewer.layers.events.inserted.disconnect(self._refresh_layer_choices)
            self.viewer.layers.events.removed.disconnect(self._refresh_layer_choices)
        except Exception:  # pragma: no cover - viewer already torn down
            pass
        watched = self._watched() if self._watched is not None else None
        if watched is not None:
            try:
                watched.removeEventFilter(self._close_watcher)
            except RuntimeError:  # pragma: no cover - already deleted
                pass
        self._watched = None
        if self.target_view is not None:
            self.target_view.close_viewer()
        self.engine = None
        self._layers = {}

    def closeEvent(self, event):  # noqa: N802
        self.close_explorer()
        super().closeEvent(event)
