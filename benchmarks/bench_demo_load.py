"""`meddift demo` on a busy machine: first launch with an empty cache beside two CPU hogs.

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/bench_demo_load.py [--hogs 2] [--events 40]

The parent starts ``--hogs`` busy-looping processes, then the real ``meddift demo`` (the CLI's
``main(["demo", ...])``, in a child process with an empty ``MEDDIFT_CACHE``) and reports:

* ``stderr_lines``: lines the demo wrote to stderr (tracebacks included; the goal is 0);
* ``window_s``: process start -> first turn of the event loop with the window shown;
* ``explorer_ready_s``: -> the explorer connected itself (stores extracted by the worker) and
  showed its first map; ``landmarks_done_s``: -> the 300 landmarks matched;
* ``mouse_to_layers``: p50/p95/max over ``--events`` mouse moves on the source canvas, each
  from the Qt event to the explorer's layers updated (``result_applied``), sent one at a time
  from the running event loop (no nested loop), with the hogs still running;
* ``load_average`` when the mouse phase started (other engineers' jobs included).

``--screenshots DIR`` saves the screen during extraction (``first_launch.png``) and once the
explorer is ready (``demo_ready.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HOG = "while True:\n    pass\n"


def pct(a):
    a = np.asarray(a, float)
    if a.size == 0:
        return None
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1), "max_ms": round(float(a.max()), 1)}


class Driver:
    """Runs inside the demo's event loop (QTimers only): screenshots, readiness, mouse moves."""

    def __init__(self, viewer, task, t0, args, stamps):
        from qtpy.QtCore import QTimer

        self.viewer, self.task, self.t0, self.args, self.stamps = viewer, task, t0, args, stamps
        self.rng = np.random.default_rng(0)
        self.lat, self.misses, self.sent = [], 0, None
        self.ex = None
        self.timer = QTimer()
        self.timer.setInterval(50)
        self.timer.timeout.connect(self.poll)
        self.timer.start()
        QTimer.singleShot(0, lambda: self.stamp("window"))

    def now(self):
        return time.time() - self.t0

    def stamp(self, key):
        if key not in self.stamps:
            self.stamps[key] = round(self.now(), 2)
            print(f"STAMP {key} {self.stamps[key]}", flush=True)

    def grab(self, name):
        if not self.args.screenshots:
            return
        from qtpy.QtWidgets import QApplication

        os.makedirs(self.args.screenshots, exist_ok=True)
        QApplication.primaryScreen().grabWindow(0).save(os.path.join(self.args.screenshots, name))

    def poll(self):
        from napari_meddift._qt.explorer.widget import explorer_in

        s = self.stamps
        bar = self.task.bar
        counting = bar is not None and bar.total > 0 and bar.n > 0
        if "window" in s and "shot1" not in s and (counting or self.now() > s["window"] + 120):
            s["shot1"] = round(self.now(), 2)
            self.grab("first_launch.png")
        if self.ex is None:
            ex = explorer_in(self.viewer)
            if ex is not None and ex.result is not None:
                self.ex = ex
                self.stamp("explorer_ready")
                ex.result_applied.connect(self.on_result)
            return
        if "landmarks_done" not in s:
            if self.ex.task is not None and self.ex.task.running:
                return
            self.stamp("landmarks_done")
            s["load_average"] = [round(v, 2) for v in os.getloadavg()]
            self.grab("demo_ready.png")
            self.timer.stop()
            self.send()

    def send(self):
        from qtpy.QtCore import QPointF, Qt, QTimer
        from qtpy.QtGui import QMouseEvent
        from qtpy.QtWidgets import QApplication

        from napari_meddift._qt._napari_private import canvas_widget

        if len(self.lat) + self.misses >= self.args.events:
            return self.finish()
        canvas = canvas_widget(self.viewer)
        w, h = canvas.width(), canvas.height()
        # a voxel in the middle of the scan on the shown slice, to canvas pixels through the
        # camera (centre and zoom: screen pixels per mm); the docked canvases leave the source
        # canvas narrow, so a fixed share of the canvas can miss the scan
        layer = self.ex.source_layer
        shape = np.asarray(layer.data.shape, float)
        vox = [0.0] + [self.rng.uniform(0.3, 0.7) * n for n in shape[1:]]
        world = np.asarray(layer.data_to_world(vox), float)
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9 (viewer.camera is deprecated there)
        cam = scene.camera if scene is not None and hasattr(scene, "camera") else self.viewer.camera
        cy, cx = cam.center[-2:]
        pos = QPointF(float(w / 2 + (world[-1] - cx) * cam.zoom), float(h / 2 + (world[-2] - cy) * cam.zoom))
        self.ex.session.last_query = None
        self.sent = time.perf_counter()
        n = len(self.lat) + self.misses
        QApplication.sendEvent(canvas, QMouseEvent(QMouseEvent.Type.MouseMove, pos, canvas.mapToGlobal(pos),
                                                   Qt.MouseButton.NoButton, Qt.MouseButton.NoButton,
                                                   Qt.KeyboardModifier.NoModifier))
        QTimer.singleShot(10000, lambda n=n: self.timeout(n))

    def timeout(self, n):
        if self.sent is not None and len(self.lat) + self.misses == n:
            self.misses += 1
            self.sent = None
            self.send()

    def on_result(self, _result):
        from qtpy.QtCore import QTimer

        if self.sent is None:
            return
        self.lat.append((time.perf_counter() - self.sent) * 1e3)
        self.sent = None
        QTimer.singleShot(60, self.send)  # the next move once this one's repaint is done

    def finish(self):
        from qtpy.QtWidgets import QApplication

        self.stamps["mouse_to_layers"] = pct(self.lat)
        self.stamps["mouse_timeouts"] = self.misses
        print("BENCH " + json.dumps(self.stamps), flush=True)
        self.viewer.close()
        QApplication.instance().quit()


def child(args) -> int:
    t0 = float(os.environ["BENCH_T0"])
    stamps: dict = {}
    from napari_meddift._qt import app as A

    launch = A.launch_demo
    keep = []

    def wrapped(*a, **k):
        viewer, task = launch(*a, **k)
        stamps["launch_returned"] = round(time.time() - t0, 2)
        keep.append(Driver(viewer, task, t0, args, stamps))
        return viewer, task

    A.launch_demo = wrapped
    from napari_meddift.cli import main

    return main(["demo", "--cache", args.cache])


def parent(args) -> dict:
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
    try:
        with tempfile.TemporaryDirectory() as cache:
            # a first launch: empty cache, and napari's own settings fresh too (no window size
            # remembered from an earlier run)
            env = {**os.environ, "BENCH_T0": repr(time.time()), "MEDDIFT_CACHE": cache,
                   "NAPARI_CONFIG": os.path.join(cache, "napari-settings.yaml")}
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--cache", cache, "--events", str(args.events)]
            if args.screenshots:
                cmd += ["--screenshots", os.path.abspath(args.screenshots)]
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired as exc:  # what it printed until then still counts
                proc = subprocess.CompletedProcess(cmd, -9, exc.stdout or "", exc.stderr or "")
                proc.stdout = proc.stdout.decode() if isinstance(proc.stdout, bytes) else proc.stdout
                proc.stderr = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    res = {}
    for line in proc.stdout.splitlines():
        if line.startswith("STAMP "):
            _, key, value = line.split()
            res[key] = float(value)
        if line.startswith("BENCH "):
            res.update(json.loads(line[6:]))
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    res.update(returncode=proc.returncode, stderr_lines=len(err), hogs=args.hogs,
               terminal=[ln for ln in proc.stdout.splitlines() if ln.startswith("meddift demo")])
    if err:
        res["stderr_head"] = err[:20]
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hogs", type=int, default=2, help="busy-looping processes beside the demo")
    p.add_argument("--events", type=int, default=40, help="mouse moves timed once the explorer is ready")
    p.add_argument("--screenshots", help="folder for first_launch.png and demo_ready.png")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    print(json.dumps(parent(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
