"""Layers in a real napari viewer sit in ITK physical coordinates; axial views are anterior-up.

References are SimpleITK's own index -> physical maps of the files read (the LAS demo NIfTI and
an oblique scan written with a rotated, reflected direction).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

import napari_meddift  # noqa: E402
from napari_meddift.io.volume import Volume, read_volume, write_volume  # noqa: E402

DEMO = Path(napari_meddift.__file__).parent / "data" / "demo"


def _oblique(tmp_path) -> tuple[Volume, sitk.Image]:
    c, s = np.cos(0.4), np.sin(0.4)
    d = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.diag([-1.0, 1.0, 1.0])
    v = Volume(np.random.default_rng(1).normal(size=(6, 7, 8)).astype(np.float32), spacing=(2.0, 0.7, 1.3),
               origin=(5.0, -60.0, 33.0), direction=d, name="oblique")
    write_volume(v, tmp_path / "oblique.mha")
    return read_volume(tmp_path / "oblique.mha"), sitk.ReadImage(str(tmp_path / "oblique.mha"))


def _sitk(img, idx_zyx) -> np.ndarray:
    return np.array([img.TransformContinuousIndexToPhysicalPoint([float(c) for c in p[::-1]])[::-1] for p in idx_zyx])


def test_every_layer_kind_maps_voxels_like_itk(make_napari_viewer, tmp_path):
    from napari_meddift._qt._layers import (
        box_translate,
        grid_layer_kwargs,
        labels_layer_kwargs,
        layer_to_volume,
        points_layer_kwargs,
        same_geometry,
        volume_layer_kwargs,
        voxel_to_world,
        world_to_voxel,
    )
    from napari_meddift.io.volume import voxel_to_world as vol_voxel_to_world
    from napari_meddift.io.volume import world_to_voxel as vol_world_to_voxel

    viewer = make_napari_viewer()
    demo = read_volume(DEMO / "inhale.nii.gz"), sitk.ReadImage(str(DEMO / "inhale.nii.gz"))
    rng = np.random.default_rng(0)
    for vol, img in (demo, _oblique(tmp_path)):
        idx = rng.uniform(0, np.array(vol.shape) - 1, size=(10, 3))
        ref = _sitk(img, idx)
        image = viewer.add_image(vol.array, **volume_layer_kwargs(vol))
        labels = viewer.add_labels((vol.array > 0).astype(np.uint8), **labels_layer_kwargs(vol))
        points = viewer.add_points(idx, **points_layer_kwargs(vol))
        for layer in (image, labels, points):
            np.testing.assert_allclose([layer.data_to_world(p) for p in idx], ref, atol=1e-6)
            assert tuple(str(u) for u in layer.units) == ("millimeter",) * 3
            assert tuple(layer.axis_labels) == ("z", "y", "x")
        np.testing.assert_allclose(voxel_to_world(image, idx[0]), ref[0], atol=1e-6)
        assert world_to_voxel(image, ref[3]) == tuple(int(v) for v in np.rint(idx[3]))
        # the layer maps wrap the core's (io.volume), rounding to the nearest voxel, None outside
        core = layer_to_volume(image)
        np.testing.assert_allclose(voxel_to_world(image, idx[:4]), vol_voxel_to_world(core, idx[:4]), atol=1e-9)
        assert world_to_voxel(image, ref[3]) == tuple(int(v) for v in np.rint(vol_world_to_voxel(core, ref[3])))
        assert world_to_voxel(image, (0.0, *ref[3])) == world_to_voxel(image, ref[3])  # a 4D viewer position
        for outside in ((-1.0, 0.0, 0.0), (0.0, 0.0, vol.shape[2] - 0.4)):
            assert world_to_voxel(image, image.data_to_world(np.asarray(outside))) is None
        assert world_to_voxel(image, image.data_to_world(np.asarray((0.0, 0.0, vol.shape[2] - 0.6)))) == (
            0, 0, vol.shape[2] - 1)
        # a similarity-map box of the target at voxel offset (1, 2, 3), 3x3x3 voxels
        box = viewer.add_image(np.zeros((3, 3, 3), np.float32), **same_geometry(image))
        box.translate = box_translate(image, (1, 2, 3))
        np.testing.assert_allclose(box.data_to_world((1, 1, 1)), _sitk(img, [(2, 3, 4)])[0], atol=1e-6)
        # a coarser grid (PCA, maps): node i at voxel (i + 0.5) * N / n - 0.5
        grid = (3, 4, 2)
        g = viewer.add_image(np.zeros(grid, np.float32), **grid_layer_kwargs(vol, grid))
        node = np.array([2, 1, 1])
        vox = (node + 0.5) * np.array(vol.shape) / np.array(grid) - 0.5
        np.testing.assert_allclose(g.data_to_world(node), _sitk(img, [vox])[0], atol=1e-6)
        # and back: the layer's geometry is the volume's, whatever the layer holds
        back = layer_to_volume(image)
        np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-9)
        np.testing.assert_allclose(back.origin, vol.origin, atol=1e-6)
        np.testing.assert_allclose(back.direction, vol.direction, atol=1e-9)


def test_sample_data_layers_share_the_scan_geometry(make_napari_viewer):
    from napari_meddift.synthetic.demo import load_demo_pair

    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-meddift", "demo_pair")
    kinds = sorted(ly._type_string for ly in layers)
    assert kinds == ["image", "image", "labels", "labels", "points", "points"]
    inhale, exhale, src, tgt = load_demo_pair()
    lungs = viewer.layers["demo inhale lungs"]
    assert lungs.data.dtype == np.uint8 and set(np.unique(lungs.data)) == {0, 1}
    pts_in, pts_ex = viewer.layers["demo inhale landmarks"], viewer.layers["demo exhale landmarks"]
    np.testing.assert_allclose(pts_in.data, src)
    assert list(pts_in.features.columns) == ["id", "motion_mm"] and len(pts_in.features) == 300
    np.testing.assert_array_equal(pts_in.features["id"], pts_ex.features["id"])
    motion = np.linalg.norm(exhale.index_to_physical(tgt) - inhale.index_to_physical(src), axis=1)
    np.testing.assert_allclose(pts_in.features["motion_mm"], motion, atol=0.006)
    img = sitk.ReadImage(str(DEMO / "inhale.nii.gz"))
    for name in ("demo inhale", "demo inhale lungs", "demo inhale landmarks"):
        np.testing.assert_allclose(viewer.layers[name].data_to_world((43, 29, 23)),
                                   img.TransformIndexToPhysicalPoint((23, 29, 43))[::-1], atol=1e-6)


def test_axial_view_is_anterior_up_and_patient_left_on_the_right(make_napari_viewer):
    """Render a LAS scan with a bright block at its anterior, left edge: it shows top right."""
    from napari_meddift._qt._layers import volume_layer_kwargs

    demo = read_volume(DEMO / "inhale.nii.gz")  # LAS: y index grows towards anterior
    arr = np.zeros((4, 40, 40), np.float32)
    arr[:, 30:, 30:] = 1.0  # high j = anterior, high i (x) = patient's left
    vol = Volume(arr, spacing=(2.0, 2.0, 2.0), origin=demo.origin, direction=demo.direction)
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders nothing
    viewer.add_image(vol.array, **volume_layer_kwargs(vol, contrast_limits=(0, 1)))
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    shot = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].mean(axis=2)
    rows, cols = np.nonzero(shot > 128)
    assert rows.size > 0
    h, w = shot.shape
    assert rows.mean() < h / 2, "anterior should be at the top of an axial view"
    assert cols.mean() > w / 2, "the patient's left should be on the viewer's right (radiological)"
