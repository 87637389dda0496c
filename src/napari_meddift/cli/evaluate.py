"""``meddift evaluate PRED.csv TRUE.csv --spacing sx,sy,sz | --image IMG``: TRE in mm."""

from __future__ import annotations

import argparse
import math
import json
from pathlib import Path

from ..errors import MedDiftError
from ._common import parse_triplet

NAME = "evaluate"
HELP = "target registration error (mm) of predicted against true points"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("predicted")
    p.add_argument("truth")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--spacing", help="voxel spacing sx,sy,sz in mm")
    g.add_argument("--image", help="image whose spacing to use")
    p.add_argument("--json", action="store_true")
    p.add_argument("--mask", help="with --json: lung mask of the truth image; adds per-region summaries "
                   "(upper/middle/lower third of the lung, inside/outside the mask)")


def run(args: argparse.Namespace) -> int:
    from ..evaluation.metrics import format_summary_table, summarize, tre_mm
    from ..io.landmarks import read_points

    if args.spacing:
        sx, sy, sz = parse_triplet(args.spacing, "--spacing")
        if not all(math.isfinite(v) and v > 0 for v in (sx, sy, sz)):
            raise MedDiftError(f"--spacing must be three positive sizes in mm (x,y,z), got {args.spacing!r}")
        spacing_zyx = (sz, sy, sx)
    else:
        from ..io.volume import read_volume

        spacing_zyx = read_volume(args.image).spacing
    pred, true = read_points(args.predicted), read_points(args.truth)
    if pred.shape != true.shape:
        raise MedDiftError(
            f"{args.predicted} has {len(pred)} points but {args.truth} has {len(true)}; they must be pairs"
        )
    errors = tre_mm(pred, true, spacing_zyx)
    summary = summarize(errors)
    if args.json:
        if args.mask:  # per-region summaries (height in the lung, inside/outside the lung mask)
            import numpy as np

            from ..evaluation.metrics import region_summary
            from ..io.volume import read_volume

            mask = read_volume(args.mask)  # index z grows superiorly when direction[2][2] > 0 (LPS)
            if args.image and mask.shape != read_volume(args.image).shape:
                raise MedDiftError(f"--mask {args.mask} is {'x'.join(map(str, mask.shape))} (z,y,x) but --image "
                                   f"{args.image} is not; give the mask of the truth image")
            outside = ((true < -0.5) | (true > np.asarray(mask.shape) - 0.5)).any(axis=1)
            if outside.any():
                raise MedDiftError(f"{int(outside.sum())} point(s) of {args.truth} lie outside --mask {args.mask} "
                                   f"({'x'.join(map(str, mask.shape))} z,y,x); give the mask of the truth image")
            sign = float(np.sign(np.asarray(mask.direction, float)[2, 2]) or 1.0)
            summary["regions"] = region_summary(errors, true, mask.array > 0.5, superior_sign=sign)
        from ..evaluation.metrics import json_ready

        print(json.dumps(json_ready(summary)))  # an empty region's NaN statistics are null
    else:
        print(format_summary_table({Path(args.predicted).name: summary}))
    return 0
