"""``meddift extract-many IMAGE... -o OUTDIR``: descriptor stores for many scans on a Dask cluster."""

from __future__ import annotations

import argparse
import sys

from ._common import (
    add_backbone_arguments,
    add_device_argument,
    add_levels_argument,
    add_spacing_argument,
    check_range,
    tqdm_progress,
)

NAME = "extract-many"
HELP = "extract descriptor stores for many scans on a Dask cluster (local or --scheduler ADDRESS)"
DESCRIPTION = (
    "One Dask task per scan writes OUTDIR/NAME.zarr; stores that already match are kept (a rerun resumes), "
    "a failing scan is reported and the others go on; OUTDIR/extract-many.csv has one row per scan. "
    "See docs/scaling.md."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="NIfTI, MHA/MHD, NRRD files or DICOM series folders")
    p.add_argument("-o", "--output", required=True, help="folder for NAME.zarr stores and extract-many.csv")
    c = p.add_mutually_exclusive_group()
    c.add_argument("--workers", type=int,
                   help="local cluster of N worker processes (default: one per GPU, else one per 4 cores)")
    c.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--threads", type=int, help="PyTorch threads per worker (default: the cores split between workers)")
    p.add_argument("--retries", type=int, default=1, help="extra attempts for a scan after an unexpected error")
    add_backbone_arguments(
        p,
        "descriptor source: mini (built in), maisi, ... (weights must be readable by every worker)",
        timestep_help="diffusion timestep of the added noise (0-999)",
    )
    add_levels_argument(p, "levels to keep: indices (0,1,2,3) or names; default all")
    p.add_argument("--samples", type=int, default=1, help="noise samples averaged")
    add_spacing_argument(p)
    add_device_argument(p)
    p.add_argument("--overwrite", action="store_true", help="re-extract even where a store matches")


def run(args: argparse.Namespace) -> int:
    from ..backbones import backbone_levels
    from ..backbones.base import ExtractionSettings
    from ..backbones.levels import resolve_levels
    from ..batch import extract_many
    from ..batch.cluster import check_scheduler_address

    # everything that can be checked before a cluster starts (the numeric bounds: cli/_common.py)
    if args.timestep is not None:
        check_range(args.timestep, "--timestep", 0, 999)
    if args.scheduler is not None:
        check_scheduler_address(args.scheduler)
    settings = ExtractionSettings(
        timestep=args.timestep,
        # the workers build the backbone; its levels come from the weights' JSON
        levels=resolve_levels(args.levels, backbone_levels(args.backbone, args.weights, args.random_weights)[0]),
        seed=args.seed,
        samples=args.samples,
        device=args.device,
        spacing=args.spacing,
    )
    report = extract_many(
        args.images, args.output, args.backbone, settings, weights=args.weights, random_weights=args.random_weights,
        workers=args.workers, scheduler=args.scheduler, threads=args.threads, overwrite=args.overwrite,
        retries=args.retries, progress=tqdm_progress("extract-many", unit="scan"),
    )
    for r in report.results:
        if r.status == "failed":
            print(f"meddift: {r.name}: {r.error}", file=sys.stderr)
    print(f"{report.summary()}; report in {report.csv_path}")
    return 0 if report.ok else 1
