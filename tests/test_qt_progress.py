"""Progress that cannot re-enter: a worker flooding progress while the GUI thread is slow.

The bug this guards against: every progress call was a queued signal; napari's progress bar
runs ``QApplication.processEvents()`` inside each update, which delivered the next queued
update inside the current one, down to ``RecursionError`` (thousands of traceback lines from
``meddift demo`` on a busy machine). Here a real viewer with its activity dock gets a task that
sends progress as fast as a thread can while a GUI-thread callback keeps the event loop slow,
and: nothing reaches ``sys.excepthook`` (or stderr), the final value is what the bar and the
dock show last, a GUI timer keeps firing, and the bar is closed at the end.
"""

from __future__ import annotations

import sys
import time

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

N_EVENTS = 20000


@pytest.mark.qt_no_exception_capture
def test_progress_flood_with_a_slow_gui_thread(make_napari_viewer, qtbot, capfd, monkeypatch):
    from magicgui.widgets import Container
    from qtpy.QtCore import QTimer

    from napari_meddift._qt._long_task import LongTask
    from napari_meddift._qt._task_panel import TaskPanel

    hooked = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: hooked.append(exc))
    viewer = make_napari_viewer(show=True)
    panel = TaskPanel("Flood", "Run")
    viewer.window.add_dock_widget(Container(widgets=panel.widgets), name="flood")

    ticks = []
    tick = QTimer()
    tick.setInterval(20)
    tick.timeout.connect(lambda: ticks.append(time.perf_counter()))
    busy = QTimer()  # the GUI thread is slow: 30 ms of work every few ms
    busy.setInterval(5)
    busy.timeout.connect(lambda: time.sleep(0.03))

    def flood(progress):
        for i in range(1, N_EVENTS + 1):
            progress(i, N_EVENTS, f"step {i}")
        return "done"

    results, values, descs = [], [], []
    tick.start()
    busy.start()
    try:
        task = panel.start(flood, results.append)
        assert isinstance(task, LongTask)
        bar = task.bar
        bar.events.value.connect(lambda e: values.append(e.value))
        bar.events.description.connect(lambda e: descs.append(e.value))
        n_ticks = len(ticks)
        qtbot.waitUntil(lambda: not task.running, timeout=120000)
        ticks_during = len(ticks) - n_ticks
    finally:
        busy.stop()
    qtbot.wait(100)
    tick.stop()

    assert hooked == []  # nothing reached sys.excepthook
    err = capfd.readouterr().err
    assert "Traceback" not in err and "RecursionError" not in err, err[-2000:]
    assert results == ["done"]
    assert values and values[-1] == N_EVENTS  # the final value was shown last
    assert descs[-1] == f"Flood: step {N_EVENTS}"
    assert task.relay.applied < N_EVENTS // 100  # coalesced: latest wins
    assert (panel.progress.value, panel.progress.max) == (N_EVENTS, N_EVENTS)
    assert panel.message.value == f"step {N_EVENTS}"
    assert ticks_during > 0 and len(ticks) > n_ticks  # a GUI timer kept firing
    assert task.bar is None and task.relay.closed  # the bar left the activity dock
    assert not panel.running and panel.run_button.enabled


@pytest.mark.qt_no_exception_capture
def test_error_and_cancel_close_the_bar_too(make_napari_viewer, qtbot, monkeypatch):
    from napari_meddift._qt._long_task import LongTask
    from napari_meddift.errors import MedDiftError

    hooked = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: hooked.append(exc))
    make_napari_viewer(show=True)
    errors, finished = [], []

    def fail(progress):
        for i in range(500):
            progress(i, 1000, "working")
        raise MedDiftError("the input is wrong; choose another")

    task = LongTask("Failing", fail, lambda v: None, errors.append, lambda: finished.append(1)).start()
    qtbot.waitUntil(lambda: not task.running, timeout=30000)
    assert [str(e) for e in errors] == ["the input is wrong; choose another"] and finished == [1]
    assert task.bar is None

    def endless(progress):
        i = 0
        while True:
            i += 1
            progress(i, 0, "forever")
            time.sleep(0.001)

    task = LongTask("Endless", endless, lambda v: None, errors.append).start()
    qtbot.waitUntil(lambda: task.relay.applied > 0, timeout=30000)
    task.cancel()
    qtbot.waitUntil(lambda: not task.running, timeout=30000)
    assert "Endless: cancelled" in str(errors[-1]) and task.bar is None
    assert hooked == []
