"""``meddift match SOURCE.zarr TARGET.zarr --points P.csv -o OUT.csv``: points carried across stores."""

from __future__ import annotations

import argparse

from ..errors import MedDiftError
from ._common import (
    add_allow_mixed_argument,
    add_device_argument,
    add_levels_argument,
    add_search_arguments,
    search_radius,
    tqdm_progress,
    window_text,
)

NAME = "match"
HELP = "match points from a source store into a target store"

#: points beyond which a run would take hours on a CPU (windowed search / --global); refused
#: up front unless --no-size-limit
MAX_POINTS, MAX_GLOBAL_POINTS = 200_000, 5_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--points", required=True, help="CSV, x,y,z voxel indices per row (Learn2Reg convention)")
    p.add_argument("-o", "--output", required=True)
    add_search_arguments(p, global_help="search the whole target")
    add_levels_argument(p, "levels to fuse: indices or names; default all in the stores")
    add_device_argument(p, default="cpu", auto=False)
    add_allow_mixed_argument(p)
    p.add_argument("--no-size-limit", action="store_true",
                   help=f"match more than {MAX_POINTS:,} points ({MAX_GLOBAL_POINTS:,} with --global) in one run")


def run(args: argparse.Namespace) -> int:
    from ..backbones.levels import resolve_levels
    from ..io.landmarks import read_points, write_points_csv
    from ..io.store import open_store
    from ..matching import Matcher
    from ..matching.window import voxel_radius

    from ..backbones.base import resolve_device
    from ..io.metadata import check_same_extraction
    from ..io.outputs import check_outputs

    radius = search_radius(args)
    resolve_device(args.device)
    check_outputs({"-o/--output": args.output},
                  {"source": args.source, "target": args.target, "--points": args.points})
    src, tgt = open_store(args.source), open_store(args.target)
    check_same_extraction(src, tgt, args.allow_mixed)
    levels = resolve_levels(args.levels, src.level_names)
    if levels is None and src.level_names != tgt.level_names:
        raise MedDiftError(
            f"the stores hold different levels (source {', '.join(src.level_names)}; target "
            f"{', '.join(tgt.level_names)}); extract both with the same --levels, "
            "or name the levels to fuse with --levels"
        )
    points = read_points(args.points)
    limit = MAX_GLOBAL_POINTS if args.global_search else MAX_POINTS
    if len(points) > limit and not args.no_size_limit:
        raise MedDiftError(
            f"{args.points} holds {len(points):,} points; "
            f"more than {limit:,} {'global searches' if args.global_search else 'points'} "
            "would take hours: split the file into smaller runs, or pass --no-size-limit to run them all"
        )
    check_points_inside(points, src.image_shape, args.points)
    if radius is not None and max(voxel_radius(radius, tgt.spacing)) == 0:
        raise MedDiftError(
            f"--radius {radius} searches only the window's centre voxel of the target "
            f"({tgt.spacing} mm voxels): nothing to match or compare; give at least one voxel, e.g. 40mm"
        )
    matcher = Matcher.from_stores(src, tgt, levels=levels, device=args.device, allow_mixed=args.allow_mixed)
    print(f"search window: {window_text(radius, tgt.spacing)}")
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


def check_points_inside(points_zyx, shape_zyx, path) -> None:
    """Every query point inside the source image; the message speaks the file's x,y,z."""
    import numpy as np

    pts = np.asarray(points_zyx)
    bad = np.flatnonzero(((pts < 0) | (pts > np.asarray(shape_zyx) - 1)).any(axis=1))
    if bad.size:
        i = int(bad[0])
        x, y, z = (float(v) for v in pts[i][::-1])
        sx, sy, sz = (int(n) for n in tuple(shape_zyx)[::-1])
        raise MedDiftError(
            f"{path}: point {i + 1} at x,y,z = ({x:g}, {y:g}, {z:g}) lies outside the source image "
            f"(x,y,z size {sx}x{sy}x{sz}; valid voxel indices 0..{sx - 1}, 0..{sy - 1}, 0..{sz - 1})"
            + (f"; {bad.size} point(s) in all" if bad.size > 1 else "")
        )
