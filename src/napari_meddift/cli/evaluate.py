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
    summary = summarize(tre_mm(pred, true, spacing_zyx))
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary_table({Path(args.predicted).name: summary}))
    return 0
