"""Correspondence explorer: real mouse callback -> core search -> layers updated in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_meddift.matching import Matcher  # noqa: E402

SHAPE = (20, 24, 22)
# the explorer's window is in mm: 6 mm on (2.0, 1.5, 1.25) mm voxels is ceil(6 / s) = (3, 4, 5) voxels
R_MM, R_VOX = 6.0, (3, 4, 5)


def _levels(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "up0": torch.randn(16, 5, 6, 6, generator=g),
        "up1": torch.randn(8, 10, 12, 11, generator=g),
        "up2": torch.randn(4, 20, 24, 22, generator=g),
    }


class _Event:
    """What napari hands a mouse callback (the fields our callbacks read)."""

    def __init__(self, position, type="mouse_move", view_direction=None, dims_displayed=(1, 2)):
        self.position = tuple(float(p) for p in position)
        self.type = type
        self.view_direction = view_direction
        self.dims_displayed = list(dims_displayed)
        self.modifiers = ()
        self.handled = False


@pytest.fixture
def explorer(make_napari_viewer, qtbot):
    from napari_meddift._qt.explorer.widget import ExplorerWidget

    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    spacing, origin = (2.0, 1.5, 1.25), (-10.0, 5.0, 3.0)
    src = viewer.add_image(rng.random(SHAPE, dtype=np.float32), name="source", scale=spacing, translate=origin)
    tgt = viewer.add_image(rng.random(SHAPE, dtype=np.float32), name="target", scale=spacing, translate=origin,
                           visible=False)
    w = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(w, name="Correspondence explorer")
    matcher = Matcher(_levels(0), _levels(1), SHAPE, SHAPE)
    w.connect_pair(src, tgt, matcher=matcher)
    w.controls.radius.value = R_MM  # a magicgui control bound to the state (mm)
    yield viewer, w, src, tgt, Matcher(_levels(0), _levels(1), SHAPE, SHAPE)
    w.close_explorer()


def _move(qtbot, viewer, w, src, vox):
    world = src.data_to_world(np.asarray(vox, float))
    viewer.dims.point = tuple(world)  # the slice the user is looking at
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        for cb in list(viewer.mouse_move_callbacks):
            cb(viewer, _Event(world))
    return world


def _wait_for_map(qtbot, w, expected, timeout=10000):
    """Until the shown fused map is ``expected`` (the test's assert_allclose tolerance)."""
    def shown():
        got = w.map_layers.fused_map()
        return got is not None and got.shape == expected.shape and np.allclose(got, expected, rtol=1e-7, atol=1e-6)

    qtbot.waitUntil(shown, timeout=timeout)


def test_mouse_move_updates_match_and_map_like_the_core(explorer, qtbot):
    viewer, w, src, tgt, ref = explorer
    fused = w.map_layers.layers["maps"]  # per-level maps off: the fused map alone
    n_layers_target = len(w.target_view.viewer.layers)
    n_layers_main = len(viewer.layers)
    for vox in [(10, 12, 11), (3, 20, 5)]:
        _move(qtbot, viewer, w, src, vox)
        sim = ref.similarity(vox, R_VOX, per_level=True)
        m = ref.match(vox, R_VOX)
        np.testing.assert_allclose(fused.data, sim.fused, atol=1e-6)
        expect_t = np.asarray(tgt.data_to_world(np.asarray(sim.offset, float)))
        # the map's voxel 0 sits where the target's voxel sim.offset is, in world mm
        np.testing.assert_allclose(fused.data_to_world(np.zeros(3)), expect_t, atol=1e-9)
        np.testing.assert_allclose(fused.scale, tgt.scale)
        assert tuple(fused.contrast_limits) == (-1.0, 1.0)
        assert tuple(w.result.target_zyx) == tuple(m.target_zyx)
        assert w.result.score == pytest.approx(m.score, abs=1e-6)
        np.testing.assert_array_equal(w.map_layers.marker("match"), m.target_zyx)
        assert w.map_layers.marker("truth") is None  # no truth for this pair
        np.testing.assert_array_equal(w.map_layers.layers["query"].data, [vox])
        # the target viewer followed the match: its slice is the match's z
        tz = tgt.data_to_world(np.asarray(m.target_zyx, float))[0]
        assert w.target_view.viewer.dims.point[0] == pytest.approx(tz)
    # layers were updated in place, none added per event
    assert len(w.target_view.viewer.layers) == n_layers_target
    assert len(viewer.layers) == n_layers_main
    # forward-backward consistency arrives and matches the core
    qtbot.waitUntil(lambda: w.result.consistent is not None, timeout=10000)
    assert w.result.fb_distance == pytest.approx(m.fb_distance)
    assert "score" in w.status_label.text() and "mm" in w.status_label.text()


def test_level_toggle_and_radius_update_the_map(explorer, qtbot):
    viewer, w, src, tgt, ref = explorer
    vox = (8, 9, 10)
    _move(qtbot, viewer, w, src, vox)
    before = w.map_layers.fused_map().copy()
    rows = {r.level: r for r in w.controls.levels}
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        rows["up0"].check.value = False
    ref.set_levels(["up1", "up2"])
    # under load a result of the move can still arrive after the toggle's first signal: wait for
    # the toggle's own map (the same comparison as below, which then must hold)
    _wait_for_map(qtbot, w, ref.similarity(vox, R_VOX).fused)
    np.testing.assert_allclose(w.map_layers.fused_map(), ref.similarity(vox, R_VOX).fused, atol=1e-6)
    assert not np.allclose(before, w.map_layers.fused_map())
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        w.state.radius = 2.0  # a script sets the state (mm): the control follows
    assert w.controls.radius.value == 2.0
    assert w.controls.window_label.value == "window: +-1 x 2 x 2 target voxels (z, y, x)"
    _wait_for_map(qtbot, w, ref.similarity(vox, (1, 2, 2)).fused)
    assert w.map_layers.fused_map().shape == ref.similarity(vox, (1, 2, 2)).fused.shape
    np.testing.assert_allclose(w.map_layers.fused_map(), ref.similarity(vox, (1, 2, 2)).fused, atol=1e-6)
    # the last level cannot be switched off
    rows["up1"].check.value = False
    rows["up2"].check.value = False
    assert w.state.levels == ("up2",) and "at least one" in w.error_label.text()
    assert rows["up2"].check.value  # the refused change is undone in the control


def test_per_level_view_and_follow_off(explorer, qtbot):
    viewer, w, src, tgt, ref = explorer
    w.controls.per_level.value = True
    vox = (12, 6, 7)
    _move(qtbot, viewer, w, src, vox)
    sim = ref.similarity(vox, R_VOX, per_level=True)
    maps = w.map_layers.layers["maps"]
    # the fused map at its window, the per-level maps to its right (x grows to the right here)
    np.testing.assert_allclose(maps.data_to_world(np.zeros(3)), tgt.data_to_world(np.asarray(sim.offset, float)))
    assert maps.visible and maps.data.shape[2] == 4 * sim.fused.shape[2] + 3 * 2
    np.testing.assert_allclose(w.map_layers.fused_map(), sim.fused, atol=1e-6)
    for name in ("up0", "up1", "up2"):
        np.testing.assert_allclose(w.per_level_map(name), sim.per_level[name], atol=1e-6)
    assert w.map_layers.map_labels == ["fused", "up0", "up1", "up2"]
    w.controls.color_range.value = "[0.5, 1]"  # another fixed range, applied to every map
    assert tuple(maps.contrast_limits) == (0.5, 1.0)
    w.controls.per_level.value = False
    assert maps.data.shape == sim.fused.shape and w.map_layers.map_labels == []
    w.state.following = False
    assert w.controls.following.value is False
    before = tuple(w.target_view.viewer.dims.point)
    _move(qtbot, viewer, w, src, (2, 3, 4))
    assert tuple(w.target_view.viewer.dims.point) == before


def _drawn_map_slice(layer, viewer):
    """The 2D slice napari draws for map ``layer`` at ``viewer``'s z, and the data it must show."""
    zi = int(round(float(layer.world_to_data(viewer.dims.point)[0])))
    return np.asarray(layer._slice.image.raw), layer.data[zi]


def test_drawn_slice_shows_the_new_map_whether_or_not_the_view_moves(explorer, qtbot):
    """The apply step skips a map's own redraw when the followed slice re-slices it anyway: in
    both cases what is drawn (the sliced view, not only ``.data``) is the new map and match."""
    viewer, w, src, tgt, ref = explorer
    tv = w.target_view.viewer
    fused, match = w.map_layers.layers["maps"], w.map_layers.layers["markers"]  # the match: row 0
    moved = 0
    for vox in [(10, 12, 11), (3, 20, 5), (16, 4, 18)]:  # following: the slice moves to each match
        before = tuple(tv.dims.point)
        _move(qtbot, viewer, w, src, vox)
        moved += tuple(tv.dims.point) != before
        drawn, expect = _drawn_map_slice(fused, tv)
        np.testing.assert_allclose(drawn, expect, atol=1e-6)
        np.testing.assert_allclose(match._view_data, [np.asarray(w.result.target_zyx)[1:]], atol=1e-9)
    assert moved >= 1  # the re-sliced path ran at least once
    w.state.following = False  # the slice stays: the maps redraw themselves
    vox = (5, 5, 5)
    m = ref.match(vox, R_VOX)
    set_point = list(tv.dims.point)
    set_point[0] = float(tgt.data_to_world(np.asarray(m.target_zyx, float))[0])
    tv.dims.point = tuple(set_point)
    before = tuple(tv.dims.point)
    _move(qtbot, viewer, w, src, vox)
    assert tuple(tv.dims.point) == before
    drawn, expect = _drawn_map_slice(fused, tv)
    np.testing.assert_allclose(drawn, expect, atol=1e-6)
    np.testing.assert_allclose(drawn, ref.similarity(vox, R_VOX).fused[m.target_zyx[0] - w.result.offset[0]], atol=1e-6)
    np.testing.assert_allclose(match._view_data, [np.asarray(m.target_zyx, float)[1:]], atol=1e-9)


def test_target_canvas_layers_compute_no_thumbnails(explorer, qtbot):
    """The target canvas shows no layer list, so after their first slice its layers skip
    napari's thumbnail on every refresh and re-slice; layers of the main viewer keep theirs."""
    viewer, w, src, tgt, ref = explorer
    tv = w.target_view.viewer
    rng = np.random.default_rng(1)
    geo = {"scale": tuple(src.scale), "translate": tuple(src.translate)}  # inside the current slices
    thumbs = {}
    for name, v in (("target canvas", tv), ("main viewer", viewer)):
        layer = v.add_image(rng.random(SHAPE, dtype=np.float32), name=name, **geo)
        before = layer.thumbnail.copy()
        layer.data = rng.random(SHAPE, dtype=np.float32) ** 4  # another picture
        layer.refresh()
        thumbs[name] = np.array_equal(before, layer.thumbnail)
    assert thumbs == {"target canvas": True, "main viewer": False}
    _move(qtbot, viewer, w, src, (10, 12, 11))  # the live path still draws (other tests check what)


def test_status_text_changes_without_re_laying_out_the_dock(explorer, qtbot):
    """The live status changes many times a second: a new text (one line or several wrapped ones)
    repaints the status box only. A word-wrapped label would ask the dock, and then the main
    window, for a new layout each time (under software OpenGL a full window composition)."""
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QApplication

    viewer, w, src, tgt, ref = explorer
    _move(qtbot, viewer, w, src, (10, 12, 11))
    qtbot.wait(50)

    class Count(QObject):
        n = 0

        def eventFilter(self, obj, event):  # noqa: N802
            if event.type() == QEvent.Type.LayoutRequest:
                Count.n += 1
            return False

    counter = Count()
    watched = [w, w.status_label]
    for obj in watched:
        obj.installEventFilter(counter)
    height = w.status_label.height()
    try:
        for text in ("short", "a much longer line of status " * 12, "three\nshort\nlines", w.status_label.text()):
            w.status_label.setText(text)
            assert w.status_label.text() == text
            for _ in range(5):
                QApplication.processEvents()
    finally:
        for obj in watched:
            obj.removeEventFilter(counter)
    assert Count.n == 0
    assert w.status_label.height() == height


def test_moved_maps_update_the_viewer_ranges_and_their_drawn_place(explorer, qtbot):
    """The maps move with ``translate`` while the viewer's dims ranges are checked once per
    result: afterwards the ranges hold every layer's extent (computed here from the layers), grow
    when a map reaches outside and never reach beyond what the layers have covered; each map's
    canvas node sits where the layer says."""
    viewer, w, src, tgt, ref = explorer
    tv = w.target_view.viewer
    w.controls.per_level.value = True  # the strip sticks out of the image: the x range changes
    visuals = w.target_view.qt_viewer.canvas.layer_to_visual
    ranges, buffers = set(), set()
    seen_lo = np.array([r.start for r in tv.dims.range])
    seen_hi = np.array([r.stop for r in tv.dims.range])
    for vox in [(10, 12, 11), (5, 16, 6), (14, 5, 15), (8, 9, 13)]:  # whole windows: maps move in place
        _move(qtbot, viewer, w, src, vox)
        buffers.add(id(w.map_layers.layers["maps"].data))
        lo = np.nanmin([layer.extent.world[0] for layer in tv.layers], axis=0)  # empty layers: nan
        hi = np.nanmax([layer.extent.world[1] for layer in tv.layers], axis=0)
        seen_lo, seen_hi = np.minimum(seen_lo, lo), np.maximum(seen_hi, hi)
        start = np.array([r.start for r in tv.dims.range])
        stop = np.array([r.stop for r in tv.dims.range])
        assert np.all(start <= lo + 1e-9) and np.all(stop >= hi - 1e-9)  # every layer inside...
        assert np.all(start >= seen_lo - 1e-9) and np.all(stop <= seen_hi + 1e-9)  # ...and no wider than they went
        ranges.add(tuple(round(float(r.stop), 6) for r in tv.dims.range))
        for key in ("maps",):
            node = visuals[w.map_layers.layers[key]]
            drawn = np.array(node.node.transform.matrix, copy=True)
            node._on_matrix_change()  # what napari computes from the layer's transform now
            np.testing.assert_allclose(drawn, node.node.transform.matrix, atol=1e-9)
    assert len(ranges) > 1  # the ranges did grow with the moves...
    assert len(buffers) == 1  # ...of a strip moved in place (no new data, which resets the ranges itself)


def test_set_slice_reslices_once_and_moves_the_slider(explorer, qtbot, monkeypatch):
    """Moving the target's slice re-slices its layers in one pass (napari would walk them twice),
    draws the new plane and still moves the z slider."""
    from napari_meddift._qt.explorer.target_view import set_slice

    viewer, w, src, tgt, ref = explorer
    tv = w.target_view.viewer
    image = tv.layers[tgt.name]
    passes = []
    real = tv._layer_slicer.submit
    monkeypatch.setattr(tv._layer_slicer, "submit", lambda *a, **k: (passes.append(1), real(*a, **k))[1])
    slider = w.target_view.qt_viewer.dims.slider_widgets[0].slider
    for z in (3, 17, 9):
        passes.clear()
        set_slice(tv, tgt.data_to_world(np.array([z, 5.0, 5.0])))
        assert len(passes) == 1
        assert tv.dims.current_step[0] == z and slider.value() == z
        np.testing.assert_array_equal(np.asarray(image._slice.image.raw), tgt.data[z])
    passes.clear()
    set_slice(tv, tgt.data_to_world(np.array([9, 1.0, 1.0])))  # same slice: nothing to do
    assert passes == []


def test_stale_events_are_dropped(explorer, qtbot):
    viewer, w, src, tgt, ref = explorer
    # many events while the worker is busy: only the latest is computed next
    gate = __import__("threading").Event()
    engine = w.engine
    real = engine.compute

    def slow(req):
        gate.wait(5)
        return real(req)

    engine.compute = slow
    for z in range(15):
        w.submit((z, 5, 5), tag="mouse")
    gate.set()
    qtbot.waitUntil(lambda: w.result is not None and w.result.request.query_zyx == (14, 5, 5), timeout=10000)
    assert w.search_worker.dropped >= 10


def test_latency_recorder_records_the_mouse_path_outside_the_widget(explorer, qtbot):
    """The widget keeps no timings; a LatencyRecorder attached to it records each stage."""
    from napari_meddift._qt.explorer import LatencyRecorder

    viewer, w, src, tgt, ref = explorer
    assert not hasattr(w, "latencies_ms") and not hasattr(w, "timings")
    rec = LatencyRecorder(w)
    _move(qtbot, viewer, w, src, (10, 12, 11))
    assert len(rec.latencies_ms) == 1 and rec.latencies_ms[0] > 0
    (t,) = rec.timings
    assert set(t) == {"event_to_submit", "compute", "wait_and_queue", "apply"}
    assert t["compute"] == w.result.compute_ms
    assert all(np.isfinite(v) and v >= 0 for k, v in t.items() if k != "wait_and_queue")
    assert t["event_to_submit"] + t["compute"] + t["apply"] <= rec.latencies_ms[0] + 1e-6
    rec.clear()
    assert len(rec.timings) == 0 and len(rec.latencies_ms) == 0
    rec.detach()
    _move(qtbot, viewer, w, src, (3, 20, 5))
    assert len(rec.latencies_ms) == 0  # detached: nothing recorded


def test_click_in_3d_picks_along_the_ray(explorer, qtbot):
    viewer, w, src, tgt, ref = explorer
    data = np.zeros(SHAPE, np.float32)
    data[7, 10, 9] = 5.0  # the bright voxel a MIP shows
    src.data = data
    viewer.dims.ndisplay = 3
    assert w.target_view.viewer.dims.ndisplay == 3
    world = src.data_to_world(np.array([0.0, 10.0, 9.0]))
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        vox = w.pick_3d(world, np.array([1.0, 0.0, 0.0]), [0, 1, 2])
    assert vox == (7, 10, 9)
    assert w.result.request.query_zyx == (7, 10, 9)
    # the same through the drag callback: a press and release without moving is a click
    data[7, 10, 9] = 0.0
    data[12, 4, 15] = 5.0
    src.data = data
    world = src.data_to_world(np.array([0.0, 4.0, 15.0]))
    ev = _Event(world, type="mouse_press", view_direction=np.array([1.0, 0.0, 0.0]), dims_displayed=(0, 1, 2))
    gen = w._on_mouse_drag(viewer, ev)
    next(gen)
    ev.type = "mouse_release"
    with qtbot.waitSignal(w.result_applied, timeout=10000):
        with pytest.raises(StopIteration):
            next(gen)
    assert w.result.request.query_zyx == (12, 4, 15)


def test_shape_mismatch_is_a_clear_error(make_napari_viewer):
    from napari_meddift._qt.explorer.widget import ExplorerWidget
    from napari_meddift.errors import MedDiftError

    viewer = make_napari_viewer()
    a = viewer.add_image(np.zeros((5, 6, 7), np.float32), name="a")
    w = ExplorerWidget(viewer)
    with pytest.raises(MedDiftError, match="shape"):
        w.connect_pair(a, a, matcher=Matcher(_levels(0), _levels(1), SHAPE, SHAPE))
    w.close_explorer()


def test_map_colour_range_is_suggested_per_pair():
    """Alike descriptors (as trained ones are over a window) get a narrow range, random ones [-1, 1]."""
    from napari_meddift.explorer import MAP_RANGES, ExplorerEngine, suggest_map_range

    assert suggest_map_range(ExplorerEngine(Matcher(_levels(0), _levels(1), SHAPE, SHAPE)), MAP_RANGES, 4) == "[-1, 1]"

    def alike(seed):  # one shared direction plus a little noise per voxel: cosines ~0.85-1
        g = torch.Generator().manual_seed(seed)
        out = {}
        for name, v in _levels(0).items():
            base = torch.randn(v.shape[0], 1, 1, 1, generator=torch.Generator().manual_seed(7))
            out[name] = base + 0.25 * torch.randn(v.shape, generator=g)
        return out

    name = suggest_map_range(ExplorerEngine(Matcher(alike(1), alike(2), SHAPE, SHAPE)), MAP_RANGES, 4)
    assert MAP_RANGES[name][0] >= 0.5, name


def test_connect_suggests_range_but_keeps_a_chosen_one(explorer):
    viewer, w, src, tgt, ref = explorer
    assert w.controls.color_range.value == "[-1, 1]"  # random descriptors
    w.controls.color_range.value = "[0.9, 1]"
    w.connect_pair(src, tgt, matcher=Matcher(_levels(0), _levels(1), SHAPE, SHAPE))
    assert w.controls.color_range.value == "[0.9, 1]"  # the user's choice survives a reconnect
