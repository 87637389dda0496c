"""Extraction time and peak memory per backbone and volume size, on this machine's CPU (or CUDA).

Volumes are crops of a real shared CT resampled to the sizes asked for; MAISI runs at random
weights (timing does not depend on weight values). Prints a markdown table for docs/performance.md.

    python benchmarks/bench_extraction.py [--sizes 64,96,128] [--maisi-sizes 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_meddift.backbones import get_backbone
from napari_meddift.backbones.base import ExtractionSettings
from napari_meddift.io.volume import Volume, read_volume

CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "chest_popi00.nii.gz"


def cube(volume: Volume, size: int) -> Volume:
    """The volume resized to size^3 (trilinear), spacing scaled to keep its physical extent."""
    t = torch.from_numpy(volume.array)[None, None]
    arr = F.interpolate(t, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()
    spacing = tuple(s * n / size for s, n in zip(volume.spacing, volume.shape))
    return Volume(arr, spacing=spacing, name=f"{volume.name}-{size}")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def time_one(backbone, volume: Volume, device: str, repeats: int) -> float:
    settings = ExtractionSettings(timestep=20, device=device)
    backbone.extract(volume, settings)  # warm-up: first call pays for lazy set-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        backbone.extract(volume, settings)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="64,96,128", help="cube sizes for mini and MIND-SSC")
    p.add_argument("--maisi-sizes", default="128", help="cube sizes for full-width MAISI (empty: skip)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    base = read_volume(CT)
    rows = []
    plans = [("mini", {}, args.sizes, args.repeats), ("mind-ssc", {}, args.sizes, args.repeats),
             ("maisi", {"random_weights": True}, args.maisi_sizes, 1)]
    for name, kw, sizes, repeats in plans:
        bb = get_backbone(name, **kw)
        for size in [int(s) for s in sizes.split(",") if s.strip()]:
            vol = cube(base, size)
            secs = time_one(bb, vol, args.device, repeats)
            rows.append((name, size, secs, peak_rss_gb()))
            print(f"{name} {size}^3: {secs:.2f} s (peak RSS so far {rows[-1][3]:.2f} GB)", flush=True)

    print(f"\nMeasured {time.strftime('%Y-%m-%d')} on {platform.machine()}, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; t=20, one noise sample.\n")
    print("| backbone | input | extraction (median) | process peak RSS so far |\n|---|---|---|---|")
    for name, size, secs, rss in rows:
        print(f"| {name} | {size}^3 | {secs:.2f} s | {rss:.2f} GB |")


if __name__ == "__main__":
    main()
