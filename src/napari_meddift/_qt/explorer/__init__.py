"""The Correspondence explorer dock (Qt): one module per concern.

* ``widget``: :class:`ExplorerWidget`, the dock (wiring, mouse callbacks, results to layers),
  and :func:`explorer_in` (the explorer docked in a viewer's window, for the other docks);
* ``controls``: magicgui controls bound both ways to the core's evented ``ExplorerState``;
* ``target_view``: the second napari canvas, docked beside the main one, and the dock layout;
* ``map_layers``: the layers a result is drawn into (maps, strips, markers, crosshairs,
  search window), updated in place (``in_place_updates``);
* ``landmark_layers``: every landmark coloured by error, click to pick;
* ``latest_request_worker``: the mouse path's thread with a one-request slot (stale positions
  are dropped, never queued);
* ``long_jobs``: loading stores, extracting timesteps, matching all landmarks, each a
  ``_qt._long_task.LongTask`` (napari worker, progress, Cancel);
* ``latency``: :class:`LatencyRecorder`, the mouse path's timings for benchmarks.

The model (no Qt) is the core package ``napari_meddift.explorer``; modules shared with other
docks (``_long_task``, ``_task_panel``, ``_controls``, ``_layers``, ``_napari_private``) stay in
``_qt/``.
"""

from .latency import LatencyRecorder
from .widget import ExplorerWidget, explorer_in

__all__ = ["ExplorerWidget", "LatencyRecorder", "explorer_in"]
