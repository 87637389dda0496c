"""Registration dock: runs in a napari thread_worker, shows the result layers, cancels, refuses bad input."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def _pair(tmp_path):
    """Two small volumes (the second shifted by 2 voxels in x) and their MIND-SSC stores."""
    from scipy import ndimage as ndi

    from napari_meddift.backbones import get_backbone
    from napari_meddift.backbones.base import ExtractionSettings
    from napari_meddift.backbones.extraction import extract_to_store
    from napari_meddift.io.volume import Volume

    rng = np.random.default_rng(0)
    base = ndi.gaussian_filter(rng.standard_normal((24, 28, 32)), 1.2).astype(np.float32) * 600
    moved = np.roll(base, 2, axis=2)
    vols = [Volume(base, (2.0, 2.0, 2.0), name="src"), Volume(moved, (2.0, 2.0, 2.0), name="tgt")]
    mind = get_backbone("mind-ssc")
    stores = [extract_to_store(v, mind, ExtractionSettings(device="cpu"), tmp_path / f"{v.name}.zarr")[0] for v in vols]
    return vols, stores


@pytest.fixture
def reg_widget(make_napari_viewer, tmp_path):
    from napari_meddift._qt._layers import STORE_KEY, volume_layer_kwargs
    from napari_meddift._qt._registration import RegistrationWidget

    viewer = make_napari_viewer()
    vols, stores = _pair(tmp_path)
    for v, s in zip(vols, stores):
        viewer.add_image(v.array, **volume_layer_kwargs(v, metadata={STORE_KEY: str(s.path)}))
    w = RegistrationWidget(viewer)
    viewer.window.add_dock_widget(w, name="Registration")
    w.grid_spacing.value, w.search_radius.value, w.iterations.value = 2, 4, 10
    w.device.value = "cpu"
    return viewer, w


def test_register_shows_warped_difference_grid_and_jacobian(reg_widget, qtbot):
    viewer, w = reg_widget
    assert (w.source.value, w.target.value) == ("src", "tgt")
    assert w.start() is not None
    qtbot.waitUntil(lambda: not w.running, timeout=180000)
    assert w.error.value == "", w.error.value
    names = [ly.name for ly in viewer.layers]
    for n in ("warped target", "difference", "deformation grid", "jacobian"):
        assert f"registration: {n}" in names
    # the shift of +2 voxels in x is found: source voxel p sits at p + (0, 0, 2) in the target
    d = w.field.displacement_voxels[:, 6:-6, 6:-6, 6:-6]
    assert abs(float(np.median(d[2])) - 2.0) < 0.3 and abs(float(np.median(d[0]))) < 0.3
    assert np.allclose(w.field.map_points(np.array([12.0, 14.0, 16.0])), [12.0, 14.0, 18.0], atol=0.4)
    # the warped target matches the source better than the target itself
    src = viewer.layers["src"].data
    inner = (slice(4, -4),) * 3
    err_warped = np.abs(viewer.layers["registration: warped target"].data - src)[inner].mean()
    err_before = np.abs(viewer.layers["tgt"].data - src)[inner].mean()
    assert err_warped < 0.5 * err_before
    warped_layer = viewer.layers["registration: warped target"]
    assert np.allclose(warped_layer.data_to_world((1, 2, 3)), viewer.layers["src"].data_to_world((1, 2, 3)))
    w.view.value = "checkerboard"
    assert "registration: checkerboard" in [ly.name for ly in viewer.layers]
    assert "registration: difference" not in [ly.name for ly in viewer.layers]
    assert "folding" in w.message.value
    assert viewer.layers["src"].metadata["meddift_field"] is w.field


def test_cancel_and_bad_input(reg_widget, qtbot):
    viewer, w = reg_widget
    w.start()
    w.cancel()
    qtbot.waitUntil(lambda: not w.running, timeout=180000)
    assert "cancelled" in w.message.value and w.error.value == ""
    viewer.add_image(np.zeros((5, 6, 7), np.float32), name="plain")
    w.target.value = "plain"
    assert w.start() is None and "Extract descriptors" in w.error.value


def test_registration_widget_builds_from_the_manifest(make_napari_viewer):
    from napari_meddift._qt._registration import RegistrationWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-meddift", "Registration")
    assert isinstance(widget, RegistrationWidget)
