"""Global search on real descriptors: the demo pair's 300 landmarks, fused CPU kernel vs tensor path.

    python benchmarks/bench_global_demo.py [--threads N] [--radius-too]

Extracts (or reuses, from the cache folder) the demo pair's `mini` stores as `meddift demo` does,
then matches the inhale landmarks over the whole exhale with the forward-backward check, once per
`GlobalSearch.cpu_kernel`, after a warm-up (norm maps, kernel compilation). Prints the time, the
mean TRE against the exact truth and whether both paths chose the same targets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_meddift.cli.demo import extract_demo_stores  # noqa: E402
from napari_meddift.evaluation.metrics import tre_mm  # noqa: E402
from napari_meddift.io.cache import default_cache_dir  # noqa: E402
from napari_meddift.matching import Matcher  # noqa: E402
from napari_meddift.matching.global_search import GlobalSearch  # noqa: E402
from napari_meddift.synthetic.demo import load_demo_pair  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None, help="Matcher.global_threads (default: one per core)")
    args = ap.parse_args()
    inhale, exhale, src_pts, tgt_pts = load_demo_pair()
    src, tgt = extract_demo_stores(inhale, exhale, default_cache_dir())
    query = np.rint(src_pts).astype(int)
    print(f"demo pair, mini stores: target {tgt.image_shape}, levels {list(tgt.level_names)}, "
          f"{len(query)} landmarks, load {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
    tables = {}
    for kernel in ("fused", "tensor"):
        GlobalSearch.cpu_kernel = kernel
        m = Matcher.from_stores(src, tgt)
        m.global_threads = args.threads
        m.match_points(query[:4], None)  # warm-up: norm maps, kernel compilation
        t = time.perf_counter()
        tables[kernel] = table = m.match_points(query, None)
        dt = time.perf_counter() - t
        tre = tre_mm(table.target_zyx, tgt_pts, exhale.spacing)
        print(f"{kernel}: {dt:.2f} s for {len(query)} global matches + forward-backward; mean TRE {tre.mean():.2f} mm, "
              f"{int(table.consistent.sum())} consistent")
    a, b = tables["fused"], tables["tensor"]
    same = int(np.all(a.target_zyx == b.target_zyx, axis=1).sum())
    print(
        f"same targets {same}/{len(query)}; max ambiguity difference {np.nanmax(np.abs(a.ambiguity - b.ambiguity)):.1e}"
    )


if __name__ == "__main__":
    main()
