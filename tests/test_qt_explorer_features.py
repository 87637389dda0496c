"""Explorer features in a real napari window (Xvfb): truth, landmarks, timesteps, contrast, aids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_meddift.explorer import DISPLAY_MODES  # noqa: E402
from napari_meddift.matching import Matcher  # noqa: E402

SHAPE = (20, 24, 22)
SPACING = (2.0, 1.5, 1.25)
# the explorer's window is in mm: 6 mm on SPACING is ceil(6 / s) = (3, 4, 5) voxels
R_MM, R_VOX = 6.0, (3, 4, 5)


def _levels(seed):
    g = torch.Generator().manual_seed(seed)
    return {"up0": torch.randn(16, 5, 6, 6, generator=g), "up1": torch.randn(8, 10, 12, 11, generator=g),
            "up2": torch.randn(4, 20, 24, 22, generator=g)}


@pytest.fixture
def explorer(make_napari_viewer, qtbot):
    from napari_meddift._qt.explorer.widget import ExplorerWidget, explorer_in

    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    src = viewer.add_image(rng.random(SHAPE, dtype=np.float32), name="source", scale=SPACING)
    tgt = viewer.add_image(rng.random(SHAPE, dtype=np.float32), name="target", scale=SPACING, visible=False)
    w = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(w, name="Correspondence explorer")
    assert explorer_in(viewer) is w  # other widgets find it among the docks, no global registry
    w.connect_pair(src, tgt, matcher=Matcher(_levels(0), _levels(1), SHAPE, SHAPE))
    w.state.radius = R_MM
    yield viewer, w, src, tgt
    w.close_explorer()


def _query(qtbot, w, vox):
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        w.show_query(vox)
    return w.result


def test_truth_point_and_error_live(explorer, qtbot):
    viewer, w, src, tgt = explorer
    pts = np.array([[10.0, 12.0, 11.0], [4.0, 5.0, 6.0]])
    w.set_landmarks(pts, pts + [1.0, 0.0, -1.0])
    res = _query(qtbot, w, (10, 12, 11))
    np.testing.assert_allclose(w.map_layers.marker("truth"), [11.0, 12.0, 10.0])
    mk = w.map_layers.layers["markers"]  # one points layer: the match a yellow disc, the truth a green ring
    assert [str(v) for v in mk.symbol[:2]] == ["disc", "ring"]
    np.testing.assert_allclose(mk.face_color[:2], [[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    err = np.linalg.norm((np.subtract(res.target_zyx, [11, 12, 10])) * SPACING)
    assert res.error_mm == pytest.approx(err)
    text = w.status_label.text()
    assert f"error {err:.1f} mm" in text and "nearest landmark #0, 0.0 mm away" in text
    w.state.show_truth = False
    assert w.map_layers.marker("truth") is None and w.controls.show_truth.value is False
    np.testing.assert_array_equal(w.map_layers.marker("match"), res.target_zyx)


def test_landmarks_coloured_by_error_filter_and_click(explorer, qtbot):
    viewer, w, src, tgt = explorer
    rng = np.random.default_rng(4)
    pts = np.stack([rng.integers(3, n - 3, 8) for n in SHAPE], 1).astype(float)
    w.set_landmarks(pts, pts + 1)
    with qtbot.waitSignal(w.landmarks_applied, timeout=30000):
        w.match_landmarks()  # a napari worker; progress in the activity dock
    lm = w.session.landmarks
    assert lm.matched
    ref = Matcher(_levels(0), _levels(1), SHAPE, SHAPE)
    for i in range(len(pts)):
        assert tuple(lm.predicted[i]) == tuple(ref.match(tuple(int(v) for v in pts[i]), R_VOX).target_zyx)
    L = w.landmark_layers.layers
    np.testing.assert_allclose(L["source"].features["error_mm"], lm.errors_mm)
    # colour follows the error: the worst point gets the colormap's top colour
    worst = int(np.argmax(lm.errors_mm))
    top = np.asarray(L["truth"].face_colormap.map(np.array([1.0])))[0]
    np.testing.assert_allclose(L["truth"].face_color[worst], top, atol=1e-6)
    np.testing.assert_allclose(L["vectors"].data[:, 1], lm.predicted - lm.target_zyx)
    # the filter hides the smaller errors in both viewers
    w.controls.min_error.value = round(float(np.median(lm.errors_mm)), 1)
    cut = w.state.min_error_mm
    assert cut == pytest.approx(np.median(lm.errors_mm), abs=0.06)
    assert 0 < (lm.errors_mm >= cut).sum() < len(pts)
    np.testing.assert_array_equal(L["source"].shown, lm.errors_mm >= cut)
    np.testing.assert_array_equal(L["truth"].shown, lm.errors_mm >= cut)
    # a click on a landmark point takes both viewers there
    j = int(np.nonzero(lm.errors_mm >= cut)[0][0])
    world = src.data_to_world(pts[j])
    viewer.dims.point = tuple(world)
    assert w.landmark_layers.pick(viewer, world, dims_displayed=[1, 2]) == j
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        w.go_to_landmark(j)
    assert w.result.request.query_zyx == tuple(int(v) for v in pts[j])
    assert w.target_view.viewer.dims.point[0] == pytest.approx(tgt.data_to_world(pts[j] + 1)[0])


def test_timestep_slider_and_compare_strip(explorer, qtbot):
    viewer, w, src, tgt = explorer
    w.connect_pair(src, tgt, matcher=Matcher(_levels(0), _levels(1), SHAPE, SHAPE), timestep=20)
    assert w.state.timestep == 20
    w.session.add_timestep(100, Matcher(_levels(5), _levels(6), SHAPE, SHAPE))
    c = w.controls
    assert c.timestep.enabled and c.timestep.max == 1
    _query(qtbot, w, (8, 9, 10))
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        c.timestep.value = 1  # the slider: t=100, a search on cached descriptors
    assert w.result.request.timestep == 100 and c.timestep_label.value == "t = 100"
    np.testing.assert_allclose(
        w.map_layers.fused_map(),
        Matcher(_levels(5), _levels(6), SHAPE, SHAPE).similarity((8, 9, 10), R_VOX).fused,
        atol=1e-6,
    )
    with qtbot.waitSignal(w.compare_applied, timeout=10000):  # drawn right after the main map
        c.compare.value = True
    strip = w.map_layers.layers["compare"]
    assert strip.visible
    np.testing.assert_allclose(w.timestep_map(20), Matcher(_levels(0), _levels(1), SHAPE, SHAPE).similarity(
        (8, 9, 10), R_VOX).fused, atol=1e-6)
    np.testing.assert_allclose(w.timestep_map(100), w.map_layers.fused_map(), atol=1e-6)
    # below the fused map in the target (y grows downwards on screen)
    assert strip.data_to_world(np.zeros(3))[1] > w.map_layers.layers["maps"].data_to_world(np.zeros(3))[1]
    # labels name every map; the slider's timestep is the one shown
    assert w.map_layers.map_labels == ["fused", "t=20", "t=100 (shown)"]



def test_timestep_labels_give_noise_signal_and_mixed_schedules_order_by_it(explorer, qtbot):
    from types import SimpleNamespace

    viewer, w, src, tgt = explorer
    ddpm = SimpleNamespace(attrs={"backbone": "mini", "timestep": 20, "noise_signal": 0.18373})
    w.connect_pair(src, tgt, ddpm, ddpm, matcher=Matcher(_levels(0), _levels(1), SHAPE, SHAPE))
    c = w.controls
    assert w.state.timestep == 20 and c.timestep_label.value == "t = 20 (noise/signal 0.184)"
    rf = SimpleNamespace(attrs={"backbone": "maisi", "backbone_config": {"variant": "rflow"}, "timestep": 155,
                                "noise_signal": 0.18343})
    w.session.add_timestep(155, Matcher(_levels(5), _levels(6), SHAPE, SHAPE), stores=(rf, rf))
    _query(qtbot, w, (8, 9, 10))
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        c.timestep.value = 0  # ordered by noise/signal: rectified flow t=155 (0.183) before DDPM t=20 (0.184)
    assert w.result.request.timestep == 155
    assert c.timestep_label.value == "noise/signal 0.183 (rectified flow t = 155)"
    with qtbot.waitSignal(w.compare_applied, timeout=10000):
        c.compare.value = True
    assert w.map_layers.map_labels == ["fused", "n/s 0.183 (rectified flow t=155) (shown)", "n/s 0.184 (DDPM t=20)"]

def test_display_modes_and_limits(explorer, qtbot):
    viewer, w, src, tgt = explorer
    _query(qtbot, w, (8, 9, 10))
    fused = w.map_layers.layers["maps"]  # per-level maps off: the fused map alone
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        w.controls.display_mode.value = DISPLAY_MODES[2]
    assert tuple(fused.contrast_limits) == (0.0, 1.0)
    d = fused.data
    assert np.nanmax(d) == 1.0 and np.nanmin(d) == 0.0
    # the rank map orders voxels like the raw map
    raw = w.result.fused
    ok = np.isfinite(raw)
    assert np.all(np.argsort(raw[ok], kind="stable") == np.argsort(d[ok], kind="stable"))
    assert 0.0 <= w.result.rivalry <= 1.0 and "rivalry" in w.status_label.text()


def test_crosshairs_and_search_window(explorer, qtbot):
    viewer, w, src, tgt = explorer
    res = _query(qtbot, w, (8, 9, 10))
    L = w.map_layers.layers
    aids = L["aids"].data
    assert aids.shape == (15, 2, 3)  # 3 crosshair lines, 12 window edges
    ch = aids[:3]
    for a in range(3):  # each line passes through the match
        other = [b for b in range(3) if b != a]
        np.testing.assert_allclose(ch[a, 0, other], np.asarray(res.target_zyx)[other])
    np.testing.assert_allclose(L["cross_s"].data[0, 0, 1:], res.request.query_zyx[1:])
    win = aids[3:]
    lo = np.asarray(res.offset, float)
    hi = np.asarray(res.offset) + np.asarray(res.fused.shape) - 1.0
    ends = np.concatenate([win[:, 0], win[:, 0] + win[:, 1]])
    assert np.allclose(ends.min(0)[1:], lo[1:]) and np.allclose(ends.max(0)[1:], hi[1:])
    # the window drawn is the window searched: R_MM around the match's centre, ceil(R_MM / s)
    # voxels per axis on this anisotropic grid (nothing clipped at (8, 9, 10))
    assert res.fused.shape == tuple(2 * r + 1 for r in R_VOX)
    np.testing.assert_array_equal(res.offset, np.subtract((8, 9, 10), R_VOX))
    assert w.controls.radius.label == "Window radius (mm)" and w.controls.radius.value == R_MM
    assert w.controls.window_label.value == "window: +-3 x 4 x 5 target voxels (z, y, x)"


def test_layer_combos_follow_renames_and_script_sets_controls(explorer):
    viewer, w, src, tgt = explorer
    c = w.controls
    assert c.source.value is src
    src.name = "inhale (renamed)"
    assert c.source.value is src and c.source.native.currentText() == "inhale (renamed)"
    w.state.exclusion = 5
    assert c.exclusion.value == 5
    c.radius.value = 0
    assert w.state.radius is None  # 0 = the whole target


def test_landmarks_widget_region_summary(explorer, qtbot):
    from napari_meddift._qt._landmarks import LandmarksWidget

    viewer, w, src, tgt = explorer
    lw = LandmarksWidget(viewer)  # finds the docked explorer by itself
    viewer.window.add_dock_widget(lw, name="Landmarks")
    rng = np.random.default_rng(5)
    pts = np.stack([rng.integers(3, n - 3, 9) for n in SHAPE], 1).astype(float)
    mask = np.zeros(SHAPE, bool)
    mask[2:18, 4:20, 3:19] = True
    lw.set_pairs(pts, pts, lung_mask=mask)
    with qtbot.waitSignal(w.landmarks_applied, timeout=30000):
        lw.match()
    qtbot.waitUntil(lambda: lw.regions is not None, timeout=5000)
    assert lw.table.rowCount() == 9
    assert sum(lw.regions[k]["n"] for k in ("upper third", "middle third", "lower third")) == 9
    assert "inside lung mask" in lw.region_label.text()
    top = lw.row_landmark(0)
    assert lw.table.item(0, 1).data(0x0100) == pytest.approx(w.session.landmarks.errors_mm.max())
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        lw.table.selectRow(0)
    assert w.result.request.query_zyx == tuple(int(v) for v in pts[top])


def test_long_work_has_napari_progress_and_a_working_cancel(explorer, qtbot):
    viewer, w, src, tgt = explorer
    rng = np.random.default_rng(6)
    pts = np.stack([rng.integers(3, n - 3, 400) for n in SHAPE], 1).astype(float)
    w.set_landmarks(pts, pts)
    seen = []
    task = w.match_landmarks()
    task.progressed.connect(lambda d, n, m: seen.append((d, n, task.bar is not None and task.bar.total == n)))
    qtbot.waitUntil(lambda: len(seen) >= 3, timeout=20000)
    assert all(ok for _, _, ok in seen) and seen[-1][1] == 400  # a napari progress bar with a count
    task.cancel()
    qtbot.waitUntil(lambda: not task.running, timeout=20000)
    assert "cancelled" in w.error_label.text()
    assert not w.session.landmarks.matched  # nothing half-applied
    assert task.bar is None  # the bar left the activity dock


def test_menus_contribute_our_widgets(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    app = get_app_model()

    def commands(menu):
        return {getattr(item, "command", None) and item.command.id for item in app.menus.get_menu(menu)}

    assert {"napari-meddift.extract_widget", "napari-meddift.explorer_widget"} <= commands("napari/layers/register")
    assert "napari-meddift.landmarks_widget" in commands("napari/layers/measure")
    assert "napari-meddift.feature_view_widget" in commands("napari/layers/visualize")


def test_maps_and_markers_follow_the_scan_direction(make_napari_viewer, qtbot):
    """A LAS scan (direction diag(1, -1, 1)): every derived layer sits where the target's voxels are."""
    from napari_meddift._qt._layers import geometry_kwargs
    from napari_meddift._qt.explorer.widget import ExplorerWidget

    viewer = make_napari_viewer(show=True)
    geo = geometry_kwargs(SPACING, (-20.0, 30.0, 5.0), np.diag([1.0, -1.0, 1.0]))
    rng = np.random.default_rng(1)
    src = viewer.add_image(rng.random(SHAPE, dtype=np.float32), name="src", **geo)
    tgt = viewer.add_image(rng.random(SHAPE, dtype=np.float32), name="tgt", visible=False, **geo)
    w = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(w, name="Correspondence explorer")
    w.connect_pair(src, tgt, matcher=Matcher(_levels(0), _levels(1), SHAPE, SHAPE))
    w.state.radius = 3
    w.set_landmarks([[10.0, 12.0, 11.0]], [[11.0, 13.0, 10.0]])
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        w.show_query((10, 12, 11))
    res, L = w.result, w.map_layers.layers
    for k in ((0, 0, 0), (2, 1, 3)):  # per-level maps off: the maps layer is the fused map
        np.testing.assert_allclose(L["maps"].data_to_world(np.array(k, float)),
                                   tgt.data_to_world(np.add(res.offset, k).astype(float)), atol=1e-6)
    mk = L["markers"]
    np.testing.assert_allclose(mk.data_to_world(w.map_layers.marker("match")),
                               tgt.data_to_world(np.array(res.target_zyx, float)))
    np.testing.assert_allclose(
        mk.data_to_world(w.map_layers.marker("truth")), tgt.data_to_world(np.array([11.0, 13.0, 10.0]))
    )
    # the per-level maps lie to the right on screen (world x larger), also with a flipped y axis
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        w.state.per_level = True
        w.rerun()
    maps, fused = L["maps"], w.result.fused
    start = np.rint(maps.world_to_data(tgt.data_to_world(np.asarray(res.offset, float)))).astype(int)
    fz, fy, fx = fused.shape
    np.testing.assert_allclose(maps.data[start[0]:start[0] + fz, start[1]:start[1] + fy, start[2]:start[2] + fx],
                               fused, atol=1e-6)  # the fused map still sits at its window
    fused_x = tgt.data_to_world(np.add(res.offset, fused.shape).astype(float) - 1)[2]
    assert maps.extent.world[1][2] > fused_x + 3 * fx * SPACING[2]  # three level maps to its right
    np.testing.assert_allclose(w.per_level_map("up1"), w.result.per_level["up1"], atol=1e-6)
    w.close_explorer()
