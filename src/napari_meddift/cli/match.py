"""``meddift match SOURCE.zarr TARGET.zarr --points P.csv -o OUT.csv``: points carried across stores."""

from __future__ import annotations

import argparse

from ._common import add_device_argument, add_levels_argument, add_search_arguments, tqdm_progress

NAME = "match"
HELP = "match points from a source store into a target store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--points", required=True, help="CSV, x,y,z voxel indices per row (Learn2Reg convention)")
    p.add_argument("-o", "--output", required=True)
    add_search_arguments(p, 16, global_help="search the whole target",
                         radius_help="half-width of the search window in voxels")
    add_levels_argument(p, "levels to fuse: indices or names; default all in the stores")
    add_device_argument(p, default="cpu", auto=False)


def run(args: argparse.Namespace) -> int:
    from ..backbones.levels import resolve_levels
    from ..io.landmarks import read_points, write_points_csv
    from ..io.store import open_store
    from ..matching import Matcher

    src, tgt = open_store(args.source), open_store(args.target)
    levels = resolve_levels(args.levels, src.level_names)
    points = read_points(args.points)
    matcher = Matcher.from_stores(src, tgt, levels=levels, device=args.device)
    radius = None if args.global_search else args.radius
    table = matcher.match_points(points, radius, progress=tqdm_progress("match"))
    write_points_csv(
        args.output,
        table.target_zyx,
        columns={
            "score": table.score,
            "ambiguity": table.ambiguity,
            "fb_distance": table.fb_distance,
            "consistent": table.consistent.astype(int),
        },
    )
    print(f"matched {len(points)} points -> {args.output}")
    return 0
