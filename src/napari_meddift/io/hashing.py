"""File fingerprints: weights, source scans and shipped data are identified by sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, cached by (path, mtime, size) for this process: checkpoints are large.

    ``path``: the file.

    Returns 64 hexadecimal digits.
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]
