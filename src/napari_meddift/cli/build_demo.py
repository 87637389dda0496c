"""``meddift build-demo``: regenerate the packaged demo pair (maintainers; docs/demo.md)."""

from __future__ import annotations

import argparse
import json

NAME = "build-demo"
HELP = "regenerate the packaged demo pair from the shared chest CT (maintainers)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..synthetic.demo import DEFAULT_SOURCE, DEMO_DIR

    p.add_argument("--ct", default=str(DEFAULT_SOURCE), help="source CT (default: the shared chest scan)")
    p.add_argument("--out", default=str(DEMO_DIR), help="output folder (default: the packaged data/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the breathing deformation and keypoints")


def run(args: argparse.Namespace) -> int:
    from ..synthetic.demo import build_demo_pair

    meta = build_demo_pair(args.ct, args.out, args.seed)
    print(json.dumps(meta["landmarks"], indent=2))
    return 0
