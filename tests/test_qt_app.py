"""launch_explorer, Landmarks table, Feature view (PCA), readers and sample data, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

SHAPE = (18, 20, 22)
SPACING = (2.5, 1.25, 1.5)
ORIGIN = (-20.0, 10.0, 5.0)


def _volume(seed, name):
    from napari_meddift.io.volume import Volume

    rng = np.random.default_rng(seed)
    return Volume(array=(rng.random(SHAPE, dtype=np.float32) * 1400 - 1000).astype(np.float32),
                  spacing=SPACING, origin=ORIGIN, name=name)


def _store(path, seed):
    from napari_meddift.io.store import write_store

    g = torch.Generator().manual_seed(seed)
    levels = {"up0": torch.randn(12, 5, 5, 6, generator=g), "up1": torch.randn(6, 9, 10, 11, generator=g),
              "up2": torch.randn(4, 18, 20, 22, generator=g)}
    return write_store(path, levels, {"image_shape": list(SHAPE), "spacing": list(SPACING),
                                      "origin": list(ORIGIN)}, dtype="float32")


@pytest.fixture
def app(make_napari_viewer, tmp_path, qtbot):
    from napari_meddift._qt.app import launch_explorer
    from napari_meddift._qt.explorer.widget import explorer_in

    src, tgt = _volume(0, "inhale"), _volume(1, "exhale")
    s, t = _store(tmp_path / "src.zarr", 0), _store(tmp_path / "tgt.zarr", 1)
    rng = np.random.default_rng(3)
    pts = np.stack([rng.integers(2, n - 2, 12) for n in SHAPE], 1).astype(float)
    viewer = make_napari_viewer(show=True)
    ex_viewer = launch_explorer(src, tgt, s, t, landmarks=(pts, pts + [1, 0, -1]), viewer=viewer)
    assert ex_viewer is viewer
    ex = explorer_in(viewer)
    qtbot.waitUntil(lambda: ex.result is not None, timeout=10000)
    return viewer, ex, s, t, pts


def test_launch_explorer_shows_a_first_match(app):
    viewer, ex, s, t, pts = app
    assert ex.result.request.query_zyx == tuple(n // 2 for n in SHAPE)
    layer = viewer.layers["inhale"]
    assert tuple(layer.scale) == SPACING and tuple(layer.translate) == ORIGIN
    assert ex.target_view.viewer.layers["exhale"].data is viewer.layers["exhale"].data
    assert ex.map_layers.layers["maps"].visible


def test_landmarks_table_worst_first_and_row_selection(app, qtbot):
    from napari_meddift.evaluation.metrics import tre_mm
    from napari_meddift.matching import Matcher

    viewer, ex, s, t, pts = app
    lw = viewer.window.dock_widgets["Landmarks"]
    lw.match(run_async=False)
    ref = Matcher.from_stores(s, t).match_points(pts.astype(int), ex.session.search_radius)  # mm
    err = tre_mm(ref.target_zyx, pts + [1, 0, -1], SPACING)
    np.testing.assert_allclose(lw.landmarks.errors_mm, err)
    shown = [float(lw.table.item(r, 1).text()) for r in range(lw.table.rowCount())]
    assert shown == sorted(shown, reverse=True)  # worst first
    worst = lw.row_landmark(0)
    assert err[worst] == pytest.approx(err.max())
    with qtbot.waitSignal(ex.result_applied, timeout=10000):
        lw.table.selectRow(0)
    assert ex.result.request.query_zyx == tuple(int(v) for v in pts[worst])
    assert tuple(ex.result.target_zyx) == tuple(ref.target_zyx[worst])
    # the source viewer moved to the landmark's slice
    z_world = viewer.layers["inhale"].data_to_world(pts[worst])[0]
    assert viewer.dims.point[0] == pytest.approx(z_world)
    # ... and the target to the landmark's true point, marked there
    np.testing.assert_allclose(ex.map_layers.marker("truth"), pts[worst] + [1, 0, -1])
    z_t = viewer.layers["exhale"].data_to_world(pts[worst] + [1, 0, -1])[0]
    assert ex.target_view.viewer.dims.point[0] == pytest.approx(z_t)
    # every landmark in both viewers, coloured by its error
    assert "landmarks (source)" in viewer.layers and "landmarks (truth)" in ex.target_view.viewer.layers


def test_landmarks_load_files(app, tmp_path):
    from napari_meddift.io.landmarks import write_points_csv

    viewer, ex, s, t, pts = app
    write_points_csv(tmp_path / "a.csv", pts)
    write_points_csv(tmp_path / "b.csv", pts + 1)
    lw = viewer.window.dock_widgets["Landmarks"]
    lw.src_edit.setText(str(tmp_path / "a.csv"))
    lw.tgt_edit.setText(str(tmp_path / "b.csv"))
    lw.format_combo.setCurrentText("csv")
    lw._load_clicked()
    assert lw.error_label.text() == ""
    np.testing.assert_allclose(lw.landmarks.source_zyx, pts)
    np.testing.assert_allclose(lw.landmarks.target_zyx, pts + 1)
    assert lw.table.rowCount() == len(pts)
    lw.src_edit.setText(str(tmp_path / "missing.csv"))
    lw._load_clicked()
    assert lw.error_label.text()  # a clear message, no traceback


def test_feature_view_joint_pca(app):
    from napari_meddift.pca import joint_pca_rgb

    viewer, ex, s, t, pts = app
    fv = viewer.window.dock_widgets["Feature view (PCA)"]
    fv.compute(run_async=False)
    a = viewer.layers["PCA features"]
    b = ex.target_view.viewer.layers["PCA features"]
    assert a.rgb and b.rgb and a.data.shape[-1] == 3
    ref = joint_pca_rgb([s.load_levels(), t.load_levels()], [SHAPE, SHAPE], ("up0", "up1", "up2"), max_grid=96)
    np.testing.assert_allclose(a.data, ref.rgb[0], atol=1e-5)
    np.testing.assert_allclose(b.data, ref.rgb[1], atol=1e-5)
    fv.level_combo.setCurrentText("up1")
    fv.compute(run_async=False)
    assert viewer.layers["PCA features"].data.shape[:3] == (9, 10, 11)
    assert len([ly for ly in viewer.layers if ly.name.startswith("PCA")]) == 1  # updated in place


def test_readers_open_volumes_and_stores(make_napari_viewer, tmp_path):
    from napari_meddift._qt._reader import get_store_reader, get_volume_reader
    from napari_meddift.io.volume import write_volume

    vol = _volume(5, "ct")
    path = tmp_path / "ct.nii.gz"
    write_volume(vol, path)
    assert get_volume_reader(str(tmp_path / "notes.txt")) is None
    assert get_volume_reader(str(tmp_path)) is None  # not a DICOM folder
    store = _store(tmp_path / "ct.zarr", 0)
    assert get_volume_reader(str(store.path)) is None and get_store_reader(str(path)) is None
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-meddift")
    np.testing.assert_allclose(layer.data, vol.array, atol=1e-3)
    np.testing.assert_allclose(layer.scale, SPACING, rtol=1e-6)
    np.testing.assert_allclose(layer.translate, ORIGIN, atol=1e-4)
    [pca] = viewer.open(str(store.path), plugin="napari-meddift")
    assert pca.rgb and pca.metadata["meddift_store"] == str(store.path)
    # the PCA grid lies over the image: same physical extent
    extent = np.asarray(pca.data.shape[:3]) * np.asarray(pca.scale)
    np.testing.assert_allclose(extent, np.asarray(SHAPE) * np.asarray(SPACING))


def test_sample_data_demo_pair(make_napari_viewer):
    pytest.importorskip("napari_meddift.synthetic.demo")
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-meddift", "demo_pair")
    images = [ly for ly in layers if ly._type_string == "image"]
    assert len(images) == 2 and all(ly.ndim == 3 for ly in images)
    from napari_meddift.synthetic.demo import load_demo_pair

    inhale = load_demo_pair()[0]
    np.testing.assert_allclose(images[0].scale, inhale.spacing)


def test_pca_sampling_matches_trilinear_upsampling():
    import torch.nn.functional as F

    from napari_meddift.pca import _grid_coords, sample_fused

    g = torch.Generator().manual_seed(0)
    lev = {"a": torch.randn(5, 4, 6, 7, generator=g), "b": torch.randn(3, 8, 8, 8, generator=g)}
    grid = (10, 12, 9)
    ref = [F.normalize(F.interpolate(lev[n][None], size=grid, mode="trilinear", align_corners=False)[0], dim=0)
           * np.sqrt(0.5) for n in "ab"]
    ref = torch.cat(ref, 0).reshape(8, -1).T
    got = sample_fused(lev, ["a", "b"], _grid_coords(grid, 0, grid[0]))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_connect_button_uses_the_layers_stores(make_napari_viewer, tmp_path, qtbot):
    from napari_meddift._qt.explorer.widget import ExplorerWidget

    s, t = _store(tmp_path / "a.zarr", 0), _store(tmp_path / "b.zarr", 1)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(_volume(0, "a").array, name="a", scale=SPACING, metadata={"meddift_store": str(s.path)})
    viewer.add_image(_volume(1, "b").array, name="b", scale=SPACING, metadata={"meddift_store": str(t.path)})
    w = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(w, name="Correspondence explorer")
    c = w.controls  # magicgui: layer combo boxes and FileEdits
    assert (c.source.value.name, c.target.value.name) == ("a", "b")
    assert c.source_store.value == s.path and c.target_store.value == t.path
    c.connect_button.clicked()
    qtbot.waitUntil(lambda: w.engine is not None, timeout=20000)
    assert w.target_view is not None and "b" in w.target_view.viewer.layers
    # a wrong store path is a message in the widget
    c.target_store.value = tmp_path / "nothing.zarr"
    c.connect_button.clicked()
    qtbot.waitUntil(lambda: "no descriptor store" in w.error_label.text(), timeout=20000)
    w.close_explorer()


def test_launch_demo_shows_the_window_first_and_connects_when_ready(qtbot, tmp_path):
    """``meddift demo``'s window: the pair at once, the preparation's progress in the activity
    dock, the explorer connecting itself only when the worker hands over the stores."""
    import threading

    from napari_meddift._qt.app import launch_demo
    from napari_meddift._qt.explorer.widget import explorer_in

    src, tgt = _volume(0, "inhale"), _volume(1, "exhale")
    s, t = _store(tmp_path / "src.zarr", 0), _store(tmp_path / "tgt.zarr", 1)
    pts = np.stack([np.arange(3, 9)] * 3, 1).astype(float)
    gate = threading.Event()

    def prepare(progress):
        for i in range(200):
            progress(i, 400, "inhale: extracting")
        gate.wait(60)
        progress(400, 400, "exhale: done")
        return s, t, None, None

    notes = []
    viewer, task = launch_demo(src, tgt, (pts, pts), prepare, note=notes.append)
    try:
        assert [ly.name for ly in viewer.layers] == ["inhale", "exhale"]  # the pair, at once
        qtbot.waitUntil(lambda: task.relay.applied > 0, timeout=20000)
        assert explorer_in(viewer) is None and task.running and task.bar.total == 400
        gate.set()
        qtbot.waitUntil(lambda: explorer_in(viewer) is not None and explorer_in(viewer).result is not None,
                        timeout=180000)  # generous: a busy 2-core machine
        assert task.bar is None and not task.running
        assert notes == ["meddift demo: descriptors ready, explorer connected"]
        ex = explorer_in(viewer)
        assert ex.source_layer is viewer.layers["inhale"]  # the layers shown first, not copies
        assert [ly.name for ly in viewer.layers][:2] == ["inhale", "exhale"]
    finally:
        gate.set()
        viewer.close()


def test_the_demo_has_the_feature_quality_dock(app):
    """launch_explorer (what `meddift demo` opens) docks Feature quality beside the explorer; it
    reports on the explorer's pair and landmarks, and a chosen cell sets the explorer's levels."""
    viewer, ex, s, t, pts = app
    fq = viewer.window.dock_widgets["Feature quality"]
    assert fq.explorer is ex
    fq.run(run_async=False, pairs={None: (s, t)})  # stores without a timestep: one column
    assert [c.name for c in fq.report.configurations][:4] == ["up0", "up1", "up2", "fused (default)"]
    fq.choose("up1+up2", None)
    assert ex.state.levels == ("up1", "up2") and ex.engine.matcher.levels == ["up1", "up2"]
    assert ex.session.landmarks.settings["source"] == "feature quality report"
