"""Shared fixtures: small real files in tests/data, and the larger real data in ../shared.

``tests/data`` (in the repository, a few hundred kB) holds the small real files the core tests
need, so a fresh clone tests them. The larger data live in the repository's sibling folder
``shared/data``; tests that need them take the ``shared_data`` fixture (or call
:func:`require_shared`), which skips with one reason when the folder is absent, and fails
instead when ``CI=true`` (CI must run everything).
"""

from __future__ import annotations

import os
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
