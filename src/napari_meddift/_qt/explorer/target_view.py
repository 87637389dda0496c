"""The target canvas: a second napari ViewerModel in its own QtViewer, docked beside the main one."""

from __future__ import annotations

import contextlib
import weakref

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QVBoxLayout, QWidget

from .._napari_private import qt_viewer_class, reslice_callback, skip_thumbnails

__all__ = ["TargetView", "CloseWatcher", "DockArranger", "set_slice"]


class TargetView(QWidget):
    """A second napari canvas: its own ViewerModel (layers, dims, camera) in a QtViewer."""

    def __init__(self, title: str = "MedDIFT target", parent=None):
        from napari.components import ViewerModel

        QtViewer = qt_viewer_class()

        super().__init__(parent)
        self.viewer = ViewerModel(title=title)
        self.viewer.layers.events.inserted.connect(_skip_thumbnails)
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


def _skip_thumbnails(event) -> None:
    """This canvas has no layer list, so its layers' thumbnails are never seen; napari would
    recompute one (downsample, colour map) on every refresh and re-slice of the live path."""
    skip_thumbnails(getattr(event, "value", None))


def set_slice(viewer, world) -> None:
    """Move ``viewer``'s non-displayed axes to the world point ``world`` (z, y, x mm)."""
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
        # napari re-slices every layer on the ``point`` event and again on ``current_step``
        # (a workaround of its own; the second pass finds nothing changed but still walks every
        # layer): the viewer's own ``current_step`` update waits, other listeners (sliders) do not
        update = reslice_callback(viewer)
        blocker = dims.events.current_step.blocker(update) if update is not None else contextlib.nullcontext()
        with blocker:
            dims.point = tuple(point)


class CloseWatcher(QObject):
    """Calls back when the watched window closes (the main window owns our docks)."""

    def __init__(self, callback, parent):
        super().__init__(parent)
        self._callback = callback
        self._watched = None

    def eventFilter(self, obj, event):  # noqa: N802 (Qt name)
        if event.type() == QEvent.Type.Close:
            self._callback()
        return False

    def watch(self, *widgets) -> None:
        """Watch the top-level window of the first of ``widgets`` that is inside one."""
        for w in widgets:
            top = w.window() if w is not None else None
            watched = self._watched() if self._watched is not None else None
            if top is not None and top is not w and top is not watched:
                if watched is not None:
                    watched.removeEventFilter(self)
                top.installEventFilter(self)
                self._watched = weakref.ref(top)  # no strong reference to the main window
                return

    def stop(self) -> None:
        watched = self._watched() if self._watched is not None else None
        if watched is not None:
            try:
                watched.removeEventFilter(self)
            except RuntimeError:  # pragma: no cover - already deleted
                pass
        self._watched = None


def own_dock(widget) -> QDockWidget | None:
    """The QDockWidget holding ``widget`` (None when it is not docked)."""
    w = widget.parentWidget()
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    return w


class DockArranger:
    """[main canvas | target canvas | controls]: docks the target view and lays the window out."""

    def __init__(self, controls: QWidget):
        self.controls = controls
        self.target_dock = None
        self._split_done = False
        self._tabbed: list = []

    def dock_target(self, window, view: TargetView) -> None:
        if window is None or not hasattr(window, "add_dock_widget"):
            return
        dock = window.add_dock_widget(view, name="MedDIFT target", area="right")
        try:  # floating GL canvases can crash: keep it docked
            dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                             | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        except Exception:  # pragma: no cover
            pass
        self.target_dock = dock
        self.arrange()

    def arrange(self, others=()) -> None:
        """Split the target and control docks side by side; tabify ``others`` with the controls."""
        tdock, edock = self.target_dock, own_dock(self.controls)
        main = tdock.parentWidget() if tdock is not None else None
        if not isinstance(main, QMainWindow) or edock is None or edock.parentWidget() is not main:
            return
        if not self._split_done:  # splitting twice scrambles Qt's tab groups
            main.splitDockWidget(tdock, edock, Qt.Orientation.Horizontal)
            self._split_done = True
        for d in others:
            if d is not None and d is not edock and d not in self._tabbed:
                main.tabifyDockWidget(edock, d)
                self._tabbed.append(d)
        edock.raise_()
        self.resize()
        QTimer.singleShot(100, self.resize)  # again once the window has its real size

    def resize(self, view: TargetView | None = None) -> None:
        """Target canvas as wide as the source canvas; controls ~400 px."""
        tdock, edock = self.target_dock, own_dock(self.controls)
        if tdock is None or edock is None:
            return
        try:
            main = tdock.parentWidget()
            total = main.centralWidget().width() + tdock.width()
            main.resizeDocks([tdock, edock], [max(250, total // 2), 400], Qt.Orientation.Horizontal)
            inner = tdock.widget()
            if isinstance(inner, TargetView):
                inner.viewer.reset_view()
        except RuntimeError:  # pragma: no cover - window already gone
            pass
