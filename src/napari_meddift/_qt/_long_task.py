"""Long work the napari way: a napari worker thread, a progress bar in napari's activity dock,
a Cancel that works, and errors shown as napari notifications (and in the widget).

``LongTask(desc, fn, on_done, on_error)`` runs ``fn(progress)`` on a napari worker, where
``progress(done, total, message)`` is the core's progress callback: it raises
:class:`~napari_meddift.errors.CancelledError` once ``cancel()`` was called, so the core stops
between steps and leaves nothing half-written.

Shared by every dock with long work: the explorer's long jobs (``explorer/long_jobs.py``), the
run/cancel rows of the Extract, Registration and Feature quality docks (``_task_panel.py``),
Landmarks and Feature view. (The explorer's mouse path does not use it: a search per pointer
position runs on ``explorer/latest_request_worker.py``.)

This module is the one place where worker progress becomes napari progress, and it is built so
that it cannot re-enter itself (a 300-landmark match once sent one queued signal per landmark;
napari's progress bar calls ``QApplication.processEvents()`` inside every update, which delivered
the next queued signal inside the current update, and so on until ``RecursionError``):

* the worker only writes the latest ``(done, total, message)`` into a slot under a lock (no
  signal per call: a flood of progress costs the GUI thread nothing);
* a GUI-thread timer applies the slot at most every :data:`APPLY_INTERVAL_MS` (latest value wins);
* no update is applied, and no task is settled, while another update of any task is being
  applied (napari's nested ``processEvents`` may fire our timer again: it returns at once);
* the worker's end (result, error, finish) is recorded, and settled from the top of the event
  loop: the final value is applied, the bar is closed (always, in a ``finally``), then the
  task's callbacks run.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from qtpy.QtCore import QObject, QTimer, Signal

from ..errors import CancelledError, MedDiftError

__all__ = ["LongTask", "ProgressRelay", "notify_error", "error_text", "APPLY_INTERVAL_MS"]

#: the most often (ms) a task's progress is applied to napari's bar and the widgets
APPLY_INTERVAL_MS = 100

#: True while any relay applies an update (napari may run the event loop inside it)
_APPLYING = [False]


def error_text(exc: BaseException) -> str:
    """One line for the user: the MedDiftError's own text, else the type and message."""
    return str(exc) if isinstance(exc, (MedDiftError, CancelledError)) else f"{type(exc).__name__}: {exc}"


def notify_error(exc: BaseException | str) -> None:
    """Show a problem as a napari notification (besides the widget's red line)."""
    try:
        from napari.utils.notifications import show_error, show_info

        if isinstance(exc, CancelledError):
            show_info(error_text(exc))
        else:
            show_error(exc if isinstance(exc, str) else error_text(exc))
    except Exception:  # pragma: no cover - notifications are a courtesy
        pass


class ProgressRelay(QObject):
    """Worker progress -> one napari progress bar, coalesced and never re-entered (module doc).

    ``post(done, total, message)`` may be called from any thread, as often as it likes.
    ``progressed(done, total, message)`` is emitted on the GUI thread with each applied value
    (for a dock's own bar); ``applied`` counts them. ``close()`` applies the last value and
    closes the bar; ``closed`` tells whether it did.
    """

    progressed = Signal(int, int, str)

    def __init__(self, desc: str, parent: QObject | None = None):
        from napari.utils import progress

        super().__init__(parent)
        self.desc = desc
        self._lock = threading.Lock()
        self._latest: tuple[int, int, str] | None = None
        self._shown: tuple[int, int, str] | None = None
        self.applied = 0
        self.closed = False
        self._desc = desc
        self.bar = progress(total=0, desc=desc)  # shown in napari's activity dock
        self._timer = QTimer(self)
        self._timer.setInterval(APPLY_INTERVAL_MS)
        self._timer.timeout.connect(self.flush)
        self._timer.start()

    def post(self, done: int, total: int, message: str = "") -> None:  # any thread
        with self._lock:
            self._latest = (int(done), int(total), str(message or ""))

    def flush(self) -> bool:
        """Apply the latest value if it changed; False when it must wait (another update is
        being applied, the bar is closed)."""
        if _APPLYING[0] or self.closed:
            return False
        with self._lock:
            latest = self._latest
        if latest is None or latest == self._shown:
            return True
        _APPLYING[0] = True
        try:
            self._shown = latest
            self._apply(*latest)
        finally:
            _APPLYING[0] = False
        return True

    def _apply(self, done: int, total: int, message: str) -> None:
        bar = self.bar
        self.applied += 1
        total = max(int(total), 0)
        if bar.total != total:
            bar.total = total
        done = min(done, total) if total else done
        if done != bar.n:
            bar.update(done - bar.n)  # napari's value event (a processEvents inside)
        desc = f"{self.desc}: {message}" if message else self.desc
        if desc != self._desc:
            self._desc = desc
            bar.set_description(desc)  # napari's description event (another processEvents)
        self.progressed.emit(done, total, message)

    def close(self) -> bool:
        """Apply the last value and close the bar; False (nothing done) while an update is
        being applied: call again from the top of the event loop."""
        if self.closed:
            return True
        if _APPLYING[0]:
            return False
        self._timer.stop()
        try:
            self.flush()
        finally:
            self.closed = True
            bar, self.bar = self.bar, None
            if bar is not None:
                bar.close()
        return True


class LongTask(QObject):
    """One long job (see the module docstring). ``worker`` is the napari worker; ``running``
    until its end has been settled; ``finished`` is emitted then, after the task's callbacks."""

    finished = Signal()

    def __init__(self, desc: str, fn: Callable[[Callable], Any], on_done: Callable[[Any], None],
                 on_error: Callable[[BaseException], None] | None = None,
                 on_finished: Callable[[], None] | None = None, parent: QObject | None = None):
        from napari.qt.threading import create_worker

        super().__init__(parent)
        self.desc = desc
        self._cancel = threading.Event()
        self._on_done = on_done
        self._on_error = on_error
        self._on_finished = on_finished
        self._outcome: list = []  # ("returned", value) / ("errored", exc), then ("finished", None)
        self.running = True
        self.relay = ProgressRelay(desc, parent=self)
        self.progressed = self.relay.progressed
        self.worker = create_worker(fn, self._progress, _start_thread=False, _connect={
            "returned": lambda v: self._record("returned", v), "errored": lambda e: self._record("errored", e),
            "finished": lambda: self._record("finished", None)})

    @property
    def bar(self):
        """napari's progress object of this task (None once closed)."""
        return self.relay.bar

    def start(self) -> "LongTask":
        self.worker.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def _progress(self, done: int, total: int, message: str = "") -> None:  # worker thread
        if self._cancel.is_set():
            raise CancelledError(f"{self.desc}: cancelled")
        self.relay.post(done, total, message)

    def _record(self, kind: str, value) -> None:  # GUI thread, possibly inside napari's processEvents
        self._outcome.append((kind, value))
        if kind == "finished":
            QTimer.singleShot(0, self._settle)

    def _settle(self) -> None:
        """The worker has ended: final value, bar closed, then the callbacks (never nested)."""
        if not self.running:
            return
        if _APPLYING[0]:  # inside an update of some task: come back from the top of the loop
            QTimer.singleShot(APPLY_INTERVAL_MS // 4, self._settle)
            return
        self.running = False
        try:
            self.relay.close()
        finally:
            try:
                for kind, value in self._outcome:
                    if kind == "returned":
                        self._on_done(value)
                    elif kind == "errored":
                        notify_error(value)
                        if self._on_error is not None:
                            self._on_error(value)
            finally:
                if self._on_finished is not None:
                    self._on_finished()
                self.finished.emit()
