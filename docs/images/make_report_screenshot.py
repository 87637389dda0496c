"""The Feature quality dock beside the explorer on the demo pair (docs/teaching.md, docs/napari-plugin.md).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/images/make_report_screenshot.py [--cache DIR]

The demo as ``meddift demo`` opens it (mini, levels up0+up1, window radius 8, the known
deformation as truth), the report run over timesteps 0,20,50,100,200 (stores from the cache,
extracted there when missing), then a click on a cell (``--cell``, default the best TRE mean):
the explorer switches to it and shows that configuration's worst landmark.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def pump(app, seconds=0.5):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(HERE / "feature_quality.png"))
    p.add_argument("--size", default="1600x1000")
    p.add_argument("--cache", help="store cache (default: the user cache, as meddift demo)")
    p.add_argument("--timesteps", default="0,20,50,100,200")
    p.add_argument("--cell", help="configuration@timestep to click, e.g. up1@200 (default: the best TRE mean)")
    args = p.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication, QDockWidget

    from napari_meddift._qt.app import launch_explorer
    from napari_meddift.cli.demo import extract_demo_stores
    from napari_meddift.explorer import FieldTruth
    from napari_meddift.io.cache import default_cache_dir
    from napari_meddift.synthetic.demo import load_demo_field, load_demo_lungs, load_demo_pair

    cache = Path(args.cache) if args.cache else default_cache_dir()
    inhale, exhale, src_pts, tgt_pts = load_demo_pair()
    s, t = extract_demo_stores(inhale, exhale, cache)
    viewer = napari.Viewer(title="MedDIFT correspondence explorer")
    w, h = (int(v) for v in args.size.split("x"))
    viewer.window._qt_window.resize(w, h)
    app = QApplication.instance()
    launch_explorer(inhale, exhale, s, t, landmarks=(src_pts, tgt_pts), viewer=viewer, radius=8,
                    truth=FieldTruth(load_demo_field().u_voxels()), lung_mask=load_demo_lungs()[1])
    ex = viewer.window.dock_widgets["Correspondence explorer"]
    fq = viewer.window.dock_widgets["Feature quality"]
    pump(app, 1.0)
    fq.timesteps.value = args.timesteps
    t0 = time.perf_counter()
    fq.run(run_async=False, cache_dir=cache)
    print(f"report in {time.perf_counter() - t0:.1f} s")
    if args.cell:
        name, _, ts = args.cell.partition("@")
        cell = (name, int(ts))
    else:
        best = fq.report.best("tre_mean_mm")
        cell = (best["configuration"], best["timestep"])
    dock = fq
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    dock.raise_()
    pump(app, 1.0)
    with_result = []
    ex.result_applied.connect(with_result.append)
    fq.choose(*cell)
    end = time.perf_counter() + 30
    while not with_result and time.perf_counter() < end:  # the worst landmark's map is drawn
        pump(app, 0.2)
    pump(app, 2.0)  # its consistency check and the landmark layers
    viewer.screenshot(args.out, canvas_only=False)
    print("clicked", cell, "->", fq.panel.message.value)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
