"""Landmarks: the mismatch debugger.

Load landmark pairs (the core's readers), match every source landmark with the explorer's
settings, and list predicted match and error (TRE, mm) per pair, worst first. Selecting a row
moves both viewers there and shows that landmark's similarity map.
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
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import MedDiftError
from ._explorer import find_explorer
from ._controls import error_label, path_field

__all__ = ["LandmarksWidget"]

COLUMNS = ["#", "error (mm)", "source z,y,x", "true z,y,x", "predicted z,y,x", "score", "ambiguity", "fb"]


class _NumItem(QTableWidgetItem):
    """A table cell that sorts by its number, not its text."""

    def __init__(self, text: str, value: float):
        super().__init__(text)
        self.setData(Qt.ItemDataRole.UserRole, float(value))
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other):  # noqa: D105
        a = self.data(Qt.ItemDataRole.UserRole)
        b = other.data(Qt.ItemDataRole.UserRole)
        a = -math.inf if a is None or math.isnan(a) else a
        b = -math.inf if b is None or math.isnan(b) else b
        return a < b


def _fmt(p) -> str:
    return ", ".join(f"{v:g}" for v in np.round(np.asarray(p, float), 1))


class LandmarksWidget(QWidget):
    """The "Landmarks" dock widget. ``set_pairs(src, tgt)`` then ``match()`` (or the buttons)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.source_points: np.ndarray | None = None
        self.target_points: np.ndarray | None = None
        self.table_data = None  # MatchTable of the last run
        self.errors_mm: np.ndarray | None = None
        self._worker = None

        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.src_edit, self.tgt_edit = QLineEdit(), QLineEdit()
        self.src_edit.setPlaceholderText("landmarks of the source image")
        self.tgt_edit.setPlaceholderText("corresponding landmarks of the target image")
        form.addRow("Source points", path_field(self.src_edit, "Landmark file"))
        form.addRow("Target points", path_field(self.tgt_edit, "Landmark file"))
        self.format_combo = QComboBox()
        try:
            from ..io.landmarks import FORMATS

            self.format_combo.addItems(list(FORMATS))
        except Exception:  # pragma: no cover
            self.format_combo.addItems(["auto", "l2r", "dirlab", "elastix", "csv"])
        form.addRow("Format", self.format_combo)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self._load_clicked)
        self.match_button = QPushButton("Match all")
        self.match_button.clicked.connect(self.match)
        row.addWidget(self.load_button)
        row.addWidget(self.match_button)
        lay.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        lay.addWidget(self.progress)
        self.summary = QLabel("Load landmark pairs, then 'Match all'. Rows sort worst first.")
        self.summary.setWordWrap(True)
        lay.addWidget(self.summary)
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

    def _explorer(self):
        ex = find_explorer(self.viewer)
        if ex is None or ex.engine is None:
            raise MedDiftError("open the Correspondence explorer and connect a pair first")
        return ex

    # ------------------------------------------------------------------ loading

    def _load_clicked(self):
        self.error_label.setText("")
        try:
            self.load(self.src_edit.text().strip(), self.tgt_edit.text().strip(), self.format_combo.currentText())
        except MedDiftError as exc:
            self.error_label.setText(str(exc))

    def load(self, source_file, target_file, fmt: str = "auto"):
        """Read a landmark pair with the core's readers (geometry from the explorer's layers)."""
        from ..io.landmarks import read_points
        from ._layers import layer_to_volume

        if not source_file or not target_file:
            raise MedDiftError("give both landmark files (source and target)")
        ex = find_explorer(self.viewer)
        sv = tv = None
        if ex is not None and ex.source_layer is not None:
            sv, tv = layer_to_volume(ex.source_layer), layer_to_volume(ex.target_layer)
        a = read_points(Path(source_file), fmt=fmt, volume=sv)
        b = read_points(Path(target_file), fmt=fmt, volume=tv)
        if a.shape != b.shape:
            raise MedDiftError(f"landmark counts differ: {len(a)} in {source_file} but {len(b)} in {target_file}")
        self.set_pairs(a, b)

    def set_pairs(self, source_zyx, target_zyx) -> None:
        """Landmark pairs in voxel (z, y, x) of the source and target images."""
        a, b = np.asarray(source_zyx, float).reshape(-1, 3), np.asarray(target_zyx, float).reshape(-1, 3)
        if a.shape != b.shape:
            raise MedDiftError(f"{len(a)} source landmarks but {len(b)} target landmarks")
        self.source_points, self.target_points = a, b
        self.table_data, self.errors_mm = None, None
        self._fill(None)
        self.summary.setText(f"{len(a)} landmark pairs loaded; 'Match all' computes predictions and errors.")

    # ------------------------------------------------------------------ matching

    def match(self, *_, run_async: bool = True):
        """Match every source landmark (explorer's levels and radius); fills the table."""
        from superqt.utils import create_worker

        self.error_label.setText("")
        try:
            if self.source_points is None:
                raise MedDiftError("load landmark pairs first")
            ex = self._explorer()
        except MedDiftError as exc:
            self.error_label.setText(str(exc))
            return None
        shape = np.asarray(ex.engine.matcher.source_shape)
        query = np.clip(np.rint(self.source_points), 0, shape - 1).astype(np.int64)
        radius = ex.state.radius
        levels, weights = tuple(ex.state.levels), dict(ex.state.weights)
        spacing = tuple(ex.target_layer.scale[-3:])
        engine = ex.engine

        def work(progress=None):
            if levels:
                engine.set_levels(levels, weights)
            table = engine.match_points(query, radius, progress=progress)
            from ..evaluation.metrics import tre_mm

            return table, tre_mm(table.target_zyx, self.target_points, spacing)

        if not run_async:
            self._done(work())
            return None

        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.match_button.setEnabled(False)
        worker = create_worker(work, _start_thread=False, _connect={
            "returned": self._done, "errored": self._failed, "finished": self._finished})
        self._worker = worker
        worker.start()
        return worker

    def _finished(self):
        self.progress.setVisible(False)
        self.match_button.setEnabled(True)
        self._worker = None

    def _failed(self, exc):
        self.error_label.setText(str(exc) if isinstance(exc, MedDiftError) else f"{type(exc).__name__}: {exc}")

    def _done(self, res):
        table, err = res
        self.table_data, self.errors_mm = table, np.asarray(err, float)
        self._fill(table)
        e = self.errors_mm
        from ..evaluation.metrics import tre_mm

        ex = find_explorer(self.viewer)
        spacing = tuple(ex.target_layer.scale[-3:]) if ex is not None else (1.0, 1.0, 1.0)
        before = tre_mm(self.source_points, self.target_points, spacing)
        self.summary.setText(
            f"{len(e)} pairs: TRE mean {e.mean():.2f} mm, median {np.median(e):.2f} mm, max {e.max():.2f} mm "
            f"(before matching: mean {before.mean():.2f} mm). Click a row to inspect it."
        )
        if ex is not None and ex.engine is not None:
            ex.marker_layer("landmarks (truth)", self.target_points, face_color="lime", visible=False)

    def _fill(self, table) -> None:
        self.table.setSortingEnabled(False)
        n = 0 if self.source_points is None else len(self.source_points)
        self.table.setRowCount(n)
        for i in range(n):
            err = float(self.errors_mm[i]) if self.errors_mm is not None else math.nan
            cells = [
                _NumItem(str(i), i),
                _NumItem("" if math.isnan(err) else f"{err:.2f}", err),
                QTableWidgetItem(_fmt(self.source_points[i])),
                QTableWidgetItem(_fmt(self.target_points[i])),
                QTableWidgetItem(_fmt(table.target_zyx[i]) if table is not None else ""),
                _NumItem(f"{table.score[i]:.3f}" if table is not None else "", table.score[i] if table is not None else math.nan),
                _NumItem(f"{table.ambiguity[i]:.2f}" if table is not None else "", table.ambiguity[i] if table is not None else math.nan),
                QTableWidgetItem(("ok" if table.consistent[i] else "NO") if table is not None and table.checked else ""),
            ]
            for c, item in enumerate(cells):
                self.table.setItem(i, c, item)
        self.table.setSortingEnabled(True)
        if table is not None:
            self.table.sortItems(1, Qt.SortOrder.DescendingOrder)  # worst first

    def row_landmark(self, row: int) -> int:
        return int(self.table.item(row, 0).data(Qt.ItemDataRole.UserRole))

    def _on_select(self):
        rows = {ix.row() for ix in self.table.selectedIndexes()}
        if not rows or self.source_points is None:
            return
        self.show_landmark(self.row_landmark(min(rows)))

    def show_landmark(self, i: int) -> None:
        """Move both viewers to landmark pair ``i`` and show its similarity map."""
        try:
            ex = self._explorer()
        except MedDiftError as exc:
            self.error_label.setText(str(exc))
            return
        shape = np.asarray(ex.engine.matcher.source_shape)
        vox = tuple(int(v) for v in np.clip(np.rint(self.source_points[i]), 0, shape - 1))
        truth = self.target_points[i]
        ex.marker_layer("truth", [truth], face_color="lime", symbol="ring", size=4)
        ex.show_query(vox, move_source=True)
        if not ex.state.following:  # the user navigates the target: go to the true point
            ex._set_slice(ex.target_view.viewer, ex.target_layer.data_to_world(truth))
