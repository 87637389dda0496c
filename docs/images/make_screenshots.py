"""Regenerate the screenshots of docs/napari-plugin.md and docs/teaching.md from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/images/make_screenshots.py [--timesteps 0,20,50,100,200]

Uses the packaged demo pair, the mini backbone (packaged weights, default levels up0+up1), the
demo's known deformation as truth, window radius 12. Stores go to the user cache (as
``meddift demo``), so a second run reuses them. ``Viewer(show=False).screenshot()`` is black:
the window is shown.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def pump(app, seconds=0.5):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def _raise(widget):
    """Bring the dock (tab) holding ``widget`` to the front."""
    from qtpy.QtWidgets import QDockWidget

    w = widget
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    if w is not None:
        w.raise_()


def _frame(ex, keys):
    """Centre and zoom the target canvas on the given map layers."""
    tv = ex.target_view.viewer
    L = ex.map_layers.layers
    lo, hi = [], []
    for k in keys:
        layer = L[k]
        if not layer.visible:
            continue
        corners = np.array([layer.data_to_world([0, 0, 0]), layer.data_to_world(np.array(layer.data.shape) - 1)])
        lo.append(corners.min(0))
        hi.append(corners.max(0))
    lo, hi = np.min(lo, 0), np.max(hi, 0)
    tv.camera.center = (tv.camera.center[0], (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2)
    tv.camera.zoom = 0.9 * min(ex.target_view.qt_viewer.width() / (hi[2] - lo[2] + 5),
                               ex.target_view.qt_viewer.height() / (hi[1] - lo[1] + 5))


def settle(app, ex):
    """Let the map, then the compare strip and the consistency check, arrive and draw."""
    for _ in range(3):
        ex.search_worker.wait_idle(20)
        pump(app, 0.5)
        ex.compare_worker.wait_idle(20)
        ex.consistency_worker.wait_idle(20)
        pump(app, 0.5)


def shot(app, ex, viewer, path):
    settle(app, ex)
    viewer.screenshot(str(path), canvas_only=False)
    print("wrote", path)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--size", default="1600x1000")
    p.add_argument("--timesteps", default="0,20,50,100,200")
    args = p.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_meddift._qt._extract import ExtractWidget
    from napari_meddift._qt.app import launch_explorer
    from napari_meddift.cli.demo import extract_demo_stores
    from napari_meddift.explorer import DISPLAY_MODES, FieldTruth
    from napari_meddift.io.cache import default_cache_dir
    from napari_meddift.synthetic.demo import load_demo_field, load_demo_lungs, load_demo_pair

    out = Path(args.out)
    cache = default_cache_dir()
    inhale, exhale, src_pts, tgt_pts = load_demo_pair()
    s, t = extract_demo_stores(inhale, exhale, cache)

    viewer = napari.Viewer(title="MedDIFT correspondence explorer")
    w, h = (int(v) for v in args.size.split("x"))
    viewer.window._qt_window.resize(w, h)
    app = QApplication.instance()
    launch_explorer(inhale, exhale, s, t, landmarks=(src_pts, tgt_pts), viewer=viewer, radius=12,
                    truth=FieldTruth(load_demo_field().u_voxels()), lung_mask=load_demo_lungs()[1])
    ex = viewer.window.dock_widgets["Correspondence explorer"]
    lw = viewer.window.dock_widgets["Landmarks"]
    fv = viewer.window.dock_widgets["Feature view (PCA)"]
    pump(app, 1.0)
    viewer.reset_view()
    lw.match(run_async=False)
    pump(app, 0.5)
    print("map colour range suggested for the pair:", ex.state.color_range)

    # 1. the explorer on a typical landmark: match, true point, error, crosshairs, window, landmarks
    order = np.argsort(ex.session.landmarks.errors_mm)
    i = int(order[len(order) // 2])
    ex.go_to_landmark(i)
    shot(app, ex, viewer, out / "explorer.png")

    # 2. what each level sees: the per-level strip, raw and rank
    ex.state.per_level = True
    ex.rerun()
    settle(app, ex)
    tv = ex.target_view.viewer
    cam = tv.camera.center, tv.camera.zoom
    _frame(ex, ["maps"])
    shot(app, ex, viewer, out / "explorer_per_level.png")
    ex.state.display_mode = DISPLAY_MODES[2]
    shot(app, ex, viewer, out / "explorer_per_level_rank.png")

    # 3. what the timestep does: the compare strip over the cached timesteps
    ex.extract_timesteps([int(v) for v in args.timesteps.split(",")], run_async=False)
    ex.state.per_level = False
    ex.state.compare_timesteps = True
    ex.rerun()
    settle(app, ex)
    _frame(ex, ["maps", "compare"])
    shot(app, ex, viewer, out / "explorer_timesteps.png")
    ex.state.compare_timesteps = False
    ex.state.timestep = 20

    # 4. why a match fails: the worst landmark, rank map, landmarks filtered to the bad ones
    ex.state.min_error_mm = 8.0
    _raise(lw)
    lw.table.selectRow(0)
    ex.search_worker.wait_idle(10)
    tv.camera.center, tv.camera.zoom = cam
    shot(app, ex, viewer, out / "landmarks.png")
    ex.state.display_mode = DISPLAY_MODES[0]
    ex.state.min_error_mm = 0.0

    # 5. the PCA feature view (joint over both scans)
    _raise(fv)
    fv.level_combo.setCurrentText("up1")  # mini's finest level is grainy; up1 shows anatomy
    fv.compute(run_async=False)
    viewer.layers["PCA features"].opacity = 1.0
    ex.target_view.viewer.layers["PCA features"].opacity = 1.0
    shot(app, ex, viewer, out / "feature_view.png")
    viewer.close()

    # 6. the extraction widget after a run
    v2 = napari.Viewer(title="MedDIFT: extract descriptors")
    v2.window._qt_window.resize(w, h)
    from napari_meddift._qt._layers import volume_layer_kwargs

    v2.add_image(inhale.array, **volume_layer_kwargs(inhale, name="inhale"))
    v2.add_image(exhale.array, **volume_layer_kwargs(exhale, name="exhale", visible=False))
    xw = ExtractWidget(v2)
    v2.window.add_dock_widget(xw, name="Extract descriptors", area="right")
    xw.cache_dir.value = str(cache)
    xw.open_explorer.value = False
    xw.start()
    while xw.running:
        pump(app, 0.2)
    v2.reset_view()
    pump(app, 1.0)
    v2.screenshot(str(out / "extract.png"), canvas_only=False)
    v2.close()
    print("screenshots written to", out)


if __name__ == "__main__":
    main()
