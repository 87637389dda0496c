"""A single background thread with a one-request 'latest' slot.

Mouse events arrive faster than a similarity map can be computed. Queuing them would make the
display lag further and further behind the pointer; instead every new request *replaces* the
pending one, so the worker always computes the newest position next and stale positions are
dropped, never queued. Results come back to the GUI thread through a Qt signal (queued
connection), so slot code may touch layers.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from qtpy.QtCore import QObject, Signal


class LatestRequestWorker(QObject):
    """Runs ``fn(request)`` on one daemon thread; newer requests overwrite a pending one.

    Signals (delivered on the GUI thread): ``finished(request, result)``, ``failed(request, exc)``.
    ``dropped`` counts requests replaced before they started (for tests and benchmarks).
    """

    finished = Signal(object, object)
    failed = Signal(object, object)

    def __init__(self, fn: Callable[[Any], Any], parent: QObject | None = None, name: str = "meddift-explorer",
                 init: Callable[[], None] | None = None):
        super().__init__(parent)
        self._fn = fn
        self._init = init
        self._cond = threading.Condition()
        self._pending: Any = None
        self._has_pending = False
        self._busy = False
        self._stop = False
        self.dropped = 0
        self.submitted = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, request: Any) -> None:
        """Make ``request`` the next one to run, replacing any pending request."""
        with self._cond:
            if self._has_pending:
                self.dropped += 1
            self._pending = request
            self._has_pending = True
            self.submitted += 1
            self._cond.notify()

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._busy and not self._has_pending

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block (without processing Qt events) until nothing is pending or running."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._busy or self._has_pending:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._has_pending = False
            self._pending = None
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        if self._init is not None:
            try:
                self._init()
            except Exception:  # pragma: no cover - tuning only
                pass
        while True:
            with self._cond:
                while not self._has_pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                request = self._pending
                self._pending = None
                self._has_pending = False
                self._busy = True
            try:
                result = self._fn(request)
            except Exception as exc:  # reported in the widget, never raised into Qt
                if not self._stop:
                    self.failed.emit(request, exc)
            else:
                if not self._stop:
                    self.finished.emit(request, result)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
