"""``meddift check STORE...``: full integrity check of descriptor stores (docs/reliability.md)."""

from __future__ import annotations

import argparse
import json

from ..errors import MedDiftError

NAME = "check"
HELP = "verify descriptor stores fully: every chunk decodes, no NaN/inf, checksums match"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stores", nargs="+", metavar="STORE")
    p.add_argument("--json", action="store_true", help="one JSON report per store")


def run(args: argparse.Namespace) -> int:
    from ..io.store import verify_store

    reports, bad = [], 0
    for path in args.stores:
        try:
            rep = verify_store(path)
        except MedDiftError as exc:
            rep = {"path": str(path), "ok": False, "error": str(exc), "levels": {}}
        reports.append(rep)
        bad += not rep["ok"]
        if args.json:
            continue
        if "error" in rep:
            print(f"DAMAGED {path}: {rep['error']}")
            continue
        n = sum(lv["chunks"] for lv in rep["levels"].values())
        problems = [f"{name}: {'; '.join(lv['problems'])}" for name, lv in rep["levels"].items() if lv["problems"]]
        if problems:
            print(f"DAMAGED {path}: " + " | ".join(problems))
        else:
            print(f"ok {path}: {len(rep['levels'])} level(s), {n} chunks decoded, checksums match")
    if args.json:
        print(json.dumps(reports, indent=2))
    if bad:
        raise MedDiftError(f"{bad} of {len(args.stores)} store(s) damaged; extract them again")
    return 0
