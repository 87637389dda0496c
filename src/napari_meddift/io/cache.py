"""Where descriptor stores go when the user names no path: one cache folder per user."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$MEDDIFT_CACHE, else $XDG_CACHE_HOME/napari-meddift, else ~/.cache/napari-meddift."""
    env = os.environ.get("MEDDIFT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-meddift"
