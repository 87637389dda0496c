"""The ``meddift`` command: extract descriptor stores, match points, evaluate, run the demo.

Every user-fixable problem ends in one line on stderr and exit status 2; the contract of the
sub-commands is documented in docs/cli.md and kept stable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ..errors import CancelledError, MedDiftError


def _tqdm_progress(desc: str):
    """A core progress callback drawn as a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    bar = None

    def progress(done: int, total: int, message: str = "") -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr)
        bar.total = total
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()

    return progress


def _parse_triplet(text: str, what: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise MedDiftError(f"{what} must be three comma-separated numbers like 1.75,1.25,1.75, got {text!r}")
    return values  # type: ignore[return-value]


def resolve_levels(spec: str | None, level_names: Sequence[str]) -> tuple[str, ...] | None:
    """'0,2,3' (indices into the backbone's levels) or 'up0,up2' (names) -> level names."""
    if spec is None or spec.strip() == "":
        return None
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.isdigit():
            i = int(item)
            if i >= len(level_names):
                raise MedDiftError(
                    f"level index {i} is out of range; this source has levels "
                    + ", ".join(f"{k}={n}" for k, n in enumerate(level_names))
                )
            out.append(level_names[i])
        elif item in level_names:
            out.append(item)
        else:
            raise MedDiftError(f"unknown level {item!r}; choose from {', '.join(level_names)} or their indices")
    return tuple(dict.fromkeys(out))


def cmd_extract(args: argparse.Namespace) -> int:
    from ..backbones import get_backbone
    from ..backbones.base import ExtractionSettings
    from ..backbones.extraction import extract_to_store
    from ..io.volume import read_volume

    volume = read_volume(args.image)
    backbone = get_backbone(args.backbone, weights=args.weights, random_weights=args.random_weights)
    settings = ExtractionSettings(
        timestep=args.timestep,
        levels=resolve_levels(args.levels, backbone.level_names),
        seed=args.seed,
        samples=args.samples,
        device=args.device,
    )
    store, reused = extract_to_store(
        volume, backbone, settings, args.output, progress=_tqdm_progress(f"extract {Path(args.image).name}"),
        overwrite=args.overwrite,
    )
    verb = "reused existing" if reused else "wrote"
    print(f"{verb} {store.path} ({', '.join(store.level_names)}; image {tuple(store.image_shape)})")
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    from ..io.landmarks import read_points, write_points_csv
    from ..matching import Matcher
    from ..io.store import open_store

    src, tgt = open_store(args.source), open_store(args.target)
    levels = resolve_levels(args.levels, src.level_names)
    points = read_points(args.points)
    matcher = Matcher.from_stores(src, tgt, levels=levels, device=args.device)
    radius = None if args.global_search else args.radius
    table = matcher.match_points(points, radius, progress=_tqdm_progress("match"))
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.metrics import format_summary_table, summarize, tre_mm
    from ..io.landmarks import read_points

    if args.spacing:
        sx, sy, sz = _parse_triplet(args.spacing, "--spacing")
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


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(headless=args.headless, as_json=args.json, cache_dir=args.cache, radius=args.radius)


def cmd_train_mini(argv: Sequence[str]) -> int:
    from ..training.mini import main_train

    return int(main_train(list(argv)) or 0)


def cmd_evaluate_l2r(argv: Sequence[str]) -> int:
    from ..evaluation.l2r import main_evaluate_l2r

    return int(main_evaluate_l2r(list(argv)) or 0)


#: sub-commands whose own parsers own their flags
_DELEGATED = {"train-mini": cmd_train_mini, "evaluate-l2r": cmd_evaluate_l2r}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="meddift", description="Training-free 3D correspondence from diffusion features (MedDIFT)."
    )
    p.add_argument("--version", action="version", version=f"napari-meddift {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("extract", help="extract a descriptor store (zarr) from a CT volume")
    e.add_argument("image", help="NIfTI, MHA/MHD, NRRD file or DICOM series folder")
    e.add_argument("-o", "--output", required=True, help="descriptor store to write (STORE.zarr)")
    e.add_argument("--backbone", default="mini", help="descriptor source: mini (built in), maisi, ...")
    w = e.add_mutually_exclusive_group()
    w.add_argument("--weights", help="folder with the backbone's checkpoint files (MAISI)")
    w.add_argument("--random-weights", action="store_true", help="same architecture at seeded random weights")
    e.add_argument("--timestep", type=int, default=20, help="diffusion timestep of the added noise (0-999)")
    e.add_argument("--levels", help="levels to keep: indices (0,1,2,3) or names; default all")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--samples", type=int, default=1, help="noise samples averaged")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--overwrite", action="store_true", help="re-extract even if the store matches")
    e.set_defaults(func=cmd_extract)

    m = sub.add_parser("match", help="match points from a source store into a target store")
    m.add_argument("source")
    m.add_argument("target")
    m.add_argument("--points", required=True, help="CSV, x,y,z voxel indices per row (Learn2Reg convention)")
    m.add_argument("-o", "--output", required=True)
    s = m.add_mutually_exclusive_group()
    s.add_argument("--radius", type=int, default=16, help="half-width of the search window in voxels")
    s.add_argument("--global", dest="global_search", action="store_true", help="search the whole target")
    m.add_argument("--levels", help="levels to fuse: indices or names; default all in the stores")
    m.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    m.set_defaults(func=cmd_match)

    v = sub.add_parser("evaluate", help="target registration error (mm) of predicted against true points")
    v.add_argument("predicted")
    v.add_argument("truth")
    g = v.add_mutually_exclusive_group(required=True)
    g.add_argument("--spacing", help="voxel spacing sx,sy,sz in mm")
    g.add_argument("--image", help="image whose spacing to use")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="open the demo pair in napari (or --headless: print a TRE table)")
    d.add_argument("--headless", action="store_true", help="no window: extract, match, print TRE")
    d.add_argument("--json", action="store_true", help="with --headless: JSON output")
    d.add_argument("--cache", help="folder for descriptor stores (default: the user cache)")
    d.add_argument("--radius", type=int, default=8, help="search window half-width in voxels")
    d.set_defaults(func=cmd_demo)

    sub.add_parser("train-mini", help="train the built-in mini diffusion model (see docs/model-card.md)",
                   add_help=False)
    sub.add_parser("evaluate-l2r", help="run the Learn2Reg LungCT protocol on a data folder (--root DIR)",
                   add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        runner = lambda: _DELEGATED[argv[0]](argv[1:])  # noqa: E731
    else:
        args = build_parser().parse_args(argv)
        runner = lambda: args.func(args)  # noqa: E731
    try:
        return runner()
    except CancelledError as exc:
        print(f"meddift: cancelled: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("meddift: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except MedDiftError as exc:
        print(f"meddift: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
