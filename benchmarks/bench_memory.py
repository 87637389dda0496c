"""Peak memory of one extraction per backbone and size: the coefficients of backbones/memory.py.

Each (backbone, size, device) runs in a fresh process, so ``ru_maxrss`` (CPU) and
``torch.cuda.max_memory_allocated`` (CUDA) are that run's own peaks. Volumes are synthetic
(smooth random HU, 1.5 mm voxels): memory does not depend on the values. MAISI runs at random
weights. Prints one JSON line per run and a least-squares fit  peak = base + bytes_per_voxel * N
(N = network input voxels) per backbone and device.

    python benchmarks/bench_memory.py --backbone mini --sizes 64,96,128 --device cpu
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from napari_meddift.backbones import get_backbone
from napari_meddift.backbones.base import ExtractionSettings
from napari_meddift.backbones.memory import network_voxels
from napari_meddift.io.volume import Volume
name, size, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(max(1, torch.get_num_threads()))
rng = np.random.default_rng(0)
arr = (rng.standard_normal((size,) * 3).astype(np.float32) * 300 - 500).clip(-1000, 1500)
vol = Volume(arr, spacing=(1.5, 1.5, 1.5), name=f"synthetic-{size}")
bb = get_backbone(name, random_weights=True) if name != "mind-ssc" else get_backbone(name)
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
bb.extract(vol, ExtractionSettings(device=device, levels=None))
dt = time.perf_counter() - t0
out = {"backbone": name, "size": size, "device": device, "seconds": round(dt, 2),
       "network_voxels": network_voxels(name, vol.shape, getattr(bb, "preprocessing", None)),
       "base_rss": base_rss, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
if device == "cuda":
    out["peak_cuda"] = int(torch.cuda.max_memory_allocated())
    out["peak_cuda_reserved"] = int(torch.cuda.max_memory_reserved())
print(json.dumps(out), flush=True)
"""


def fit(rows: list[dict], key: str) -> tuple[float, float]:
    import numpy as np

    n = np.array([r["network_voxels"] for r in rows], dtype=float)
    y = np.array([r[key] for r in rows], dtype=float)
    if len(rows) == 1:
        return 0.0, float(y[0] / n[0])
    a = np.stack([np.ones_like(n), n], axis=1)
    (base, slope), *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(base), float(slope)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mini")
    ap.add_argument("--sizes", default="64,96,128")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()
    rows = []
    for size in (int(s) for s in a.sizes.split(",")):
        proc = subprocess.run([sys.executable, "-c", CHILD, a.backbone, str(size), a.device],
                              capture_output=True, text=True, timeout=a.timeout)
        if proc.returncode != 0:
            print(json.dumps({"backbone": a.backbone, "size": size, "device": a.device,
                              "error": proc.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    if rows:
        key = "peak_cuda" if a.device == "cuda" else "peak_rss"
        base, slope = fit(rows, key)
        print(json.dumps({"fit": a.backbone, "device": a.device, "key": key,
                          "base_bytes": round(base), "bytes_per_network_voxel": round(slope, 1)}), flush=True)


if __name__ == "__main__":
    main()
