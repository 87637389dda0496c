"""Feature view: the first three PCA components of the descriptors as RGB.

Fitted jointly over source and target (``napari_meddift.pca``) so the same anatomy gets the
same colour in both viewers: the usual way to look at DIFT features. Per level or fused.
"""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from ..errors import MedDiftError
from ._controls import error_label
from ._layers import layer_store_path
from ._long_task import LongTask, error_text, notify_error
from .explorer import explorer_in

__all__ = ["FeatureViewWidget"]

FUSED = "fused (levels chosen in the explorer)"


class FeatureViewWidget(QWidget):
    """The "Feature view (PCA)" dock widget; works on the explorer's connected pair."""

    def __init__(self, napari_viewer, explorer=None, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._explorer = explorer
        self.view = None
        self._worker = None
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.level_combo = QComboBox()
        self.level_combo.addItem(FUSED)
        form.addRow("Descriptors", self.level_combo)
        self.grid_spin = QSpinBox()
        self.grid_spin.setRange(16, 256)
        self.grid_spin.setValue(96)
        self.grid_spin.setSuffix(" voxels")
        self.grid_spin.setToolTip("Largest display grid per axis (the finest native level grid, at most this)")
        form.addRow("Display grid (max)", self.grid_spin)
        lay.addLayout(form)
        self.refresh_button = QPushButton("Refresh levels")
        self.refresh_button.clicked.connect(self.refresh_levels)
        self.compute_button = QPushButton("Show PCA (source and target)")
        self.compute_button.clicked.connect(lambda: self.compute())
        lay.addWidget(self.refresh_button)
        lay.addWidget(self.compute_button)
        self.info = QLabel("Connect a pair in the explorer, then show the PCA of its descriptors.")
        self.info.setWordWrap(True)
        lay.addWidget(self.info)
        self.error_label = error_label()
        lay.addWidget(self.error_label)
        lay.addStretch(1)
        self.refresh_levels()

    def _find(self):
        ex = self._explorer
        return ex if ex is not None and not ex.closed else explorer_in(self.viewer)

    def refresh_levels(self):
        ex = self._find()
        names = ex.engine.available_levels if ex is not None and ex.engine is not None else []
        cur = self.level_combo.currentText()
        self.level_combo.clear()
        self.level_combo.addItems([FUSED, *names])
        if cur in [FUSED, *names]:
            self.level_combo.setCurrentText(cur)

    def _inputs(self):
        ex = self._find()
        if ex is None or ex.engine is None:
            raise MedDiftError("open the Correspondence explorer and connect a pair first")
        choice = self.level_combo.currentText()
        levels = tuple(ex.state.levels) if choice == FUSED else (choice,)
        weights = [float(ex.state.weights.get(n, 1.0)) for n in levels] if choice == FUSED else None
        paths = [layer_store_path(ex.source_layer), layer_store_path(ex.target_layer)]
        if any(p is None for p in paths):
            raise MedDiftError("the PCA view reads the descriptor stores; connect the pair from stores")
        return ex, levels, weights, paths

    def compute(self, run_async: bool = True):
        """Joint PCA of the chosen descriptors; RGB layers in both viewers (updated in place)."""
        self.error_label.setText("")
        try:
            ex, levels, weights, paths = self._inputs()
        except MedDiftError as exc:
            self.error_label.setText(str(exc))
            notify_error(exc)
            return None
        grid = int(self.grid_spin.value())

        def work():
            from ..io.store import open_store
            from ..pca import joint_pca_rgb

            stores = [open_store(p) for p in paths]
            sets = [s.load_levels(levels) for s in stores]
            return joint_pca_rgb(sets, [s.image_shape for s in stores], levels, weights=weights, max_grid=grid)

        if not run_async:
            self._show(ex, work())
            return None
        self.compute_button.setEnabled(False)
        self.info.setText(f"computing the PCA of {'+'.join(levels)}...")

        def failed(exc):
            self.error_label.setText(error_text(exc))

        self._worker = LongTask("PCA feature view", lambda progress: work(), lambda v: self._show(ex, v), failed,
                                lambda: self.compute_button.setEnabled(True), parent=self).start()
        return self._worker

    def _show(self, ex, view) -> None:
        from ._layers import grid_layer_kwargs, layer_to_volume

        self.view = view
        label = "+".join(view.levels)
        for rgb, grid, layer, viewer in ((view.rgb[0], view.grids[0], ex.source_layer, ex.viewer),
                                         (view.rgb[1], view.grids[1], ex.target_layer, ex.target_view.viewer)):
            # the grid over the scan's full geometry (direction included: flipped and oblique scans)
            geo = grid_layer_kwargs(layer_to_volume(layer), grid)
            name = "PCA features"
            if name in viewer.layers:
                viewer.layers.remove(name)  # a new grid: its transform is set at creation
            out = viewer.add_image(rgb, name=name, rgb=True, opacity=0.7, **geo)
            out.metadata["meddift_pca_levels"] = list(view.levels)
            # keep the similarity map and markers on top in the target viewer
            if viewer is not ex.viewer:
                viewer.layers.move(viewer.layers.index(out), 1)
        ex_var = ", ".join(f"{100 * e:.0f}%" for e in view.explained)
        self.info.setText(f"PCA of {label} on grids {view.grids[0]} / {view.grids[1]}: "
                          f"components explain {ex_var} of the variance (red, green, blue).")
