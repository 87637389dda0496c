"""napari's private API: used only in ``_qt/_napari_private.py``, and checked against this napari.

When a napari release renames or drops one of the private names the explorer relies on, the
check below fails (instead of the live view silently getting slow or wrong), and pyproject's
napari range (the versions checked) must be widened only after this test passes there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

napari = pytest.importorskip("napari")

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "napari_meddift"
PRIVATE = re.compile(r"napari\._|\._qt_window\b|\._qt_viewer\b|\._activity_dialog\b|\._ranges\b|"
                     r"\._on_layers_change\b|\._update_layers\b|\._block_refresh\b|\._update_thumbnail\b")


def test_private_names_only_in_one_module():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "_napari_private.py":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if PRIVATE.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert offenders == [], "napari internals outside _qt/_napari_private.py:\n" + "\n".join(offenders)


def test_this_napari_has_every_private_name_we_use():
    from napari_meddift._qt._napari_private import check_private_api

    assert check_private_api() == []


def test_pyproject_pins_the_checked_napari_range():
    from packaging.specifiers import SpecifierSet

    from napari_meddift._qt._napari_private import TESTED_NAPARI

    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"napari{TESTED_NAPARI}"' in text
    assert napari.__version__ in SpecifierSet(TESTED_NAPARI), (
        f"napari {napari.__version__} is outside the checked range {TESTED_NAPARI}: run these tests, then widen it")


@pytest.mark.gui
def test_the_window_parts_exist(make_napari_viewer):
    from napari_meddift._qt._napari_private import check_private_api, show_activity

    viewer = make_napari_viewer(show=True)
    assert check_private_api(viewer) == []
    assert show_activity(viewer)
