"""Is a descriptor store whole? A cheap check (every chunk file is there) and a full one.

The cheap check runs on every :func:`~napari_meddift.io.store.open_store`: it lists the chunk
files of each level and compares them with the chunk grid the level's shape needs (stores are
written with every chunk present, including all-zero ones). The full check
(``meddift check STORE``) also decodes every chunk (zstd with its content checksum), looks for
NaN/inf and compares each level with the sha256 recorded when it was written.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def level_digest(array: np.ndarray) -> str:
    """``sha256:<hex>`` of a level's values as stored (C order, the store's dtype)."""
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).reshape(-1)).hexdigest()


def chunk_keys(shape: tuple[int, ...], chunks: tuple[int, ...], encode) -> list[str]:
    """Every chunk key ('c/0/1/0/2') a level of ``shape`` in ``chunks`` needs."""
    grid = [range(max(1, math.ceil(n / c))) for n, c in zip(shape, chunks)]
    return [encode(idx) for idx in itertools.product(*grid)]


def missing_chunk_files(level_dir: Path, array) -> list[str]:
    """Chunk keys of ``array`` (a zarr v3 array stored in ``level_dir``) with no file, or an empty one."""
    present: set[str] = set()
    base = str(level_dir)
    for root, _dirs, files in os.walk(level_dir):
        rel = os.path.relpath(root, base)
        for f in files:
            if f == "zarr.json":
                continue
            try:
                if os.path.getsize(os.path.join(root, f)) == 0:
                    continue
            except OSError:
                continue
            present.add(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
    encode = array.metadata.encode_chunk_key
    return [k for k in chunk_keys(array.shape, array.chunks, encode) if k not in present]


@dataclass
class LevelReport:
    name: str
    chunks: int = 0
    problems: list[str] = field(default_factory=list)


def verify_level(name: str, array, expected_digest: str | None) -> LevelReport:
    """Decode every chunk of one level; NaN/inf and a digest mismatch are problems too."""
    report = LevelReport(name)
    grid = [max(1, math.ceil(n / c)) for n, c in zip(array.shape, array.chunks)]
    report.chunks = int(np.prod(grid))
    try:
        values = np.asarray(array[...])
    except Exception:  # noqa: BLE001 - find which chunk(s) do not decode
        bad = []
        for idx in itertools.product(*(range(g) for g in grid)):
            sel = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, array.chunks, array.shape))
            try:
                array[sel]
            except Exception as exc:  # noqa: BLE001
                bad.append((array.metadata.encode_chunk_key(idx), type(exc).__name__))
        keys = ", ".join(k for k, _ in bad[:3]) + (" ..." if len(bad) > 3 else "")
        report.problems.append(f"{len(bad)} chunk(s) do not decode ({keys})")
        return report
    n_bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if n_bad:
        report.problems.append(f"{n_bad} NaN/inf value(s)")
    if expected_digest is not None and level_digest(values) != expected_digest:
        report.problems.append("values differ from the checksum recorded when it was written")
    return report
