"""``meddift demo``: the embedded default end to end, in napari or headless with a TRE table."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..io.cache import default_cache_dir

NAME = "demo"
HELP = "open the demo pair in napari (or --headless: print a TRE table)"

#: The methods compared by ``meddift demo --headless``: label -> (backbone, random_weights).
DEMO_METHODS = {"mini": ("mini", False), "mini (random weights)": ("mini", True)}


def demo_store_path(cache_dir: Path, name: str, random_weights: bool = False) -> Path:
    """Where the demo store of ``name`` ("inhale"/"exhale") is cached."""
    return Path(cache_dir) / f"demo-{'mini-random' if random_weights else 'mini'}-{name}.zarr"


def extract_demo_stores(inhale, exhale, cache_dir: Path, random_weights: bool = False, progress=None):
    """Descriptor stores of the demo pair from mini, cached: a second run reuses them at once.
    ``progress(done, total, message)`` sees both extractions as one count (inhale, then exhale)."""
    from ..backbones import get_backbone
    from ..backbones.base import ExtractionSettings
    from ..backbones.extraction import extract_to_store

    if progress is not None:
        progress(0, 2, "inhale: loading the mini backbone")
    backbone = get_backbone("mini", random_weights=random_weights)
    settings = ExtractionSettings(seed=0, samples=1, device="cpu")  # the weights' own timestep
    stores = []
    for k, (name, volume) in enumerate((("inhale", inhale), ("exhale", exhale))):
        step = None
        if progress is not None:
            def step(done, total, message="", k=k, name=name):
                total = max(int(total), 1)
                progress(k * total + min(int(done), total), 2 * total, f"{name}: {message}")
        store, _ = extract_to_store(volume, backbone, settings, demo_store_path(cache_dir, name, random_weights),
                                    progress=step)
        stores.append(store)
    return stores[0], stores[1]


#: the demo's window: its known breathing motion moves no voxel more than 16.8 mm (demo.json), so
#: 20 mm holds every true match (8 voxels of its 2.5 mm grid, the window of its published figures)
DEMO_RADIUS_MM = 20.0


def headless_report(cache_dir: Path, radius) -> dict:
    """Extract, match the demo landmarks and return TRE summaries for identity and each method."""
    from ..synthetic.demo import load_demo_pair
    from ..evaluation.metrics import summarize, tre_mm
    from ..matching import Matcher

    inhale, exhale, src_pts, tgt_pts = load_demo_pair()
    spacing = exhale.spacing
    from ..matching.window import radius_tag

    report: dict = {"n_landmarks": int(len(src_pts)), "radius": radius_tag(radius), "methods": {}}
    report["methods"]["identity"] = summarize(tre_mm(src_pts, tgt_pts, spacing))
    query = np.rint(src_pts).astype(int)
    for label, (_, random_weights) in DEMO_METHODS.items():
        t0 = time.perf_counter()
        src_store, tgt_store = extract_demo_stores(inhale, exhale, cache_dir, random_weights)
        t1 = time.perf_counter()
        table = Matcher.from_stores(src_store, tgt_store).match_points(query, radius)
        t2 = time.perf_counter()
        summary = summarize(tre_mm(table.target_zyx, tgt_pts, spacing))
        summary.update(extract_s=round(t1 - t0, 2), match_s=round(t2 - t1, 2))
        report["methods"][label] = summary
    return report


def run_demo(headless: bool = False, as_json: bool = False, cache_dir=None, radius=None) -> int:
    """``radius``: a ``Radius`` (default ``DEMO_RADIUS_MM`` mm) or voxels."""
    from ..matching.window import Radius, voxel_radius

    radius = Radius.mm(DEMO_RADIUS_MM) if radius is None else radius
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if headless:
        report = headless_report(cache, radius)
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            from ..evaluation.metrics import format_summary_table

            from ..synthetic.demo import SPACING_MM

            vox = voxel_radius(radius, (SPACING_MM,) * 3)
            print(f"demo pair: {report['n_landmarks']} landmarks, window radius {radius} = {vox} voxels (z, y, x)")
            print(format_summary_table(report["methods"]))
        return 0

    from ..synthetic.demo import load_demo_pair

    try:
        import napari
    except ImportError:  # pragma: no cover - depends on the install
        print("meddift demo needs napari: from the clone, pip install -e \".[all]\" (or use --headless)",
              file=sys.stderr)
        return 2
    from .._qt.app import launch_demo

    inhale, exhale, src_pts, tgt_pts = load_demo_pair()
    cached = all(demo_store_path(cache, name).exists() for name in ("inhale", "exhale"))

    def prepare(progress):  # on a worker: the window is already open
        from ..explorer import FieldTruth
        from ..synthetic.demo import load_demo_field, load_demo_lungs

        src_store, tgt_store = extract_demo_stores(inhale, exhale, cache, progress=progress)
        truth = FieldTruth(load_demo_field().u_voxels())  # the known breathing motion: truth at every voxel
        return src_store, tgt_store, truth, load_demo_lungs()[1]

    if cached:
        print(f"meddift demo: opening the window; descriptors cached in {cache}", flush=True)
    else:
        print("meddift demo: window open; extracting the demo descriptors in the background (once, about "
              "15 s on an idle 2-core CPU, minutes on a busy one; progress in the activity dock); "
              f"the explorer connects itself when they are ready (cache: {cache})", flush=True)
    viewer, task = launch_demo(inhale, exhale, (src_pts, tgt_pts), prepare, radius=radius,
                               note=lambda text: print(text, flush=True))
    napari.run()
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--headless", action="store_true", help="no window: extract, match, print TRE")
    p.add_argument("--json", action="store_true", help="with --headless: JSON output")
    p.add_argument("--cache", help="folder for descriptor stores (default: the user cache)")
    from ..matching.window import parse_radius

    p.add_argument("--radius", type=parse_radius, metavar="R",
                   help=f"search window half-width: millimetres like {DEMO_RADIUS_MM:g}mm (default; the demo's "
                   "largest displacement is 16.8 mm) or a bare number of voxels (2.5 mm each)")


def display_missing() -> bool:
    """True on Linux without an X11/Wayland display and without an offscreen Qt platform."""
    if not sys.platform.startswith("linux"):
        return False
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return False
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0]
    return platform not in ("offscreen", "minimal", "vnc", "eglfs", "linuxfb")


def run(args: argparse.Namespace) -> int:
    from ..errors import MedDiftError
    from ..io.paths import usable_folder
    if not args.headless and display_missing():
        raise MedDiftError(
            "no display to open napari on ($DISPLAY is not set); run `meddift demo --headless` for the "
            "TRE table without a window, or start it from a desktop session (or under xvfb-run)"
        )
    args.cache = usable_folder(args.cache if args.cache else default_cache_dir(), "--cache folder")
    return run_demo(headless=args.headless, as_json=args.json, cache_dir=args.cache, radius=args.radius)
