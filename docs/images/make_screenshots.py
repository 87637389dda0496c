"""Regenerate the screenshots of docs/napari-plugin.md from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/images/make_screenshots.py [--demo-dir DIR] [--random]

Uses the packaged demo pair (or --demo-dir, built by ``meddift build-demo``)
and the mini backbone (its packaged weights, default levels up0+up1; --random for the
random-weights control, --weights for another weights file).
Stores go to a temporary cache. ``Viewer(show=False).screenshot()`` is black: the window is shown.
"""

from __future__ import annotations

import argparse
import tempfile
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


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--demo-dir", default=None)
    p.add_argument("--random", action="store_true", help="mini with random weights (if no trained weights)")
    p.add_argument("--weights", default=None, help="mini weights file (default: the packaged ones)")
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--size", default="1600x1000")
    args = p.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_meddift._qt._explorer import find_explorer
    from napari_meddift._qt._extract import ExtractWidget
    from napari_meddift._qt.app import launch_explorer
    from napari_meddift.backbones import get_backbone
    from napari_meddift.backbones.base import ExtractionSettings
    from napari_meddift.synthetic.demo import load_demo_pair
    from napari_meddift.backbones.extraction import extract_to_store

    out = Path(args.out)
    inhale, exhale, src_pts, tgt_pts = load_demo_pair(args.demo_dir) if args.demo_dir else load_demo_pair()
    backbone = get_backbone("mini", random_weights=True) if args.random else get_backbone("mini", weights=args.weights)
    cache = Path(tempfile.mkdtemp(prefix="meddift-shots-"))
    settings = ExtractionSettings(timestep=20, seed=0, device="cpu")
    s, _ = extract_to_store(inhale, backbone, settings, cache / "inhale.zarr")
    t, _ = extract_to_store(exhale, backbone, settings, cache / "exhale.zarr")

    viewer = napari.Viewer(title="MedDIFT correspondence explorer")
    w, h = (int(v) for v in args.size.split("x"))
    viewer.window._qt_window.resize(w, h)
    app = QApplication.instance()
    launch_explorer(inhale, exhale, s, t, landmarks=(src_pts, tgt_pts), viewer=viewer)
    ex = find_explorer(viewer)
    ex.radius_spin.setValue(12)
    pump(app, 1.0)
    viewer.reset_view()

    # 1. the explorer on a landmark, following the match
    lw = ex.landmarks_widget
    lw.match(run_async=False)
    pump(app, 0.5)
    i = int(lw.row_landmark(len(src_pts) // 2))
    ex.show_query(tuple(int(v) for v in np.rint(src_pts[i])))
    ex._worker.wait_idle(10)
    pump(app, 1.5)
    viewer.screenshot(str(out / "explorer.png"), canvas_only=False)

    # 2. per-level maps beside the fused one (in the colour range suggested for the pair)
    print("map colour range suggested for the pair:", ex.range_combo.currentText())
    ex.per_level_check.setChecked(True)
    ex.rerun()
    ex._worker.wait_idle(10)
    pump(app, 1.0)
    tv = ex.target_view.viewer
    cam_center, cam_zoom = tv.camera.center, tv.camera.zoom
    strip = ex._layers["levels"]
    fused = ex._layers["fused"]
    x0 = fused.translate[2]
    x1 = strip.translate[2] + strip.data.shape[2] * strip.scale[2]
    y_mid = fused.translate[1] + fused.data.shape[1] * fused.scale[1] / 2
    tv.camera.center = (tv.camera.center[0], y_mid, (x0 + x1) / 2)
    tv.camera.zoom = 0.9 * ex.target_view.qt_viewer.width() / (x1 - x0)
    pump(app, 1.0)
    viewer.screenshot(str(out / "explorer_per_level.png"), canvas_only=False)
    tv.camera.center, tv.camera.zoom = cam_center, cam_zoom
    ex.per_level_check.setChecked(False)

    # 3. the landmarks table, worst pair selected
    _raise(lw)
    lw.table.selectRow(0)
    ex._worker.wait_idle(10)
    pump(app, 1.5)
    viewer.screenshot(str(out / "landmarks.png"), canvas_only=False)

    # 4. the PCA feature view (joint over both scans)
    _raise(ex.feature_view)
    ex.feature_view.level_combo.setCurrentText("up1")  # mini's finest level is grainy; up1 shows anatomy
    ex.feature_view.compute(run_async=False)
    viewer.layers["PCA features"].opacity = 1.0
    ex.target_view.viewer.layers["PCA features"].opacity = 1.0
    pump(app, 1.5)
    viewer.screenshot(str(out / "feature_view.png"), canvas_only=False)
    viewer.close()

    # 5. the extraction widget after a run
    v2 = napari.Viewer(title="MedDIFT: extract descriptors")
    v2.window._qt_window.resize(w, h)
    from napari_meddift._qt._layers import volume_layer_kwargs

    v2.add_image(inhale.array, **volume_layer_kwargs(inhale, name="inhale"))
    v2.add_image(exhale.array, **volume_layer_kwargs(exhale, name="exhale", visible=False))
    xw = ExtractWidget(v2)
    v2.window.add_dock_widget(xw, name="Extract descriptors", area="right")
    xw.cache_dir.value = str(cache)
    xw.random_weights.value = bool(args.random)
    if args.weights:
        xw.weights.value = args.weights
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
