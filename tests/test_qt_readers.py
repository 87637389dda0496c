"""Files a user drops on napari: a landmark file lands on the scan it belongs to.

Real viewer under Xvfb: the demo's inhale scan is opened through our reader, then its landmarks
are dropped on the window as an elastix point file (a real ``QDropEvent`` into napari's drop
handler) and opened as a Learn2Reg CSV (napari lists its own CSV reader too, so a drop of a
``.csv`` asks which one: here the plugin is named). With ``MEDDIFT_DOCS_SHOTS=folder`` the
window is saved as ``landmarks_dropped.png`` there (the docs' screenshot).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

import napari_meddift  # noqa: E402

DEMO = Path(napari_meddift.__file__).parent / "data" / "demo"


def _drop(viewer, path: Path) -> None:
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(200, 200), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    viewer.window._qt_viewer.dropEvent(event)


def test_landmark_file_dropped_beside_the_scan(make_napari_viewer, qtbot, tmp_path):
    from napari.layers import Points

    from napari_meddift.io.landmarks import read_points, write_points_elastix
    from napari_meddift.io.volume import read_volume

    viewer = make_napari_viewer(show=True)
    scan = DEMO / "inhale.nii.gz"
    (image,) = viewer.open(str(scan), plugin="napari-meddift")
    vol = read_volume(scan)
    pts = read_points(DEMO / "landmarks_inhale.csv", fmt="l2r")
    ela = tmp_path / "inhale_landmarks.txt"
    write_points_elastix(ela, pts, volume=vol)  # physical mm, as elastix writes them

    _drop(viewer, ela)
    qtbot.waitUntil(lambda: any(isinstance(ly, Points) for ly in viewer.layers), timeout=20000)
    layer = next(ly for ly in viewer.layers if isinstance(ly, Points))
    assert layer.name == "inhale_landmarks (on inhale)"
    np.testing.assert_allclose(layer.data, pts, atol=1e-6)  # on the scan's voxel grid
    img = sitk.ReadImage(str(scan))  # independent reference: ITK's index -> physical map
    ref = np.array([img.TransformContinuousIndexToPhysicalPoint([float(c) for c in p[::-1]]) for p in pts])[:, ::-1]
    world = np.array([layer.data_to_world(p) for p in layer.data])
    np.testing.assert_allclose(world, ref, atol=1e-4)
    np.testing.assert_allclose(world, np.array([image.data_to_world(p) for p in pts]), atol=1e-6)

    viewer.layers.selection.active = image
    (csv_layer,) = viewer.open(str(DEMO / "landmarks_inhale.csv"), plugin="napari-meddift")
    np.testing.assert_allclose(csv_layer.data, pts)
    np.testing.assert_allclose(np.array([csv_layer.data_to_world(p) for p in pts]), ref, atol=1e-4)
    csv_layer.visible = False

    shots = os.environ.get("MEDDIFT_DOCS_SHOTS")
    if shots:
        viewer.dims.set_point(0, float(world[int(np.argmin(np.abs(world[:, 0] - np.median(world[:, 0])))), 0]))
        layer.size = 6
        viewer.reset_view()
        qtbot.wait(300)
        from qtpy.QtWidgets import QApplication

        QApplication.primaryScreen().grabWindow(0).save(str(Path(shots) / "landmarks_dropped.png"))
