"""Speed of the feature-quality report (evaluation/report.py) on the demo pair, from cached stores.

    nice python benchmarks/bench_report.py                 # extracts the stores once (cached), then times
    nice python benchmarks/bench_report.py --cache DIR     # where the per-timestep stores live

The issue's case: 5 timesteps (0, 20, 50, 100, 200) x (each of mini's three levels, each pair,
the fused default: 7 configurations) x the demo's 300 landmarks, windowed (radius 8), forward and
backward matches, from stores already in the cache. Then the same with fewer points, fewer
timesteps and fewer levels, to see how it scales. Writes the full run's heatmaps to
docs/images/bench_report.png and prints a Markdown table (copy it into docs/performance.md with
the machine and its load).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_meddift.backbones import get_backbone  # noqa: E402
from napari_meddift.backbones.base import ExtractionSettings  # noqa: E402
from napari_meddift.evaluation.report import extract_pairs, feature_report  # noqa: E402
from napari_meddift.evaluation.report_figure import save_report_figure  # noqa: E402
from napari_meddift.io.cache import default_cache_dir  # noqa: E402
from napari_meddift.synthetic.demo import load_demo_pair  # noqa: E402

FIGURE = REPO / "docs" / "images" / "bench_report.png"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(default_cache_dir()), help="folder of the per-timestep stores")
    ap.add_argument("--radius", type=int, default=8)
    ap.add_argument("--no-figure", action="store_true")
    ap.add_argument("--only", help="run only the runs whose label starts with this (e.g. issue)")
    args = ap.parse_args()

    inhale, exhale, src, tgt = load_demo_pair()
    backbone = get_backbone("mini")
    settings = ExtractionSettings(timestep=20, levels=("up0", "up1", "up2"), seed=0, samples=1, device="cpu")
    ts = (0, 20, 50, 100, 200)
    t0 = time.perf_counter()
    pairs = extract_pairs(inhale, exhale, backbone, settings, ts, Path(args.cache))
    print(f"stores ready in {time.perf_counter() - t0:.1f} s (cached after the first run)", flush=True)

    runs = [
        ("issue's case", ts, None, len(src)),
        ("1 timestep", (20,), None, len(src)),
        ("100 points", ts, None, 100),
        ("2 levels (3 configurations)", ts, ("up0", "up1"), len(src)),
    ]
    # CPU seconds of this process beside the wall clock: the matcher's windowed search runs on one
    # thread, so on a busy shared machine the CPU time is what an idle machine's wall clock would show
    lines = ["| run | timesteps | configurations | points | matches | wall s | CPU s | load avg | ms CPU per match |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, tsel, levels, n in runs:
        if args.only and not label.startswith(args.only):
            continue
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        rep = feature_report({t: pairs[t] for t in tsel}, src[:n], tgt[:n], levels=levels, radii=(args.radius,))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        load = max(load, os.getloadavg()[0])
        matches = len(rep.configurations) * len(tsel) * n * 2  # forward and backward
        lines.append(f"| {label} | {len(tsel)} | {len(rep.configurations)} | {n} | {matches} | {dt:.1f} | {cpu:.1f} | "
                     f"{load:.1f} | {1e3 * cpu / matches:.2f} |")
        print(f"{label}: {dt:.1f} s wall, {cpu:.1f} s CPU (load average up to {load:.2f})", flush=True)
        if label == "issue's case" and not args.no_figure:
            save_report_figure(rep, FIGURE)
            best = rep.best("tre_mean_mm")
            print(f"best: {best['configuration']} t={best['timestep']} TRE mean {best['tre_mean_mm']:.2f} mm")
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPU core(s), load average "
          f"{os.getloadavg()[0]:.2f} at the end\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
