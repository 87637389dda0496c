"""Timings of the explorer's mouse path, recorded outside the widget (a benchmark attaches one).

The widget only emits timestamps (``time.perf_counter()`` seconds): ``request_submitted(request,
t_submit)``, ``result_timed(result, t_arrive, t_done)`` and ``compare_timed(result, t_done)``.
A :class:`LatencyRecorder` listens to them and keeps, in milliseconds:

* ``latencies_ms``: from each mouse (or API) event to its updated layers;
* ``timings``: the stages of each result, ``event_to_submit``, ``compute``, ``wait_and_queue``
  (submit to arrival on the GUI thread, less the compute) and ``apply`` (arrival to updated
  layers); a stage that cannot be timed (the request was not the last one submitted) is NaN;
* ``compare_latencies_ms``: from each event to its timestep compare strip drawn.
"""

from __future__ import annotations

from collections import deque

__all__ = ["LatencyRecorder"]


class LatencyRecorder:
    """Records an :class:`~napari_meddift._qt.explorer.widget.ExplorerWidget`'s latencies (module doc).

    ``LatencyRecorder(explorer)`` starts recording at once; ``detach()`` stops it. ``maxlen``
    bounds each record (the oldest entries go first).
    """

    def __init__(self, explorer=None, maxlen: int = 10000):
        self.latencies_ms: deque[float] = deque(maxlen=maxlen)
        self.timings: deque[dict] = deque(maxlen=maxlen)  # ms: event->submit, compute, wait, apply
        self.compare_latencies_ms: deque[float] = deque(maxlen=maxlen)
        self._submitted: tuple | None = None  # (request, t_submit) of the last request submitted
        self.explorer = None
        if explorer is not None:
            self.attach(explorer)

    def attach(self, explorer) -> "LatencyRecorder":
        """Record ``explorer``'s timings from now on (one explorer at a time)."""
        self.detach()
        explorer.request_submitted.connect(self.on_submitted)
        explorer.result_timed.connect(self.on_result)
        explorer.compare_timed.connect(self.on_compare)
        self.explorer = explorer
        return self

    def detach(self) -> None:
        """Stop recording (the records stay)."""
        ex, self.explorer = self.explorer, None
        if ex is None:
            return
        for sig, slot in ((ex.request_submitted, self.on_submitted), (ex.result_timed, self.on_result),
                          (ex.compare_timed, self.on_compare)):
            try:
                sig.disconnect(slot)
            except (TypeError, RuntimeError):  # pragma: no cover - already gone
                pass

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self.latencies_ms.clear()
        self.timings.clear()
        self.compare_latencies_ms.clear()

    # ------------------------------------------------------------------ slots (GUI thread)

    def on_submitted(self, request, t_submit: float) -> None:
        self._submitted = (request, t_submit)

    def on_result(self, result, t_arrive: float, t_done: float) -> None:
        req = result.request
        self.latencies_ms.append((t_done - req.t_event) * 1e3)
        t_sub = self._submitted[1] if self._submitted is not None and self._submitted[0] is req else None
        self.timings.append({
            "event_to_submit": (t_sub - req.t_event) * 1e3 if t_sub else float("nan"),
            "compute": result.compute_ms,
            "wait_and_queue": ((t_arrive - t_sub) * 1e3 - result.compute_ms) if t_sub else float("nan"),
            "apply": (t_done - t_arrive) * 1e3,
        })

    def on_compare(self, result, t_done: float) -> None:
        self.compare_latencies_ms.append((t_done - result.request.t_event) * 1e3)
