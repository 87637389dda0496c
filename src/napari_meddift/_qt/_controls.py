"""Small Qt controls the dock widgets share: an error line, a live status text and a path field
with a browse button."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (QFileDialog, QFrame, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QPushButton,
                            QSizePolicy, QWidget)

ERROR_STYLE = "color: #ff6060;"


def error_label() -> QLabel:
    """Where a widget shows a MedDiftError's one line instead of a traceback."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setStyleSheet(ERROR_STYLE)
    return label


class StatusText(QPlainTextEdit):
    """A few lines of monospace, selectable text that change many times a second (the explorer's
    live status) without moving anything else in the window.

    A word-wrapped QLabel asks its parents for a new layout at every ``setText``: the dock, then
    the main window, re-lay out and repaint whole (under software OpenGL the window is composed
    again each time, several ms of CPU taken from the search). This box has a fixed height of
    ``lines`` lines (wrapped lines included; more scroll), so a new text only repaints the box itself.
    """

    def __init__(self, text: str = "", lines: int = 4, parent: QWidget | None = None):
        super().__init__(parent)
        self.setReadOnly(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)  # a narrow dock: scroll, not cut
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.viewport().setAutoFillBackground(False)
        self.setStyleSheet("QPlainTextEdit { background: transparent; }")
        font = QFont("monospace")
        font.setStyleHint(QFont.StyleHint.TypeWriter)
        self.setFont(font)
        margins = self.contentsMargins().top() + self.contentsMargins().bottom()
        doc_margin = 2 * int(self.document().documentMargin())
        self.setFixedHeight(self.fontMetrics().lineSpacing() * lines + margins + doc_margin)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setText(text)

    def text(self) -> str:
        return self.toPlainText()

    def setText(self, text: str) -> None:  # noqa: N802 (QLabel's name, for callers of either)
        if text != self.toPlainText():
            self.setPlainText(text)


def path_field(edit: QLineEdit, caption: str, folder: bool = False) -> QWidget:
    """``edit`` with a '...' button that opens a file (or folder) dialog and fills it in."""

    def browse() -> None:  # pragma: no cover - interactive
        if folder:
            path = QFileDialog.getExistingDirectory(edit, caption, edit.text())
        else:
            path, _ = QFileDialog.getOpenFileName(edit, caption, edit.text())
        if path:
            edit.setText(path)

    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit)
    button = QPushButton("...")
    button.setMaximumWidth(30)
    button.clicked.connect(browse)
    lay.addWidget(button)
    return row


__all__: list[str] = ["ERROR_STYLE", "StatusText", "error_label", "path_field"]
