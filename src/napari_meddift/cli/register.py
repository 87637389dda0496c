"""``meddift register SRC.zarr TGT.zarr -o FIELD.nii.gz``: a dense, smooth field from descriptors.

ConvexAdam on the stores' descriptors (docs/registration.md): the field lives on the source grid
and maps each source voxel to its target position, the direction of ``meddift match``; it is
written as an ITK displacement field in physical mm. ``--points/--matched`` carry points through
it (scored by ``meddift evaluate``); ``--warped/--moving`` resample a target-side image onto the
source grid. Every input is checked before the long work starts.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from pathlib import Path

from ..errors import MedDiftError
from ._common import add_allow_mixed_argument, add_device_argument, add_levels_argument, tqdm_progress

NAME = "register"
HELP = "dense smooth displacement field from two descriptor stores (ConvexAdam on descriptors)"

#: environment variable naming the uniGradICON weight file (Step_2_final.trch)
UNIGRADICON_ENV = "MEDDIFT_UNIGRADICON_WEIGHTS"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..registration import RegistrationSettings as S

    p.add_argument("source", help="source descriptor store (the field is defined on its grid)")
    p.add_argument("target", help="target descriptor store")
    p.add_argument("-o", "--output", required=True, help="displacement field to write (.nii.gz, .mha, .nrrd)")
    p.add_argument("--points", help="source points (CSV x,y,z voxels, or any landmark format) to map")
    p.add_argument("--matched", help="with --points: CSV of the mapped target points (as `meddift match`)")
    p.add_argument("--moving", help="image on the target grid to warp onto the source grid (usually the target CT)")
    p.add_argument("--warped", help="with --moving: the warped image to write")
    p.add_argument("--jacobian", help="also write the Jacobian-determinant map here")
    add_levels_argument(p, "levels to fuse: indices or names; default all in the stores")
    p.add_argument("--grid-spacing", type=int, default=S.grid_spacing, help="cost-volume node spacing (voxels)")
    p.add_argument("--search-radius", type=int, default=S.search_radius, help="displacement range (voxels)")
    p.add_argument(
        "--search-step", type=int, default=S.search_step, help="displacement step of the cost volume (voxels)"
    )
    p.add_argument("--smoothness", type=float, default=S.smoothness, help="weight of the regulariser (Adam stage)")
    p.add_argument("--regulariser", choices=["diffusion", "bending"], default=S.regulariser)
    p.add_argument("--iterations", type=int, default=S.iterations, help="Adam steps (0: convex result only)")
    p.add_argument("--inverse-consistent", action="store_true", help="symmetrise forward and backward fields")
    p.add_argument("--method", choices=["convexadam", "unigradicon"], default="convexadam",
                   help="unigradicon: the learned baseline (needs --unigradicon-weights, --source-image, --moving)")
    p.add_argument("--unigradicon-weights", default=os.environ.get(UNIGRADICON_ENV),
                   help=f"uniGradICON weight file (or ${UNIGRADICON_ENV})")
    p.add_argument("--source-image", help="with --method unigradicon: the source CT")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_device_argument(p)
    add_allow_mixed_argument(p)


def _check_outputs(args: argparse.Namespace) -> None:
    from ..io.volume import VOLUME_SUFFIXES, _suffix

    images = [("-o/--output", args.output)] + [
        (f, v) for f, v in (("--warped", args.warped), ("--jacobian", args.jacobian)) if v
    ]
    for flag, path in images:
        if _suffix(Path(path)) not in VOLUME_SUFFIXES:
            raise MedDiftError(f"{flag} {path}: use a name ending in .nii.gz, .nii, .mha, .mhd or .nrrd")
    if bool(args.points) != bool(args.matched):
        raise MedDiftError("--points and --matched go together: give the points to map and the CSV to write")
    if bool(args.warped) != bool(args.moving):
        raise MedDiftError("--warped and --moving go together: give the target-side image and where to write it warped")
    from ..io.outputs import check_outputs

    # never an input (same inode: links and other spellings too), never two outputs in one file,
    # writable, not a folder or a special file: all before the stores are opened
    check_outputs({"-o/--output": args.output, "--matched": args.matched, "--warped": args.warped,
                   "--jacobian": args.jacobian},
                  {"source": args.source, "target": args.target, "--points": args.points, "--moving": args.moving,
                   "--source-image": args.source_image, "--unigradicon-weights": args.unigradicon_weights})


def run(args: argparse.Namespace) -> int:
    from ..backbones.levels import resolve_levels
    from ..io.landmarks import read_points, write_points_csv
    from ..io.store import open_store
    from ..io.volume import read_volume, write_volume
    from ..registration import Geometry, RegistrationSettings, check_stores, register_stores

    _check_outputs(args)
    src, tgt = open_store(args.source), open_store(args.target)
    check_stores(src, tgt, args.allow_mixed)
    points = read_points(args.points) if args.points else None
    if points is not None:
        from .match import check_points_inside

        check_points_inside(points, src.image_shape, args.points)  # a field is not extrapolated
    moving = read_volume(args.moving) if args.moving else None
    if moving is not None and tuple(moving.shape) != tuple(tgt.image_shape):
        raise MedDiftError(
            f"--moving {args.moving} is {'x'.join(map(str, moving.shape))} (z,y,x) but the target store's "
            f"image is {'x'.join(map(str, tgt.image_shape))}; give the image the target store was made from"
        )

    if args.method == "unigradicon":
        from ..registration.unigradicon import register_unigradicon

        if not args.source_image or moving is None:
            raise MedDiftError(
                "--method unigradicon registers intensities: give --source-image SRC_CT and --moving TGT_CT"
            )
        result = register_unigradicon(read_volume(args.source_image), moving, args.unigradicon_weights,
                                      device=args.device, source_geometry=Geometry.of(src))
    else:
        settings = RegistrationSettings(
            levels=resolve_levels(args.levels, src.level_names), grid_spacing=args.grid_spacing,
            search_radius=args.search_radius, search_step=args.search_step, smoothness=args.smoothness,
            regulariser=args.regulariser, iterations=args.iterations, inverse_consistent=args.inverse_consistent,
            device=args.device)
        settings.check()
        result = register_stores(src, tgt, settings, progress=tqdm_progress("register"), allow_mixed=args.allow_mixed)

    fld = result.field
    fld.write(args.output)
    report = {"field": str(args.output), "jacobian": result.jacobian.to_dict(),
              "seconds": {k: round(v, 2) for k, v in result.seconds.items()}}
    if points is not None:
        mapped = fld.map_points(points)
        disp = fld.target.to_world(mapped) - fld.source.to_world(points)
        write_points_csv(args.matched, mapped, columns={"displacement_mm": (disp**2).sum(1) ** 0.5})
        report["matched"] = str(args.matched)
    if moving is not None:
        write_volume(fld.warp(moving), args.warped)
        report["warped"] = str(args.warped)
    if args.jacobian:
        from ..io.volume import Volume

        g = fld.source
        write_volume(Volume(fld.jacobian(), g.spacing, g.origin, np.reshape(g.direction, (3, 3))),
                     args.jacobian)
        report["jacobian_map"] = str(args.jacobian)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"wrote {args.output} ({result.jacobian.line()}; {result.seconds['total']:.1f} s)")
        for key in ("matched", "warped", "jacobian_map"):
            if key in report:
                print(f"wrote {report[key]}")
    return 0
