"""Extract descriptors widget: runs off the GUI thread, reuses stores, cancels cleanly, shows errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

WIDGETS = ["Extract descriptors", "Correspondence explorer", "Landmarks", "Feature view (PCA)"]


def _ct(seed, shape=(24, 28, 26)):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = ((z**2 + y**2 + x**2) < 0.7).astype(np.float32)
    return (body * 1040.0 - 1000.0 + rng.normal(0, 20, shape)).astype(np.float32)


@pytest.mark.parametrize("name", WIDGETS)
def test_widgets_build_from_the_manifest(make_napari_viewer, name):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-meddift", name)
    assert widget is not None
    if hasattr(widget, "close_explorer"):
        widget.close_explorer()


@pytest.fixture
def extract_widget(make_napari_viewer, tmp_path):
    from napari_meddift._qt._extract import ExtractWidget

    viewer = make_napari_viewer(show=True)
    viewer.add_image(_ct(0), name="fixed", scale=(2.0, 1.5, 1.5))
    viewer.add_image(_ct(1), name="moving", scale=(2.0, 1.5, 1.5))
    w = ExtractWidget(viewer)
    viewer.window.add_dock_widget(w, name="Extract descriptors")
    w.cache_dir.value = str(tmp_path / "cache")
    w.random_weights.value = True
    return viewer, w, tmp_path / "cache"


def test_extract_then_reuse_and_open_the_explorer(extract_widget, qtbot):
    from napari_meddift._qt.explorer.widget import explorer_in
    from napari_meddift.io.store import open_store

    viewer, w, cache = extract_widget
    assert w.source.value == "fixed" and w.target.value == "moving"
    from napari_meddift.backbones import backbone_default_timestep

    # mini: the timestep its (default) weights record, chosen on validation pairs
    assert w.default_timestep.value and w.timestep.value == backbone_default_timestep("mini", random_weights=True)
    w.timestep.value = 50  # moving the slider asks for exactly that t
    assert not w.default_timestep.value
    assert "t=50 (DDPM): noise/signal 0.301" in w.noise_label.value and "noise std" in w.noise_label.value
    w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=120000)
    assert w.error.value == "", w.error.value
    stores = w.last_result["stores"]
    assert [reused for _, _, reused in stores] == [False, False]
    for layer, store, _ in stores:
        assert open_store(layer.metadata["meddift_store"]).attrs["timestep"] == 50
        assert store.path.parent == cache
        # mini's own grid: the 48 x 42 x 39 mm field of view at about 2.5 mm; positions stay on the layer's
        assert store.extraction_grid.shape == (19, 17, 16) and store.image_shape == (24, 28, 26)
    assert "at t = 50 (noise/signal 0.301)" in w.message.value
    ex = explorer_in(viewer)
    assert ex is not None and ex.engine is not None
    assert ex.source_layer.name == "fixed" and ex.target_layer.name == "moving"
    # same images and settings again: the stores are reused, nothing recomputed
    w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=60000)
    assert [reused for _, _, reused in w.last_result["stores"]] == [True, True]
    assert "reused existing store" in w.message.value
    ex.close_explorer()


def test_native_grid_choice(extract_widget, qtbot):
    viewer, w, cache = extract_widget
    w.spacing.value = "native"
    w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=120000)
    assert w.error.value == "", w.error.value
    for _, store, _ in w.last_result["stores"]:
        assert store.extraction_grid.same_as(store.image_grid) and store.image_grid.spacing == (2.0, 1.5, 1.5)


def test_cancel_leaves_no_store(extract_widget, qtbot):
    viewer, w, cache = extract_widget
    w.start()
    assert w.running and w.cancel_button.enabled
    w.cancel()
    qtbot.waitUntil(lambda: not w.running, timeout=60000)
    assert "cancelled" in w.message.value
    assert w.error.value == ""
    assert not cache.exists() or not any(cache.iterdir())
    assert "meddift_store" not in viewer.layers["fixed"].metadata


def test_errors_show_in_the_widget(extract_widget, qtbot):
    viewer, w, cache = extract_widget
    w.backbone.value = "maisi"
    assert "up3" in [n for n in w._level_widgets]
    w.random_weights.value = False
    w.weights.value = str(cache.parent / "no-such-folder")
    w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=60000)
    assert "weights" in w.error.value.lower() or "maisi" in w.error.value.lower()
    assert "Traceback" not in w.error.value
    # no levels chosen: refused before anything runs
    for box, _ in w._level_widgets.values():
        box.value = False
    assert w.start() is None and "level" in w.error.value


def test_wrong_layer_is_refused(make_napari_viewer):
    from napari_meddift._qt._extract import ExtractWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((10, 10), np.float32), name="flat")
    w = ExtractWidget(viewer)
    assert w.source.choices == ()  # 2D images are not offered
    assert w.start() is None and "source image" in w.error.value


def test_the_default_timestep_follows_the_chosen_weights(extract_widget):
    """mini weights record their own default timestep: the slider shows it when they are chosen,
    and a store extracted with the box ticked asks the backbone for its default (None)."""
    import json
    import shutil

    from napari_meddift.backbones.mini import DEFAULT_WEIGHTS, metadata_path

    viewer, w, tmp = extract_widget
    weights = tmp.parent / "w7.pt"
    shutil.copy(DEFAULT_WEIGHTS, weights)
    meta = json.loads(metadata_path(DEFAULT_WEIGHTS).read_text(encoding="utf-8"))
    metadata_path(weights).write_text(json.dumps({**meta, "default_timestep": 7}), encoding="utf-8")
    w.random_weights.value = False
    w.weights.value = str(weights)
    assert w.default_timestep.value and w.timestep.value == 7 and w.settings().timestep is None
    assert w.noise_label.value.startswith("t=7 (DDPM)")
    w.timestep.value = 7  # the default's own value keeps the box ticked
    assert w.default_timestep.value
    w.timestep.value = 20
    assert not w.default_timestep.value and w.settings().timestep == 20
    w.default_timestep.value = True
    assert w.timestep.value == 7
    metadata_path(weights).write_text(json.dumps({k: v for k, v in meta.items() if k != "default_timestep"}),
                                      encoding="utf-8")
    w.weights.value = str(tmp.parent / "other.pt")  # unreadable weights: the schedule's operating point
    assert w.timestep.value == 20


def test_maisi_options_show_for_maisi_and_reach_the_backbone(extract_widget, monkeypatch):
    import napari_meddift.backbones as B

    viewer, w, _ = extract_widget
    assert not w.region.visible and not w.variant.visible and not w.latent.visible
    w.backbone.value = "maisi"
    assert w.region.visible and w.variant.visible and w.latent.visible
    assert w.noise_label.value.startswith("t=20 (DDPM): noise/signal 0.184")  # alpha_bar(20) = 0.967
    w.variant.value = "rflow"  # the default moves to rectified flow's t with the same noise/signal
    assert w.timestep.value == 155 and w.settings().timestep is None
    assert w.noise_label.value == "t=155 (rectified flow): noise/signal 0.183 (signal 0.845, noise std 0.155)"
    w.timestep.value = 20  # an explicit t is honoured as given
    assert not w.default_timestep.value and w.settings().timestep == 20
    assert w.noise_label.value == "t=20 (rectified flow): noise/signal 0.020 (signal 0.980, noise std 0.020)"
    w.default_timestep.value = True
    assert w.timestep.value == 155

    seen = {}
    monkeypatch.setattr(B, "get_backbone", lambda name, **kw: seen.update(name=name, **kw))
    w.variant.value, w.region.value, w.latent.value = "ddpm", "abdomen", "sample"
    w.make_backbone()
    assert seen["name"] == "maisi" and seen["body_region"] == "abdomen"
    assert seen["variant"] == "ddpm" and seen["latent"] == "sample" and seen["random_weights"] is True
    w.backbone.value = "mini"
    assert not w.region.visible
