"""``meddift extract IMAGE -o STORE.zarr``: a descriptor store from a CT volume."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    add_backbone_arguments,
    add_device_argument,
    add_levels_argument,
    add_maisi_arguments,
    add_spacing_argument,
    check_range,
    maisi_options,
    tqdm_progress,
)

NAME = "extract"
HELP = "extract a descriptor store (zarr) from a CT volume"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="NIfTI, MHA/MHD, NRRD file or DICOM series folder")
    p.add_argument("-o", "--output", required=True, help="descriptor store to write (STORE.zarr)")
    from ..backbones import ALIASES, available_backbones

    short = ", ".join(f"{a} = {n}" for a, n in ALIASES.items())
    add_backbone_arguments(
        p,
        f"descriptor source: {', '.join(available_backbones())} ({short}); default mini (built in)",
        timestep_help="diffusion timestep of the added noise (0-999 of the backbone's scheduler)",
    )
    add_levels_argument(p, "levels to keep: indices (0,1,2,3) or names; default all")
    p.add_argument("--samples", type=int, default=1, help="noise samples averaged")
    add_spacing_argument(p)
    add_device_argument(p)
    add_maisi_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="re-extract even if the store matches")


def timestep_text(t, noise_signal, why: str = "") -> str:
    """``t=155 noise/signal 0.183 (the backbone's default)``; no ratio for a backbone without noise."""
    ns = "" if noise_signal is None else f" noise/signal {float(noise_signal):.3f}"
    return f"t={t}{ns}" + (f" ({why})" if why else "")


def run(args: argparse.Namespace) -> int:
    from ..backbones import backbone_grid_spacing, backbone_levels, get_backbone
    from ..backbones.base import ExtractionSettings, parse_spacing, resolve_device
    from ..backbones.extraction import extract_to_store, grid_at
    from ..backbones.levels import resolve_levels
    from ..backbones.memory import check_memory
    from ..io.store import check_store_destination
    from ..io.volume import read_volume

    # everything that can be checked before reading the scan or loading a model
    check_range(args.samples, "--samples", 1, 64, " (noise samples averaged)")
    if args.timestep is not None:
        check_range(args.timestep, "--timestep", 0, 999)
    level_names, _ = backbone_levels(args.backbone, args.weights, args.random_weights)
    levels = resolve_levels(args.levels, level_names)
    spacing = parse_spacing(args.spacing)
    device = resolve_device(args.device)
    check_store_destination(args.output)

    volume = read_volume(args.image)
    wanted = backbone_grid_spacing(args.backbone, args.weights, args.random_weights) if spacing is None else spacing
    grid = grid_at(volume, wanted)
    check_memory(args.backbone.lower(), grid.shape, device.type, samples=args.samples, image_shape=volume.shape)
    backbone = get_backbone(
        args.backbone, weights=args.weights, random_weights=args.random_weights, **maisi_options(args)
    )
    settings = ExtractionSettings(
        timestep=args.timestep,
        levels=levels,
        seed=args.seed,
        samples=args.samples,
        device=args.device,
        spacing=spacing,
    )
    store, reused = extract_to_store(
        volume, backbone, settings, args.output, progress=tqdm_progress(f"extract {Path(args.image).name}"),
        overwrite=args.overwrite,
    )
    verb = "reused existing" if reused else "wrote"
    print(f"{verb} {store.path} ({', '.join(store.level_names)}; image {tuple(store.image_shape)})")
    print(timestep_text(store.attrs.get("timestep"), store.attrs.get("noise_signal"),
                        "given" if args.timestep is not None else "the backbone's default"))
    print(grid_text(store.extraction_grid, store.image_grid, backbone.name))
    return 0


def grid_text(grid, image, backbone: str) -> str:
    """The line saying which grid the backbone ran on (the scan's own, or resampled to which)."""
    def size(g):
        return f"{'x'.join(map(str, g.shape))} voxels of {'x'.join(f'{s:.2f}' for s in g.spacing)} mm"

    if grid.same_as(image):
        return f"{backbone} ran on the scan's own grid ({size(image)})"
    return (f"{backbone} ran on the scan resampled to {size(grid)} "
            f"(the scan: {size(image)}; --spacing native keeps its grid)")
