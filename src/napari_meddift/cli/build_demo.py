"""``meddift build-demo``: regenerate the packaged demo pair (maintainers; docs/demo.md)."""

from __future__ import annotations

import argparse
import json

NAME = "build-demo"
HELP = "regenerate the packaged demo pair from the shared chest CT (maintainers)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    # defaults resolved in run(): the demo module imports the numerical stack, --help should not
    p.add_argument("--ct", default=None, help="source CT (default: the shared chest scan)")
    p.add_argument("--out", default=None, help="output folder (default: the packaged data/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the breathing deformation and keypoints")


def run(args: argparse.Namespace) -> int:
    from ..synthetic.demo import DEFAULT_SOURCE, DEMO_DIR, build_demo_pair

    ct = args.ct if args.ct is not None else str(DEFAULT_SOURCE)
    out = args.out if args.out is not None else str(DEMO_DIR)
    meta = build_demo_pair(ct, out, args.seed)
    print(json.dumps(meta["landmarks"], indent=2))
    return 0
