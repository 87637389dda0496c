"""The run / cancel / progress / message / error rows of a dock that runs one long job at a time.

``TaskPanel(desc, run_text)`` owns the magicgui widgets (``widgets`` lists them in dock order)
and one :class:`~napari_meddift._qt._long_task.LongTask` at a time: ``start(fn, on_done)`` runs
``fn(progress)`` on a napari worker, mirrors its progress into the panel's bar and message (and
napari's activity dock), and shows a failure as one red line (a cancel as a plain message). The
dock keeps its own inputs and results; the Extract and Registration docks share this panel.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from magicgui.widgets import Label, ProgressBar, PushButton
from qtpy.QtCore import QObject, QTimer

from ..errors import CancelledError
from ._controls import ERROR_STYLE
from ._long_task import LongTask, error_text

__all__ = ["TaskPanel"]


class TaskPanel(QObject):
    """Buttons, progress, message and error line for one long job at a time (see module doc).

    ``cancel_note`` follows the cancel message (what the core left behind); ``watch_stall``
    measures the longest GUI event-loop stall while a job runs (``max_stall_ms``, a 10 ms timer),
    which the Extract dock reports.
    """

    def __init__(self, desc: str, run_text: str, cancel_note: str = "", watch_stall: bool = False,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.desc = desc
        self.cancel_note = cancel_note
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=100, value=0)
        self.message = Label(value="")
        self.error = Label(value="")
        self.error.native.setStyleSheet(ERROR_STYLE)
        self.error.native.setWordWrap(True)
        self.message.native.setWordWrap(True)
        self.cancel_button.changed.connect(self.cancel)
        self.task: LongTask | None = None
        self.max_stall_ms = 0.0
        self._last_tick = 0.0
        self._stall_timer: QTimer | None = None
        if watch_stall:
            self._stall_timer = QTimer(self)
            self._stall_timer.setInterval(10)
            self._stall_timer.timeout.connect(self._tick)

    @property
    def widgets(self) -> list:
        """The panel's widgets, in the order a dock shows them."""
        return [self.run_button, self.cancel_button, self.progress, self.message, self.error]

    @property
    def running(self) -> bool:
        return self.task is not None and self.task.running

    def refuse(self, text: str) -> None:
        """Show a problem found before any work (one red line)."""
        self.error.value = text

    def start(self, fn: Callable[[Callable], Any], on_done: Callable[[Any], None]) -> LongTask | None:
        """Run ``fn(progress)`` off the GUI thread; ``on_done(result)`` on the GUI thread.
        None while another job of this panel runs."""
        if self.running:
            return None
        self.error.value = ""
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.message.value = "starting..."
        self.task = LongTask(self.desc, fn, on_done, self._failed, self._finished, parent=self)
        self.task.progressed.connect(self._on_progress)
        if self._stall_timer is not None:
            self.max_stall_ms = 0.0
            self._last_tick = time.perf_counter()
            self._stall_timer.start()
        return self.task.start()

    def cancel(self, *_) -> None:
        """Stop at the job's next progress step (the core then leaves nothing half-written)."""
        if self.running:
            self.task.cancel()
            self.message.value = "cancelling..."

    def done(self, text: str) -> None:
        """Show a finished job's summary with a full bar."""
        self.progress.value = self.progress.max
        self.message.value = text

    def _tick(self) -> None:
        now = time.perf_counter()
        self.max_stall_ms = max(self.max_stall_ms, (now - self._last_tick) * 1e3 - self._stall_timer.interval())
        self._last_tick = now

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.max = max(1, int(total))
        self.progress.value = min(int(done), int(total))
        self.message.value = message

    def _failed(self, exc: BaseException) -> None:  # LongTask already raised a notification
        if isinstance(exc, CancelledError):
            self.message.value = f"{exc}; {self.cancel_note}" if self.cancel_note else str(exc)
            self.progress.value = 0
        else:
            self.error.value = error_text(exc)
            self.message.value = ""

    def _finished(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.stop()
        self.run_button.enabled = True
        self.cancel_button.enabled = False
