"""The Feature quality dock under Xvfb: it runs the report on a napari worker and a real click on
a heatmap cell sets the explorer's levels, weights and timestep and re-colours the landmarks."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("matplotlib")
pytestmark = pytest.mark.gui

from napari_meddift.matching.window import Radius  # noqa: E402
from test_report import SHAPE, SPACING, _pair  # noqa: E402  (the synthetic store pairs)

from napari_meddift.evaluation.metrics import tre_mm  # noqa: E402
from napari_meddift.matching import Matcher  # noqa: E402


@pytest.fixture
def docks(make_napari_viewer, qtbot, tmp_path):
    from napari_meddift._qt._report import FeatureQualityWidget
    from napari_meddift._qt.explorer.widget import ExplorerWidget

    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    src = viewer.add_image(rng.random(SHAPE, dtype=np.float32), name="source", scale=SPACING)
    tgt = viewer.add_image(rng.random(SHAPE, dtype=np.float32), name="target", scale=SPACING, visible=False)
    ex = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(ex, name="Correspondence explorer")
    pairs = {0: _pair(tmp_path, 0), 50: _pair(tmp_path, 50)}
    ex.connect_pair(src, tgt, *pairs[0])
    ex.state.radius = 3
    pts = np.random.default_rng(3).integers(4, 20, size=(25, 3)).astype(float)
    ex.set_landmarks(pts, pts + np.array([1, -2, 2]))
    fq = FeatureQualityWidget(viewer)  # finds the explorer among the docks
    viewer.window.add_dock_widget(fq, name="Feature quality")
    yield viewer, ex, fq, pairs, pts
    ex.close_explorer()


def _click(qtbot, fq, panel, configuration, timestep):
    """A real mouse click on the canvas at a cell's centre (display pixels -> Qt widget pixels)."""
    from qtpy.QtCore import QPoint, Qt

    x, y = fq.cell_center(panel, configuration, timestep)
    ratio = fq.canvas.device_pixel_ratio or 1.0
    pos = QPoint(int(round(x / ratio)), int(round(fq.canvas.height() - y / ratio)))
    with qtbot.waitSignal(fq.cell_chosen, timeout=10000):
        qtbot.mouseClick(fq.canvas, Qt.MouseButton.LeftButton, pos=pos)


@pytest.mark.slow  # 10-14 s on a 2-core CPU (a viewer, two docks, a report)
def test_click_a_cell_sets_the_explorer(docks, qtbot):
    viewer, ex, fq, pairs, pts = docks
    fq.fusions.value = "up0:2+up2"
    with qtbot.waitSignal(fq.report_ready, timeout=120000):
        task = fq.run(pairs=pairs)
    qtbot.waitUntil(lambda: not task.running, timeout=10000)
    rep = fq.report
    assert [c.name for c in rep.configurations][-1] == "up0:2+up2" and rep.timesteps == [0, 50]
    # the explorer's radius (mm; (2, 2, 3) voxels on this grid); TRE, within, FB, ambiguity
    assert rep.radii == [Radius.mm(3)] and len(fq.panels) == 4
    assert sorted(ex.session.timesteps) == [0, 50]  # the t=50 stores joined the explorer
    assert fq.panel.message.value.startswith("best:")
    # the report's cell equals an independent matcher run with the explorer's landmarks
    table = Matcher.from_stores(*pairs[50], levels=["up0", "up2"], weights={"up0": 2, "up2": 1}).match_points(
        pts.astype(int), Radius.mm(3))
    want = tre_mm(table.target_zyx, pts + np.array([1, -2, 2]), SPACING).mean()
    assert rep.cell("up0:2+up2", 50)["tre_mean_mm"] == pytest.approx(want, rel=1e-12)

    # a click on a cell of the 'TRE mean' panel: levels, weights and timestep follow
    _click(qtbot, fq, 0, "up0:2+up2", 50)
    assert ex.state.timestep == 50 and ex.engine is ex.session.engines[50]
    assert ex.state.levels == ("up0", "up2") and ex.state.weights == {"up0": 2.0, "up2": 1.0}
    assert ex.engine.matcher.levels == ["up0", "up2"] and ex.engine.matcher.weights == {"up0": 2.0, "up2": 1.0}
    lm = ex.session.landmarks
    np.testing.assert_array_equal(lm.predicted, table.target_zyx)  # coloured by this configuration's errors
    layer = ex.landmark_layers.layers["source"]
    np.testing.assert_allclose(layer.features["error_mm"], lm.errors_mm)
    worst = int(np.argmax(lm.errors_mm))
    assert ex.session.last_query == tuple(int(v) for v in pts[worst])  # the worst landmark is searched
    assert f"#{worst}" in fq.panel.message.value

    # another panel, another cell: a single level at t=0
    _click(qtbot, fq, 3, "up1", 0)
    assert ex.state.timestep == 0 and ex.state.levels == ("up1",) and ex.state.weights == {"up1": 1.0}
    assert fq.chosen == ("up1", 0)


def test_refuses_without_landmarks_in_one_line(make_napari_viewer):
    from napari_meddift._qt._report import FeatureQualityWidget

    viewer = make_napari_viewer(show=False)
    fq = FeatureQualityWidget(viewer)
    assert fq.run() is None
    assert fq.panel.error.value == "connect a pair in the Correspondence explorer first"


def test_cancel_stops_the_report(docks, qtbot):
    viewer, ex, fq, pairs, pts = docks
    task = fq.run(pairs=pairs)
    fq.panel.cancel_button.native.click()  # the dock's own Cancel button
    qtbot.waitUntil(lambda: not task.running, timeout=60000)
    assert fq.report is None and "cancelled" in fq.panel.message.value
    assert fq.panel.run_button.enabled and not fq.panel.cancel_button.enabled
    assert ex.session.timesteps == [0]  # nothing half-applied to the explorer
