"""The progress convention of every long core operation (extraction, matching, evaluation).

A callback ``progress(done, total, message)`` is called with the steps done so far, the step
count and a short label; raising :class:`~napari_meddift.errors.CancelledError` inside it stops
the operation, which then leaves nothing half-written. The CLI draws it as a tqdm bar
(``cli/_common.py``), the widgets as a napari progress bar.
"""

from __future__ import annotations

from typing import Callable

#: progress(done, total, message) -> None; raise CancelledError inside to stop.
ProgressCallback = Callable[[int, int, str], None]

__all__ = ["ProgressCallback"]
