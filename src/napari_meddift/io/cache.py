"""Where descriptor stores go when the user names no path, and how generated files are named."""

from __future__ import annotations

import os
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_cache_dir() -> Path:
    """The folder for descriptor stores nobody named a path for.

    Returns ``$MEDDIFT_CACHE``, else the platform's user cache folder from ``platformdirs``:
    ``$XDG_CACHE_HOME/napari-meddift`` or ``~/.cache/napari-meddift`` on Linux,
    ``~/Library/Caches/napari-meddift`` on macOS, ``%LOCALAPPDATA%\\napari-meddift\\Cache``
    on Windows; it may not exist yet.
    """
    env = os.environ.get("MEDDIFT_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_path

    return user_cache_path("napari-meddift", appauthor=False)


def safe_filename(text: str, fallback: str = "file") -> str:
    """``text`` usable as (part of) a file name on every platform.

    ``text``: any label: an image name, a method name such as ``"mini (random)"``.
    ``fallback``: returned when nothing usable is left.

    Returns ``text`` with every run of characters other than ``A-Z a-z 0-9 . _ -`` replaced by one
    ``_``; ``fallback`` when that leaves an empty string.
    """
    return _UNSAFE.sub("_", text or "") or fallback
