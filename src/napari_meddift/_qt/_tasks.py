"""Long work the napari way: a napari worker thread, a progress bar in napari's activity dock,
a Cancel that works, and errors shown as napari notifications (and in the widget).

``LongTask(desc, fn, on_done, on_error)`` runs ``fn(progress)`` on a napari worker, where
``progress(done, total, message)`` is the core's progress callback: it updates the activity
dock's bar (on the GUI thread, through a queued signal) and raises
:class:`~napari_meddift.errors.CancelledError` once ``cancel()`` was called, so the core stops
between steps and leaves nothing half-written.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from qtpy.QtCore import QObject, Signal

from ..errors import CancelledError, MedDiftError

__all__ = ["LongTask", "notify_error", "error_text"]


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


class LongTask(QObject):
    """One long job (see the module docstring). ``worker`` is the napari worker; ``running``."""

    progressed = Signal(int, int, str)

    def __init__(self, desc: str, fn: Callable[[Callable], Any], on_done: Callable[[Any], None],
                 on_error: Callable[[BaseException], None] | None = None,
                 on_finished: Callable[[], None] | None = None, parent: QObject | None = None):
        from napari.qt.threading import create_worker
        from napari.utils import progress

        super().__init__(parent)
        self.desc = desc
        self._cancel = threading.Event()
        self._on_error = on_error
        self._on_finished = on_finished
        self.running = True
        self.bar = progress(total=0, desc=desc)  # shown in napari's activity dock
        self.progressed.connect(self._update)
        self.worker = create_worker(fn, self._progress, _start_thread=False, _connect={
            "returned": on_done, "errored": self._errored, "finished": self._finished})

    def start(self) -> "LongTask":
        self.worker.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def _progress(self, done: int, total: int, message: str = "") -> None:  # worker thread
        if self._cancel.is_set():
            raise CancelledError(f"{self.desc}: cancelled")
        self.progressed.emit(int(done), int(total), str(message or ""))

    def _update(self, done: int, total: int, message: str) -> None:  # GUI thread
        bar = self.bar
        if bar is None or not self.running:
            return
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.set_description(f"{self.desc}: {message}" if message else self.desc)

    def _errored(self, exc: BaseException) -> None:
        notify_error(exc)
        if self._on_error is not None:
            self._on_error(exc)

    def _finished(self) -> None:
        self.running = False
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._on_finished is not None:
            self._on_finished()
