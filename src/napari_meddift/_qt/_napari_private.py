"""Every use of napari's private API, in one place.

napari's public API has no second canvas widget, no cheap "re-slice once" and no way to show
the activity dock; the explorer's live path needs them. Each private name the plugin touches is
reached through a function here, with a fallback to the public (slower) behaviour where one
exists, and :func:`check_private_api` lists what a napari release no longer has:
``tests/test_qt_napari_private.py`` fails on it, so an upgrade cannot break the live view
silently. pyproject pins napari to the range these were checked on (:data:`TESTED_NAPARI`).
"""

from __future__ import annotations

import contextlib
from typing import Callable

__all__ = ["TESTED_NAPARI", "qt_viewer_class", "skip_thumbnails", "refresh_blocker", "reslice_callback",
           "layer_ranges", "layers_change_callback", "show_activity", "hide_activity", "canvas_widget",
           "check_private_api"]

#: the napari versions these private names were checked on (pyproject's bound says the same)
TESTED_NAPARI = ">=0.9,<0.10"


def qt_viewer_class():
    """napari's ``QtViewer`` (a canvas widget for a second ViewerModel; the explorer's target view)."""
    from napari._qt.qt_viewer import QtViewer

    return QtViewer


def _no_thumbnail(*_args, **_kwargs) -> None:
    return None


def skip_thumbnails(layer) -> None:
    """Stop ``layer`` recomputing its thumbnail (a canvas without a layer list never shows it;
    napari recomputes one on every refresh of the live path)."""
    if layer is not None and callable(getattr(layer, "_update_thumbnail", None)):
        layer._update_thumbnail = _no_thumbnail


def refresh_blocker(layer):
    """napari's refresh blocker where it exists (one refresh per update instead of two)."""
    blocker = getattr(layer, "_block_refresh", None)
    return blocker() if callable(blocker) else contextlib.nullcontext()


def reslice_callback(viewer) -> Callable | None:
    """The viewer's own re-slice handler of ``dims.events.current_step`` (to block it while
    ``dims.point`` re-slices anyway), None where napari has none."""
    update = getattr(viewer, "_update_layers", None)
    return update if callable(update) else None


def layer_ranges(viewer):
    """The extent of all layers as dims ranges, or None where napari does not expose it."""
    try:
        return viewer.layers._ranges
    except AttributeError:
        return None


def layers_change_callback(viewer) -> Callable | None:
    """The viewer's full update after layers changed (dims, ranges), None where absent."""
    sync = getattr(viewer, "_on_layers_change", None)
    return sync if callable(sync) else None


def show_activity(viewer) -> bool:
    """Open napari's activity dock (long tasks' progress bars); False where it cannot."""
    try:
        dialog = viewer.window._qt_window._activity_dialog
        dialog.show()
        dialog.raise_()
        return True
    except (AttributeError, RuntimeError):
        return False


def hide_activity(viewer) -> None:
    """Close napari's activity dock again (the status bar's *activity* button reopens it)."""
    try:
        viewer.window._qt_window._activity_dialog.hide()
    except (AttributeError, RuntimeError):
        pass


def canvas_widget(viewer):
    """The Qt widget of the viewer's vispy canvas (benchmarks send mouse events to it)."""
    return viewer.window._qt_viewer.canvas.native


def check_private_api(viewer=None) -> list[str]:
    """What of the above this napari lacks (empty: all there). With a ``napari.Viewer`` the
    window's parts are checked too."""
    import numpy as np
    from napari.components import ViewerModel
    from napari.layers import Image

    problems = []
    try:
        qt_viewer_class()
    except ImportError as exc:
        problems.append(f"napari._qt.qt_viewer.QtViewer: {exc}")
    model = ViewerModel()
    layer = model.add_image(np.zeros((4, 4, 4), np.float32))
    if not callable(getattr(layer, "_update_thumbnail", None)):
        problems.append("Layer._update_thumbnail")
    if not callable(getattr(layer, "_block_refresh", None)):
        problems.append("Layer._block_refresh")
    else:
        with refresh_blocker(layer):
            pass
    if reslice_callback(model) is None:
        problems.append("ViewerModel._update_layers")
    if layers_change_callback(model) is None:
        problems.append("ViewerModel._on_layers_change")
    ranges = layer_ranges(model)
    if ranges is None or len(ranges) != 3 or not hasattr(ranges[0], "start"):
        problems.append("LayerList._ranges (dims ranges of all layers)")
    if not isinstance(layer, Image):  # pragma: no cover
        problems.append("ViewerModel.add_image")
    if viewer is not None:
        try:
            dialog = viewer.window._qt_window._activity_dialog
            if not callable(getattr(dialog, "show", None)):
                problems.append("QtMainWindow._activity_dialog.show")
        except AttributeError:
            problems.append("Window._qt_window._activity_dialog")
        try:
            canvas_widget(viewer).width()
        except AttributeError:
            problems.append("Window._qt_viewer.canvas.native")
    return problems
