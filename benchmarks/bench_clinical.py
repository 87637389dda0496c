"""Extraction of clinical-resolution scans on the backbone's own grid: time per stage and peak memory.

Each scan runs in a fresh process (so ``ru_maxrss`` is that run's own peak) through the same path as
``meddift extract``: read, resample to the backbone's grid, network, write the store. Prints one JSON
line per scan and a Markdown table for docs/performance.md.

    python benchmarks/bench_clinical.py                       # every scan in ../shared/data/ct
    python benchmarks/bench_clinical.py ../shared/data/ct/chest_popi00.nii.gz --spacing native
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import torch
t0 = time.perf_counter()
from napari_meddift.backbones import get_backbone
from napari_meddift.backbones.base import ExtractionSettings
from napari_meddift.backbones.extraction import extract_to_store, extraction_grid
from napari_meddift.io.volume import read_volume
path, backbone, spacing = sys.argv[1], sys.argv[2], (None if sys.argv[3] == "default" else sys.argv[3])
weights = sys.argv[4] or None
t = time.perf_counter(); vol = read_volume(path); read_s = time.perf_counter() - t
bb = get_backbone(backbone, weights=weights)
settings = ExtractionSettings(spacing=spacing)
grid = extraction_grid(vol, bb, settings.spacing)
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    store, _ = extract_to_store(vol, bb, settings, Path(d) / "s.zarr")
    total = time.perf_counter() - t
    levels = {n: list(store.level(n).shape) for n in store.level_names}
print(json.dumps({"scan": Path(path).name, "shape": list(vol.shape), "spacing": [round(s, 3) for s in vol.spacing],
                  "grid": list(grid.shape), "grid_spacing": [round(s, 3) for s in grid.spacing],
                  "read_s": round(read_s, 2), "extract_s": round(total, 2),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                  "levels": levels, "threads": torch.get_num_threads()}), flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scans", nargs="*", help="CT files (default: every scan in ../shared/data/ct)")
    ap.add_argument("--backbone", default="mini")
    ap.add_argument("--spacing", default="default", help="default | native | MM")
    ap.add_argument("--weights", default="", help="the backbone's weights (mini: a file or a shipped name, mini_v1)")
    ap.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args()
    scans = a.scans or sorted(str(p) for p in (ROOT.parent / "shared" / "data" / "ct").glob("*.nii.gz"))
    if not scans:
        sys.exit("no scans given and ../shared/data/ct not found")
    rows = []
    for scan in scans:
        proc = subprocess.run([sys.executable, "-c", CHILD, scan, a.backbone, a.spacing, a.weights],
                              capture_output=True, text=True, timeout=a.timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        if proc.returncode != 0:
            print(json.dumps({"scan": Path(scan).name, "error": proc.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    load = os.getloadavg()
    print(f"\n{a.backbone} {a.weights}, spacing {a.spacing}; load average at the end {load[0]:.1f}\n")
    print("| scan | voxels (z, y, x) at mm | extraction grid | read "
          "| extract (resample + network + store) | peak memory |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['scan']} | {'x'.join(map(str, r['shape']))} at {'x'.join(f'{s:g}' for s in r['spacing'])} | "
              f"{'x'.join(map(str, r['grid']))} at {'x'.join(f'{s:.2f}' for s in r['grid_spacing'])} | "
              f"{r['read_s']:.1f} s | {r['extract_s']:.1f} s | {r['peak_rss_gb']:.2f} GB |")


if __name__ == "__main__":
    main()
