"""Small Qt controls the dock widgets share: an error line and a path field with a browse button."""

from __future__ import annotations

from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QLineEdit, QPushButton, QWidget

ERROR_STYLE = "color: #ff6060;"


def error_label() -> QLabel:
    """Where a widget shows a MedDiftError's one line instead of a traceback."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setStyleSheet(ERROR_STYLE)
    return label


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


__all__: list[str] = ["ERROR_STYLE", "error_label", "path_field"]
