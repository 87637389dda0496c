"""Throughput of `extract-many` on this machine: scans per minute for 1, 2, ... local Dask workers,
against a serial in-process loop (what running `meddift extract` per scan does, minus start-up).

Inputs are copies of the two small real CTs in ../shared/data/ct (79x64x64 and 64x78x57 voxels);
each worker gets cores // workers PyTorch threads. Prints a markdown table (docs/scaling.md) and
the load average before and after each run, since other users' load changes every figure.

    python benchmarks/bench_scaling.py [--workers 1,2] [--copies 4] [--backbone mini] [--out DIR]
    python benchmarks/bench_scaling.py --backbone maisi --random-weights --workers 1 --copies 1 --no-serial
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from napari_meddift.backbones.base import ExtractionSettings
from napari_meddift.batch import extract_many, local_cluster
from napari_meddift.batch.cluster import threads_per_worker, usable_cores

CT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
CTS = ("chest_cip_ct64", "lung_elastix_small")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def inputs(folder: Path, copies: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(copies):
        for name in CTS:
            p = folder / f"{name}-{k}.nii.gz"
            shutil.copy(CT_DIR / f"{name}.nii.gz", p)
            out.append(p)
    return out


def serial(images, out: Path, backbone: str, random_weights: bool) -> dict:
    """The one-process baseline: one backbone, every scan in turn, all cores to PyTorch."""
    from napari_meddift.backbones import get_backbone
    from napari_meddift.batch import scan_name
    from napari_meddift.backbones.extraction import extract_to_store
    from napari_meddift.io.volume import read_volume

    torch.set_num_threads(usable_cores())
    before = load()
    t0 = time.perf_counter()
    bb = get_backbone(backbone, random_weights=random_weights)
    per = []
    for img in images:
        t1 = time.perf_counter()
        extract_to_store(read_volume(img), bb, ExtractionSettings(device="cpu"), out / f"{scan_name(img)}.zarr")
        per.append(time.perf_counter() - t1)
    wall = time.perf_counter() - t0
    return {"workers": "serial", "threads": usable_cores(), "start_s": 0.0, "wall_s": wall,
            "scans_per_min": 60 * len(images) / wall, "median_scan_s": statistics.median(per),
            "peak_rss_mb": None, "load_before": before, "load_after": load()}


def clustered(images, out: Path, workers: int, backbone: str, random_weights: bool) -> dict:
    from distributed import Client

    before = load()
    t0 = time.perf_counter()
    cluster = local_cluster(workers, device="cpu")
    client = Client(cluster)
    client.wait_for_workers(workers)
    start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        report = extract_many(images, out, backbone, ExtractionSettings(device="cpu"), random_weights=random_weights,
                              client=client)
        wall = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    assert report.ok, report.results
    return {"workers": workers, "threads": threads_per_worker(workers), "start_s": start, "wall_s": wall,
            "scans_per_min": 60 * len(images) / wall,
            "median_scan_s": statistics.median(r.seconds for r in report.results),
            "peak_rss_mb": max(r.peak_rss_mb for r in report.results), "load_before": before, "load_after": load()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2")
    p.add_argument("--copies", type=int, default=4, help="copies of each of the two CTs")
    p.add_argument("--backbone", default="mini")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--no-serial", action="store_true")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = inputs(Path(tmp) / "in", args.copies)
        rows = []
        if not args.no_serial:
            rows.append(serial(images, Path(tmp) / "serial", args.backbone, args.random_weights))
        for n in (int(w) for w in args.workers.split(",")):
            rows.append(clustered(images, Path(tmp) / f"w{n}", n, args.backbone, args.random_weights))
    print(f"{len(images)} scans, {args.backbone}, {usable_cores()} cores")
    print("| workers | threads each | cluster start (s) | wall (s) | scans/min | median s/scan "
          "| peak RSS per worker (MB) | load before / after |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        print(
            f"| {r['workers']} | {r['threads']} | {r['start_s']:.1f} | {r['wall_s']:.1f} | {r['scans_per_min']:.1f} | "
            f"{r['median_scan_s']:.2f} | {rss} | {r['load_before']} / {r['load_after']} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
