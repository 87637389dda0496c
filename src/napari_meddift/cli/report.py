"""``meddift report SRC TGT --points P [--truth Q] -o OUTDIR``: which levels and which timestep work
on this pair (evaluation/report.py): report.csv, report.json and report.png (heatmaps)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import MedDiftError
from ._common import add_device_argument, check_range, tqdm_progress

NAME = "report"
HELP = "feature-quality report: TRE / consistency / ambiguity per level, fusion and timestep"
DESCRIPTION = (
    "Match the landmarks with each single level, the fused default, every pair of levels and any --fusion, at "
    "every timestep, and write OUTDIR/report.csv, report.json (one row per configuration x timestep x search x "
    "region, with what reproduces it) and report.png (configurations x timesteps, one panel per metric). SRC and "
    "TGT are images (stores per timestep are extracted into --cache, or reused from it: a rerun resumes) or two "
    "descriptor stores (their own timestep only). See docs/cli.md."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="source image (NIfTI, MHA, NRRD, DICOM folder) or descriptor store (.zarr)")
    p.add_argument("target", help="target image or descriptor store")
    p.add_argument("--points", required=True, help="source landmarks (Learn2Reg CSV x,y,z voxels, or elastix)")
    p.add_argument("--truth", help="their true target positions (same format); without it: consistency and "
                   "ambiguity only")
    p.add_argument("-o", "--output", required=True, help="folder for report.csv, report.json, report.png")
    p.add_argument("--timesteps", help="timesteps to compare, e.g. 0,20,50,100,200 (images: the default; "
                   "stores: their own timestep)")
    p.add_argument("--levels", help="levels to combine: indices or names (default: every level of the stores)")
    p.add_argument("--fusion", action="append", default=[], metavar="FUSION",
                   help="an extra fusion, e.g. up0+up2 or up0:2+up1:1 (weights after ':'); repeatable")
    p.add_argument("--mask", help="mask or label image on the source grid: one row per region as well")
    from ..matching.window import DEFAULT_RADIUS_MM, parse_radius

    p.add_argument("--radius", type=parse_radius, default=None, metavar="R",
                   help=f"half-width of the search window: millimetres like {DEFAULT_RADIUS_MM:g}mm (per axis "
                   f"ceil(R / spacing) voxels), or a bare number of voxels; default {DEFAULT_RADIUS_MM:g}mm")
    p.add_argument("--global", dest="global_search", action="store_true",
                   help="also search the whole target (slow: minutes per configuration for big scans)")
    p.add_argument("--exclusion", type=int, default=2, help="ambiguity: the rival is sought outside this "
                   "many voxels around the match (default 2)")
    p.add_argument("--backbone", default="mini", help="with images: the descriptor source (default mini)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", help="with images: folder with the backbone's checkpoint files (MAISI)")
    w.add_argument("--random-weights", action="store_true", help="with images: seeded random weights")
    p.add_argument("--seed", type=int, default=0, help="with images: noise seed of the extraction")
    p.add_argument("--cache", help="with images: folder of the per-timestep stores (default: the user cache)")
    p.add_argument("--scheduler", help="with images: extract missing stores on this Dask scheduler "
                   "(tcp://host:port); the stores go to --cache/report-t<T>/")
    add_device_argument(p, default="cpu", auto=False)


def _is_store(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and (p.suffix == ".zarr" or (p / "zarr.json").is_file())


def run(args: argparse.Namespace) -> int:
    from ..backbones.base import resolve_device
    from ..backbones.levels import resolve_levels
    from ..evaluation.report import check_points, feature_report, pairs_by_timestep
    from ..explorer.timesteps import parse_timesteps
    from ..io.landmarks import read_points
    from ..io.paths import check_output_folder
    from ..io.volume import read_volume

    from ..matching.window import DEFAULT_RADIUS_MM, Radius

    radius = args.radius if args.radius is not None else Radius.mm(DEFAULT_RADIUS_MM)
    check_range(args.exclusion, "--exclusion", 0, None, " voxels")
    resolve_device(args.device)
    out = check_output_folder(args.output, "-o/--output folder")
    stores = [_is_store(p) for p in (args.source, args.target)]
    if stores[0] != stores[1]:
        raise MedDiftError("give SRC and TGT both as images or both as descriptor stores (.zarr)")
    for p in (args.source, args.target, args.points, args.truth, args.mask):
        if p is not None and not Path(p).exists():
            raise MedDiftError(f"no such file or folder: {p}")
    points = read_points(args.points)
    truth = read_points(args.truth) if args.truth else None
    if truth is not None and truth.shape != points.shape:
        raise MedDiftError(
            f"{args.points} has {len(points)} points but {args.truth} has {len(truth)}; they must be pairs"
        )
    mask = None
    if args.mask:
        import numpy as np

        m = read_volume(args.mask).array
        mask = m > 0.5 if set(np.unique(m).tolist()) <= {0.0, 1.0} else np.rint(m).astype(np.int64)

    if stores[0]:
        from ..io.store import open_store

        pair = (open_store(args.source), open_store(args.target))
        pairs = pairs_by_timestep([pair])
        have = next(iter(pairs))
        if args.timesteps and set(parse_timesteps(args.timesteps)) != {have}:
            raise MedDiftError(f"the stores hold t={have} only; to compare timesteps give the images as SRC TGT "
                               "(the stores of each timestep are then extracted or taken from --cache)")
        level_names = pair[0].level_names
    else:
        pairs = _image_pairs(args, points)
        level_names = next(iter(pairs.values()))[0].level_names
    check_points(points, next(iter(pairs.values()))[0].image_shape, args.points)
    levels = resolve_levels(args.levels, level_names)
    radii = [radius] + ([None] if args.global_search else [])
    report = feature_report(pairs, points, truth, levels=levels, fusions=args.fusion, radii=radii, mask=mask,
                            exclusion=args.exclusion, device=args.device,
                            progress=tqdm_progress("report", unit="match"))
    out.mkdir(parents=True, exist_ok=True)
    report.write_csv(out / "report.csv")
    report.write_json(out / "report.json")
    figure = ""
    try:
        from ..evaluation.report_figure import save_report_figure

        save_report_figure(report, out / "report.png")
        figure = ", report.png"
    except MedDiftError as exc:  # no matplotlib: the tables are the report; say how to get the figure
        print(f"meddift: {exc}")
    n = len(report.configurations) * len(report.timesteps) * len(radii)
    print(f"{n} configurations x timesteps x searches over {len(points)} landmarks -> "
          f"{out}/report.csv, report.json{figure}")
    metric = "tre_mean_mm" if truth is not None else "fb_consistent_pct"
    best = report.best(metric)
    print(f"best by {metric}: {best['configuration']} at t={best['timestep']} ({best[metric]:.2f})")
    return 0


def _image_pairs(args, points):
    """{t: (source_store, target_store)} from the images: cached stores, extracted where missing."""
    from ..backbones import get_backbone
    from ..backbones.base import ExtractionSettings
    from ..evaluation.report import extract_pairs
    from ..explorer.timesteps import parse_timesteps
    from ..io.cache import default_cache_dir
    from ..io.paths import usable_folder
    from ..io.volume import read_volume

    timesteps = parse_timesteps(args.timesteps or "0,20,50,100,200")
    cache = usable_folder(args.cache if args.cache else default_cache_dir(), "--cache folder")
    settings = ExtractionSettings(timestep=timesteps[0], levels=None, seed=args.seed, samples=1, device=args.device)
    if args.scheduler:
        from ..batch import extract_many
        from ..io.store import open_store

        pairs = {}
        for t in timesteps:
            import dataclasses

            rep = extract_many([args.source, args.target], cache / f"report-t{t:03d}", args.backbone,
                               dataclasses.replace(settings, timestep=t), weights=args.weights,
                               random_weights=args.random_weights, scheduler=args.scheduler,
                               progress=tqdm_progress(f"extract t={t}", unit="scan"))
            if not rep.ok:
                bad = next(r for r in rep.results if r.status == "failed")
                raise MedDiftError(f"extraction at t={t} failed for {bad.name}: {bad.error}")
            pairs[t] = tuple(open_store(r.store) for r in rep.results)
        return pairs
    backbone = get_backbone(args.backbone, weights=args.weights, random_weights=args.random_weights)
    src, tgt = read_volume(args.source), read_volume(args.target)
    return extract_pairs(src, tgt, backbone, settings, timesteps, cache, progress=tqdm_progress("stores", unit="image"))
