"""Choose a mini weight file's default timestep and levels on validation pairs, never on the benchmark's cases.

    nice python benchmarks/select_mini_levels.py --weights W.pt            # print the table
    nice python benchmarks/select_mini_levels.py --weights W.pt --write    # and record the choice in W.json

Validation pairs: the demo recipe (lung crop at 2.5 mm, a known breathing deformation, exact
landmarks) applied with seed 100 to training scans (``VALIDATION_SCANS``; the benchmark's seen
cases use seed 0 of the first two, so these are other deformations; a scan where the recipe
finds no lung landmarks is skipped with a line). The network saw these scans in training, though
not these deformations; the choice is made here so that docs/benchmarks.md's unseen demo scan stays a
test the defaults were not tuned on. Every timestep of ``--timesteps`` x every run of neighbouring
levels is scored by the pooled mean TRE of windowed search (radius 8 voxels, argmax); the lowest
wins. ``--write`` stores ``default_timestep``, ``default_levels`` and the table in the weights'
JSON (the weights' sha256 covers the .pt only, so the file stays verifiable).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_accuracy import SHARED_CT, Case, _subset, contiguous_fusions, log, run_ablation

VALIDATION_SCANS = ("chest_popi00.nii.gz", "chest_cip_ct64.nii.gz", "body_totalseg_example.nii.gz",
                    "chest_cip_lobes.nii.gz", "lung_elastix_small.nii.gz")
VALIDATION_SEED = 100


def validation_cases(work: Path, points: int) -> list[Case]:
    from napari_meddift.synthetic.demo import build_demo_pair, load_demo_lungs, load_demo_pair

    cases = []
    for scan in VALIDATION_SCANS:
        path = SHARED_CT / scan
        if not path.is_file():
            raise SystemExit(f"validation scan {path} missing; run from a clone beside ../shared")
        folder = work / scan.split(".")[0]
        if not (folder / "demo.json").is_file():
            log(f"building validation pair from {scan} (seed {VALIDATION_SEED}) ...")
            try:
                build_demo_pair(path, folder, seed=VALIDATION_SEED, verbose=False)
            except ValueError as exc:  # the demo recipe finds no lung landmarks in some scans
                log(f"SKIP {scan}: the demo recipe gives no pair ({exc})")
                continue
        inh, exh, src, tgt = load_demo_pair(folder)
        lungs, _ = load_demo_lungs(folder)
        dmax = json.loads((folder / "demo.json").read_text())["deformation"]["max_displacement_mm"]
        s, t = _subset(src.astype(np.int64), tgt, points, VALIDATION_SEED)
        cases.append(Case(scan.split(".")[0], scan, True, VALIDATION_SEED, "demo", inh, exh, lungs, s, t, dmax))
        log(f"validation {scan}: {inh.shape}, {len(s)} landmarks, max displacement {dmax:.1f} mm")
    if not cases:
        raise SystemExit("no validation pair could be built")
    return cases


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="mini weight file (.pt with its .json)")
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--radius", type=int, default=8)
    p.add_argument("--timesteps", type=int, nargs="+", default=[0, 5, 10, 20],
                   help="the timesteps to choose from (default: 0 5 10 20)")
    p.add_argument("--work", help="folder for the built pairs (default: a temporary folder)")
    p.add_argument("--write", action="store_true", help="record the choice in the weights' JSON")
    args = p.parse_args(argv)

    import torch

    from napari_meddift.backbones.mini import MiniBackbone, metadata_path

    torch.set_num_threads(2)
    mini = MiniBackbone(weights=args.weights)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="meddift_val_"))
    cases = validation_cases(work, args.points)
    configs = contiguous_fusions(tuple(mini.level_names))
    ns = argparse.Namespace(timesteps=args.timesteps, radius=args.radius)
    table = run_ablation(cases, mini, ns, configs)
    rows = sorted(table.items(), key=lambda kv: kv[1]["mean"])  # keys "t|levels"
    print(f"| t | levels (window r{args.radius}) | mean | median | p95 |")
    print("|---:|---|---:|---:|---:|")
    for key, v in rows:
        t, name = key.split("|")
        print(f"| {t} | {name} | {v['mean']:.2f} | {v['median']:.2f} | {v['p95']:.2f} |")
    best_t, best_name = rows[0][0].split("|")
    best = best_name.split("+")
    print(f"chosen default: t = {best_t}, levels {'+'.join(best)}")
    if args.write:
        path = metadata_path(args.weights)
        meta = json.loads(path.read_text())
        meta["default_timestep"] = int(best_t)
        meta["default_levels"] = best
        meta["level_selection"] = {
            "script": "benchmarks/select_mini_levels.py", "validation_scans": [c.scan for c in cases],
            "seed": VALIDATION_SEED, "timesteps": args.timesteps, "radius": args.radius, "points": args.points,
            "mean_tre_mm": {key: round(v["mean"], 3) for key, v in rows},
        }
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        tmp.replace(path)
        log(f"wrote default_timestep {best_t} and default_levels {best} to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
