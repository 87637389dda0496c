"""``meddift evaluate-l2r --root DIR``: the Learn2Reg LungCT protocol (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

from ..errors import MedDiftError
from ._common import (
    add_backbone_arguments,
    add_device_argument,
    add_levels_argument,
    add_search_arguments,
    search_radius,
)

NAME = "evaluate-l2r"
HELP = "run the Learn2Reg LungCT protocol on a data folder (--root DIR)"
DESCRIPTION = "TRE of MedDIFT correspondence on Learn2Reg LungCT pairs (landmarks and masked keypoints)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, help="unpacked Learn2Reg LungCT folder (imagesTr/, landmarksTr/, ...)")
    p.add_argument("--labels", help="folder with the config, landmarksTr/, keypointsTr/, masksTr/ if not in --root")
    add_backbone_arguments(p, "mini, maisi, mind-ssc, ... or 'identity' (no matching)")
    add_levels_argument(p, "levels to fuse: indices or names; default all")
    add_search_arguments(p, global_help="search the whole moving image")
    p.add_argument("--cases", help="comma-separated case numbers, e.g. 1,2 (default: all in the config)")
    p.add_argument("--no-keypoints", action="store_true", help="landmarks only")
    p.add_argument("-o", "--out", help="output folder (default ROOT/meddift_l2r)")
    add_device_argument(p)
    p.add_argument("--json", action="store_true", help="print the JSON summary instead of the table")
    c = p.add_mutually_exclusive_group()
    c.add_argument("--workers", type=int, help="extract and match on a local Dask cluster of N worker processes")
    c.add_argument("--scheduler", help="extract and match on a running Dask cluster, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--threads", type=int, help="with --workers/--scheduler: PyTorch threads per worker")


def parse_cases(text: str | None) -> list[int] | None:
    """``"1,2"`` -> ``[1, 2]``; ``None`` or blank -> ``None`` (all cases of the config)."""
    if not text:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise MedDiftError(f"--cases must be comma-separated numbers like 1,2,3, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from ..backbones.base import ExtractionSettings, resolve_device
    from ..backbones.levels import resolve_levels
    from ..evaluation.l2r import evaluate_l2r, is_identity, resolve_backbone

    cases = parse_cases(args.cases)
    if args.out:  # before any model is built or scan read
        from ..io.paths import check_output_folder

        check_output_folder(args.out, "-o/--out")
    on_cluster = (args.workers is not None or args.scheduler is not None) and not is_identity(args.backbone)
    if on_cluster:  # the workers build the backbone; 'auto' is resolved on each worker
        from ..backbones import backbone_levels

        bb, device = args.backbone, args.device
        level_names = backbone_levels(args.backbone, args.weights, args.random_weights)[0]
    else:
        bb = resolve_backbone(args.backbone, args.weights, args.random_weights)
        level_names = bb.level_names if bb is not None else ()
        device = str(resolve_device(args.device))
    levels = resolve_levels(args.levels, level_names) if bb is not None else None
    settings = ExtractionSettings(timestep=args.timestep, seed=args.seed, device=device, levels=levels)
    run_l2r = evaluate_l2r
    if on_cluster:
        from ..batch.l2r import evaluate_l2r_on_cluster

        run_l2r = partial(evaluate_l2r_on_cluster, workers=args.workers, scheduler=args.scheduler,
                          threads=args.threads)
    result = run_l2r(
        args.root,
        bb,
        settings,
        radius=search_radius(args),
        cases=cases,
        out_dir=args.out,
        labels_root=args.labels,
        levels=levels,
        keypoints=not args.no_keypoints,
        device=device if device == "auto" else ("cuda" if device.startswith("cuda") else "cpu"),
        weights=args.weights,
        random_weights=args.random_weights,
        log=lambda line: print(line, file=sys.stderr),
    )
    if args.json:
        from ..evaluation.metrics import json_ready

        print(json.dumps(json_ready(result.to_dict()), indent=2))
    else:
        print(result.table, end="")
        print(f"results in {result.out_dir}", file=sys.stderr)
    return 0
