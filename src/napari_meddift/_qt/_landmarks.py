"""Landmarks: the mismatch debugger.

Load landmark pairs (the core's readers) into the explorer's session, match them all with the
explorer's settings (a napari worker with progress in the activity dock, cancellable), and see
them: points coloured by error in both viewers (the explorer draws them), a sortable table
worst first, a summary per region (height in the lung, inside/outside the lung mask when the
target has a lung-mask Labels layer). Selecting a row takes both viewers to that landmark.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import MedDiftError
from ._controls import error_label, path_field
from ._long_task import error_text, notify_error
from .explorer import explorer_in

__all__ = ["LandmarksWidget", "region_text"]

COLUMNS = ["#", "error (mm)", "source z,y,x", "true z,y,x", "predicted z,y,x", "score", "rivalry", "PSR"]


class _NumItem(QTableWidgetItem):
    """A table cell that sorts by its number, not its text."""

    def __init__(self, text: str, value: float):
        super().__init__(text)
        self.setData(Qt.ItemDataRole.UserRole, float(value))
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other):
        a, b = self.data(Qt.ItemDataRole.UserRole), other.data(Qt.ItemDataRole.UserRole)
        a = -math.inf if a is None or math.isnan(a) else a
        b = -math.inf if b is None or math.isnan(b) else b
        return a < b


def _fmt(p) -> str:
    return ", ".join(f"{v:g}" for v in np.round(np.asarray(p, float), 1))


def region_text(regions: dict) -> str:
    """One line per region: n, mean and p95 error (mm)."""
    lines = []
    for name, s in regions.items():
        if s.get("n", 0):
            lines.append(f"{name:18s} n={s['n']:3d}  mean {s['mean']:5.2f}  p95 {s['p95']:5.2f} mm")
        else:
            lines.append(f"{name:18s} n=  0")
    return "\n".join(lines)


class LandmarksWidget(QWidget):
    """The "Landmarks" dock widget. ``set_pairs(src, tgt)`` then ``match()`` (or the buttons).

    ``explorer``: the ExplorerWidget whose session it shares (default: the one docked in the
    viewer's window, found when needed).
    """

    def __init__(self, napari_viewer, explorer=None, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._explorer = explorer
        self.lung_mask: np.ndarray | None = None  # target grid, for the per-region summary
        self.regions: dict | None = None
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.src_edit, self.tgt_edit = QLineEdit(), QLineEdit()
        self.src_edit.setPlaceholderText("landmarks of the source image")
        self.tgt_edit.setPlaceholderText("corresponding landmarks of the target image")
        form.addRow("Source points", path_field(self.src_edit, "Landmark file"))
        form.addRow("Target points", path_field(self.tgt_edit, "Landmark file"))
        self.format_combo = QComboBox()
        from ..io.landmarks import FORMATS

        self.format_combo.addItems(list(FORMATS))
        form.addRow("Format", self.format_combo)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self._load_clicked)
        self.match_button = QPushButton("Match all")
        self.match_button.clicked.connect(lambda *_: self.match())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        for b in (self.load_button, self.match_button, self.cancel_button):
            row.addWidget(b)
        lay.addLayout(row)
        self.summary = QLabel("Load landmark pairs, then 'Match all'. Rows sort worst first.")
        self.summary.setWordWrap(True)
        lay.addWidget(self.summary)
        self.region_label = QLabel("")
        self.region_label.setStyleSheet("font-family: monospace;")
        lay.addWidget(self.region_label)
        self.error_label = error_label()
        lay.addWidget(self.error_label)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemSelectionChanged.connect(self._on_select)
        lay.addWidget(self.table, 1)
        self._watched = None
        _ = self.explorer  # listen to a given (or already docked) explorer's landmarks

    # ------------------------------------------------------------------ the shared session

    @property
    def explorer(self):
        ex = self._explorer if self._explorer is not None and not self._explorer.closed else explorer_in(self.viewer)
        if ex is not None and ex is not self._watched:
            ex.landmarks_applied.connect(self._on_landmarks)
            self._watched = ex
        return ex

    def _connected(self):
        ex = self.explorer
        if ex is None or ex.engine is None:
            raise MedDiftError("open the Correspondence explorer and connect a pair first")
        return ex

    def _fail(self, exc) -> None:
        self.error_label.setText(error_text(exc))
        notify_error(exc)

    @property
    def landmarks(self):
        ex = self.explorer
        return ex.session.landmarks if ex is not None else None

    # ------------------------------------------------------------------ loading

    def _load_clicked(self):
        self.error_label.setText("")
        try:
            self.load(self.src_edit.text().strip(), self.tgt_edit.text().strip(), self.format_combo.currentText())
        except MedDiftError as exc:
            self._fail(exc)

    def load(self, source_file, target_file, fmt: str = "auto"):
        """Read a landmark pair with the core's readers (geometry from the explorer's layers)."""
        from ..io.landmarks import read_points
        from ._layers import layer_to_volume

        if not source_file or not target_file:
            raise MedDiftError("give both landmark files (source and target)")
        ex = self._connected()
        sv, tv = layer_to_volume(ex.source_layer), layer_to_volume(ex.target_layer)
        a = read_points(Path(source_file), fmt=fmt, volume=sv)
        b = read_points(Path(target_file), fmt=fmt, volume=tv)
        if a.shape != b.shape:
            raise MedDiftError(f"landmark counts differ: {len(a)} in {source_file} but {len(b)} in {target_file}")
        self.set_pairs(a, b)

    def set_pairs(self, source_zyx, target_zyx, lung_mask=None) -> None:
        """Landmark pairs in voxel (z, y, x) of the source and target images (into the session);
        ``lung_mask``: optional boolean lung mask of the target for the per-region summary."""
        ex = self._connected()
        if lung_mask is not None:
            self.lung_mask = np.asarray(lung_mask, bool)
        ex.set_landmarks(source_zyx, target_zyx)
        self.summary.setText(f"{len(ex.session.landmarks)} landmark pairs loaded; 'Match all' computes "
                             "predictions and errors.")

    # ------------------------------------------------------------------ matching

    def match(self, run_async: bool = True):
        """Match every source landmark with the explorer's settings; fills the table."""
        self.error_label.setText("")
        try:
            ex = self._connected()
            if ex.session.landmarks is None:
                raise MedDiftError("load landmark pairs first")
        except MedDiftError as exc:
            self._fail(exc)
            return None
        if not run_async:
            return ex.match_landmarks(run_async=False)
        task = ex.match_landmarks(on_error=lambda e: self.error_label.setText(error_text(e)))
        if task is not None:
            self.match_button.setEnabled(False)
            self.cancel_button.setEnabled(True)
            task.finished.connect(self._finished)
        return task

    def cancel(self, *_):
        ex = self.explorer
        if ex is not None and ex.task is not None:
            ex.task.cancel()

    def _finished(self):
        self.match_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _on_landmarks(self, lm) -> None:
        self._fill(lm)
        if not lm.matched:
            return
        from ..evaluation.metrics import region_summary, summarize

        e, before = lm.errors_mm, lm.initial_mm
        s = summarize(e)
        corr = lm.rivalry_error_correlation()
        self.summary.setText(
            f"{len(e)} pairs: TRE mean {s['mean']:.2f} mm, median {s['median']:.2f} mm, p95 {s['p95']:.2f} mm, "
            f"max {s['max']:.2f} mm (before matching: mean {before.mean():.2f} mm). Spearman(rivalry, error) "
            f"= {corr:.2f}. Click a row or a point to inspect it.")
        mask = self.lung_mask
        if mask is not None and mask.shape != tuple(np.shape(self._connected().target_layer.data)[-3:]):
            mask = None
        self.regions = region_summary(e, lm.target_zyx, mask)
        self.region_label.setText(region_text(self.regions))

    def _fill(self, lm) -> None:
        self.table.setSortingEnabled(False)
        n = 0 if lm is None else len(lm)
        self.table.setRowCount(n)
        if lm is not None:
            f = lm.features()
            for i in range(n):
                err = float(f["error_mm"][i])
                pred = "" if lm.predicted is None else _fmt(lm.predicted[i])
                cells = [
                    _NumItem(str(i), i),
                    _NumItem("" if math.isnan(err) else f"{err:.2f}", err),
                    QTableWidgetItem(_fmt(lm.source_zyx[i])),
                    QTableWidgetItem(_fmt(lm.target_zyx[i])),
                    QTableWidgetItem(pred),
                    _NumItem("" if math.isnan(f["score"][i]) else f"{f['score'][i]:.4f}", f["score"][i]),
                    _NumItem("" if math.isnan(f["rivalry"][i]) else f"{f['rivalry'][i]:.2f}", f["rivalry"][i]),
                    _NumItem("" if math.isnan(f["psr"][i]) else f"{f['psr'][i]:.1f}", f["psr"][i]),
                ]
                for c, item in enumerate(cells):
                    self.table.setItem(i, c, item)
        self.table.setSortingEnabled(True)
        if lm is not None and lm.matched:
            self.table.sortItems(1, Qt.SortOrder.DescendingOrder)  # worst first

    def row_landmark(self, row: int) -> int:
        return int(self.table.item(row, 0).data(Qt.ItemDataRole.UserRole))

    def _on_select(self):
        rows = {ix.row() for ix in self.table.selectedIndexes()}
        if rows:
            self.show_landmark(self.row_landmark(min(rows)))

    def show_landmark(self, i: int) -> None:
        """Both viewers to landmark pair ``i`` (its source point searched, the target at its truth)."""
        try:
            self._connected().go_to_landmark(int(i))
        except MedDiftError as exc:
            self._fail(exc)
