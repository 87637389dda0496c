"""What the explorer shows on the demo pair, measured: rivalry, its link to error, timesteps.

Runs the explorer's own model (``napari_meddift.explorer``, no window) on the packaged demo pair
(mini, window radius 8 voxels as ``meddift demo``):

* rivalry and PSR at the 300 landmarks and at random lung voxels (truth from the demo's known
  deformation), their distribution, and their Spearman correlation with the error in mm,
  beside the old ratio "best rival / best score";
* timesteps 0, 20, 50, 100, 200 extracted into cached stores (time), TRE per timestep, and the
  time to show a new map after switching (compute of one query on cached descriptors).

    python benchmarks/bench_explorer_demo.py [--cache DIR] [--figure docs/images/ambiguity_demo.png]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    return round(float(spearmanr(a[ok], b[ok]).statistic), 3)


def dist(a) -> dict:
    a = np.asarray(a, float)
    a = a[np.isfinite(a)]
    return {k: round(float(np.percentile(a, q)), 3) for k, q in (("p5", 5), ("p25", 25), ("median", 50),
                                                               ("p75", 75), ("p95", 95))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=None)
    p.add_argument("--radius", type=int, default=8)
    p.add_argument("--voxels", type=int, default=1000, help="random lung voxels for the distribution")
    p.add_argument("--timesteps", default="0,20,50,100,200")
    p.add_argument("--figure", default=None)
    args = p.parse_args(argv)

    import torch

    from napari_meddift.cli.demo import extract_demo_stores
    from napari_meddift.explorer import ExplorerSession, FieldTruth, extract_timesteps, parse_timesteps
    from napari_meddift.io.cache import default_cache_dir
    from napari_meddift.matching import Matcher
    from napari_meddift.synthetic.demo import load_demo_field, load_demo_lungs, load_demo_pair

    cache = Path(args.cache) if args.cache else default_cache_dir()
    inhale, exhale, src_pts, tgt_pts = load_demo_pair()
    src_store, tgt_store = extract_demo_stores(inhale, exhale, cache)
    s = ExplorerSession()
    s.connect(Matcher.from_stores(src_store, tgt_store), inhale.spacing, exhale.spacing, stores=(src_store, tgt_store))
    s.state.radius = args.radius * exhale.spacing[0]  # voxels -> the explorer's mm (2.5 mm isotropic)
    s.set_truth(FieldTruth(load_demo_field().u_voxels()))
    s.set_landmarks(src_pts, tgt_pts)
    t0 = time.perf_counter()
    lm = s.match_landmarks()
    match_s = time.perf_counter() - t0
    err = lm.errors_mm
    table = s.engine.matcher.match_points(np.rint(src_pts).astype(int), args.radius)  # the old ratio
    res: dict = {"machine": f"{os.cpu_count()}-core CPU, torch {torch.get_num_threads()} threads",
                 "load_average_start": [round(v, 2) for v in os.getloadavg()], "radius": args.radius,
                 "timestep": s.connected_timestep}
    res["landmarks"] = {
        "n": len(lm), "tre_mean_mm": round(float(err.mean()), 2), "match_all_s": round(match_s, 2),
        "rivalry": dist(lm.rivalry), "psr": dist(lm.psr), "ratio_rival_over_best": dist(table.ambiguity),
        "score": dist(lm.score),
        "spearman_with_error": {"rivalry": spearman(lm.rivalry, err), "psr": spearman(lm.psr, err),
                                "ratio_rival_over_best": spearman(table.ambiguity, err),
                                "score": spearman(lm.score, err)},
    }
    # worst decile vs the rest
    hi = err >= np.percentile(err, 90)
    res["landmarks"]["rivalry_mean_worst_decile"] = round(float(np.nanmean(lm.rivalry[hi])), 3)
    res["landmarks"]["rivalry_mean_rest"] = round(float(np.nanmean(lm.rivalry[~hi])), 3)

    # random lung voxels, truth from the field
    lungs = load_demo_lungs()[0]
    rng = np.random.default_rng(0)
    cand = np.argwhere(lungs)
    vox = cand[rng.choice(len(cand), size=min(args.voxels, len(cand)), replace=False)]
    amb, psr, e2 = [], [], []
    for v in vox:
        r = s.compute(s.request(v))
        amb.append(r.rivalry)
        psr.append(r.peak.psr)
        e2.append(r.error_mm)
    res["lung_voxels"] = {"n": len(vox), "tre_mean_mm": round(float(np.mean(e2)), 2), "rivalry": dist(amb),
                          "psr": dist(psr),
                          "spearman_with_error": {"rivalry": spearman(amb, e2), "psr": spearman(psr, e2)}}

    # timesteps
    ts = parse_timesteps(args.timesteps)
    t0 = time.perf_counter()
    pairs = extract_timesteps(inhale, exhale, src_store, ts, cache)
    res["timesteps"] = {"extract_s": round(time.perf_counter() - t0, 1), "per_timestep": {}}
    for t, (a, b) in pairs.items():
        s.add_timestep(t, Matcher.from_stores(a, b))
    q = tuple(int(n) // 2 for n in inhale.shape)
    for t in ts:
        s.state.timestep = t
        lm_t = s.match_landmarks()
        s.compute(s.request(q))  # warm
        times = []
        for k in range(20):
            t1 = time.perf_counter()
            s.compute(s.request((q[0], q[1] + k % 5, q[2])))
            times.append((time.perf_counter() - t1) * 1e3)
        res["timesteps"]["per_timestep"][t] = {
            "tre_mean_mm": round(float(lm_t.errors_mm.mean()), 2),
            "tre_p95_mm": round(float(np.percentile(lm_t.errors_mm, 95)), 2),
            "rivalry_median": round(float(np.nanmedian(lm_t.rivalry)), 3),
            "spearman_rivalry_error": spearman(lm_t.rivalry, lm_t.errors_mm),
            "switch_compute_ms_p95": round(float(np.percentile(times, 95)), 1)}
    s.state.compare_timesteps = True
    s.state.timestep = 20
    times = []
    for k in range(20):
        t1 = time.perf_counter()
        s.compute(s.request((q[0], q[1] + k % 5, q[2])))
        times.append((time.perf_counter() - t1) * 1e3)
    res["timesteps"]["compute_with_compare_strip_ms_p95"] = round(float(np.percentile(times, 95)), 1)
    res["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(res, indent=2))

    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
        ax[0].hist([np.asarray(amb)[np.isfinite(amb)], lm.rivalry[np.isfinite(lm.rivalry)]], bins=25,
                   density=True, label=[f"{len(vox)} random lung voxels", f"{len(lm)} landmarks"])
        ax[0].set_xlabel("rivalry 1 - (s1 - s2) / (s1 - median)")
        ax[0].set_ylabel("density")
        ax[0].legend(fontsize=8)
        ax[1].scatter(lm.rivalry, err, s=8, alpha=0.6)
        ax[1].set_xlabel("rivalry")
        ax[1].set_ylabel("error (mm)")
        ax[1].set_title(f"landmarks: Spearman {res['landmarks']['spearman_with_error']['rivalry']}", fontsize=9)
        tt = list(res["timesteps"]["per_timestep"])
        ax[2].plot(tt, [res["timesteps"]["per_timestep"][t]["tre_mean_mm"] for t in tt], "o-", label="mean")
        ax[2].plot(tt, [res["timesteps"]["per_timestep"][t]["tre_p95_mm"] for t in tt], "s--", label="p95")
        ax[2].set_xlabel("timestep t")
        ax[2].set_ylabel("landmark error (mm)")
        ax[2].legend(fontsize=8)
        fig.suptitle(f"demo pair, mini, window radius {args.radius} vox ({res['machine']})", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.figure, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
