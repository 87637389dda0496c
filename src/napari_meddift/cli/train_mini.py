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
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--spacing", type=float, default=2.5, help="the grid the weights declare (mm)")
    p.add_argument("--spacing-range", type=float, nargs=2, default=(2.0, 3.0), metavar=("LOW", "HIGH"),
                   help="scans are resampled to five spacings over this range (anti-aliased)")
    p.add_argument("--single-spacing", action="store_true",
                   help="train at --spacing only, without anti-aliasing (the mini_v1 recipe)")
    p.add_argument("--jitter", type=float, nargs=2, default=(0.05, 0.03), metavar=("SCALE", "SHIFT"),
                   help="random intensity change x*a+b, a in 1 +- SCALE, b in +- SHIFT (in [-1, 1] units)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="bf16: bfloat16 autocast with fp32 weights (about 2x faster on CPUs with bf16)")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128], metavar="C",
                   help="channels per level, fine to coarse: one descriptor level per entry (mini_v1: 16 32 64)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>.state.pt (same options; --minutes is the whole run's budget)")
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
    from ..training.mini import DEMO_SOURCE, mini_arch, plot_loss, train_mini

    hold_out = tuple(a.hold_out) if a.hold_out is not None else (DEMO_SOURCE,)
    if a.plot:
        from ..io.paths import check_output_file

        check_output_file(a.plot, "--plot")
        if Path(a.plot).suffix.lower() not in (".png", ".pdf", ".svg"):
            from ..errors import MedDiftError

            raise MedDiftError(f"--plot {a.plot}: give a .png, .pdf or .svg name (checked before training)")
    train_mini(a.data, a.out, a.minutes, crop=a.crop, spacing=a.spacing, batch=a.batch, seed=a.seed,
               hold_out=hold_out, progress=not a.quiet, lr=a.lr, max_steps=a.max_steps,
               threads=a.threads, spacing_range=None if a.single_spacing else tuple(a.spacing_range),
               jitter=tuple(a.jitter), precision=a.precision, device=a.device, resume=a.resume,
               arch=mini_arch(a.channels))
    if a.plot:
        plot_loss(Path(a.out).with_suffix(".loss.csv"), a.plot)
    return 0
