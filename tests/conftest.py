"""Shared fixtures: small real files in tests/data, and the larger real data in ../shared.

``tests/data`` (in the repository, a few hundred kB) holds the small real files the core tests
need, so a fresh clone tests them. The larger data live in the repository's sibling folder
``shared/data``; tests that need them take the ``shared_data`` fixture (or call
:func:`require_shared`), which skips with one reason when the folder is absent, and fails
instead when ``CI=true`` (CI must run everything).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
SMALL_DATA = REPO / "tests" / "data"

#: the one skip reason of every test that needs ../shared
SHARED_MISSING = f"needs the real data in {DATA} (the repository's sibling shared/ folder), absent here"


def on_ci() -> bool:
    """True when the environment says CI (``CI=true``, as GitHub Actions and most CIs set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_shared() -> Path:
    """``../shared/data``; skip the calling test when it is absent (fail under ``CI=true``)."""
    if DATA.is_dir():
        return DATA
    if on_ci():
        pytest.fail(f"CI=true but {DATA} is missing; CI must place a copy of shared/ beside the repository")
    pytest.skip(SHARED_MISSING)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder ``../shared/data`` (skips, or fails under ``CI=true``, when absent)."""
    return require_shared()


@pytest.fixture(scope="session")
def small_data() -> Path:
    """``tests/data``: small real files kept in the repository (see tests/data/README.md)."""
    return SMALL_DATA


#: the one skip reason of every GUI test where Qt has no display to draw on
NO_DISPLAY = ("needs a display for Qt and napari: run the tests under Xvfb, as the README's command "
              "does (xvfb-run -a -s \"-screen 0 1280x1024x24\" python3 -m pytest -q)")


def has_display() -> bool:
    """Whether Qt can open windows: an X or Wayland display, or a Qt platform chosen explicitly."""
    if sys.platform in ("win32", "darwin"):  # their Qt platforms need no display server
        return True
    return any(os.environ.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def pytest_collection_modifyitems(config, items):
    """Without a display Qt aborts the whole run when a GUI test makes its first window: skip the
    ``gui`` tests instead, with one reason (under ``CI=true`` they run, and fail loudly)."""
    if has_display() or on_ci():
        return
    skip = pytest.mark.skip(reason=NO_DISPLAY)
    for item in items:
        if item.get_closest_marker("gui") is not None:
            item.add_marker(skip)
