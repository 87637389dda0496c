"""``meddift train-mini --data DIR --out W.pt``: train the built-in mini backbone (docs/model-card.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "train-mini"
HELP = "train the built-in mini diffusion model (see docs/model-card.md)"
DESCRIPTION = "Train the small image-space diffusion UNet of the mini backbone."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="shared data folder (with ct/)")
    p.add_argument("--out", required=True, help="output weights (.pt); JSON and loss CSV go beside it")
    p.add_argument("--minutes", type=float, default=45.0)
    p.add_argument("--crop", type=int, default=48)
    p.add_argument("--spacing", type=float, default=2.5)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    # default (None): the demo's source scan, resolved in run() (training.mini imports PyTorch)
    p.add_argument("--hold-out", nargs="*", default=None, help="scans kept out of training (default: the demo's)")
    p.add_argument("--plot", default=None, help="also write the loss curve to this PNG")
    p.add_argument("--quiet", action="store_true")


def run(a: argparse.Namespace) -> int:
    from ..training.mini import DEMO_SOURCE, plot_loss, train_mini

    hold_out = tuple(a.hold_out) if a.hold_out is not None else (DEMO_SOURCE,)
    if a.plot:
        from ..io.paths import check_output_file

        check_output_file(a.plot, "--plot")
        if Path(a.plot).suffix.lower() not in (".png", ".pdf", ".svg"):
            from ..errors import MedDiftError

            raise MedDiftError(f"--plot {a.plot}: give a .png, .pdf or .svg name (checked before training)")
    train_mini(a.data, a.out, a.minutes, crop=a.crop, spacing=a.spacing, batch=a.batch, seed=a.seed,
               hold_out=hold_out, progress=not a.quiet, lr=a.lr, max_steps=a.max_steps,
               threads=a.threads)
    if a.plot:
        plot_loss(Path(a.out).with_suffix(".loss.csv"), a.plot)
    return 0
