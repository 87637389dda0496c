"""Descriptor store size and read speed at MAISI's sizes (192x192x208 image), against the reference.

Random float16 descriptors (the worst case for compression): levels 512x16^3, 256x32^3,
128x64^3, 64x64^3. Prints a markdown table; run by hand, figures go to docs/performance.md.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from maisi_sizes import MAISI_LEVELS
from napari_meddift.io.store import open_store, write_store

IMAGE = (208, 192, 192)  # z, y, x
LEVELS = MAISI_LEVELS


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    rng = np.random.default_rng(0)
    levels = {n: rng.standard_normal((c, s, s, s), dtype=np.float32).astype(np.float16) for n, (c, s) in LEVELS.items()}
    tmp = Path(tempfile.mkdtemp())
    try:
        path = tmp / "maisi-size.zarr"
        t0 = time.perf_counter()
        write_store(path, levels, {"image_shape": list(IMAGE), "spacing": [1.75, 1.25, 1.75], "backbone": "random"})
        t_write = time.perf_counter() - t0
        size = du(path)
        t0 = time.perf_counter()
        store = open_store(path)
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.load_levels()
        t_load = time.perf_counter() - t0
        box = (slice(5, 9), slice(20, 24), slice(30, 34))  # the nodes of one R=16 window at level up2
        t0 = time.perf_counter()
        for _ in range(20):
            store.read_box("up2", box)
        t_box = (time.perf_counter() - t0) / 20 * 1e3
        dense_gb = sum(c for c, _ in LEVELS.values()) * np.prod(IMAGE) * 4 / 1e9
        print(f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({platform.processor() or 'cpu'}), "
              f"random float16 descriptors, 960 channels, image {IMAGE[2]}x{IMAGE[1]}x{IMAGE[0]}\n")
        print("| measurement | this project | reference (dense fp32) |\n|---|---|---|")
        print(f"| store on disk | {size / 1e9:.3f} GB | {dense_gb:.1f} GB in memory |")
        print(f"| write (atomic) | {t_write:.2f} s | |")
        print(f"| open (validate attrs) | {t_open * 1e3:.1f} ms | |")
        print(f"| load all levels into memory | {t_load:.2f} s | |")
        print(f"| read one window's nodes of up2 from disk | {t_box:.1f} ms | |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
