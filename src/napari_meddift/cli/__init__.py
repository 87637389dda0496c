"""The ``meddift`` command: extract descriptor stores, match points, evaluate, run the demo.

One module per sub-command (``NAME``, ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``);
:mod:`._common` holds the shared argument groups, the progress bar and the single mapping of
errors to exit codes: every user-fixable problem ends in one ``meddift: error: ...`` line on
stderr and exit status 2. The contract of the sub-commands is documented in docs/cli.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import (build_demo, check, demo, evaluate, evaluate_l2r, extract, extract_many, match, register, report,
               train_mini)
from ._common import Parser, check_bounds, run_guarded

#: the sub-commands in the order ``meddift --help`` lists them; add a new one here
SUBCOMMANDS = (extract, extract_many, match, register, evaluate, report, check, demo, train_mini, evaluate_l2r,
               build_demo)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    from ..backbones import ALIASES, available_backbones

    short = ", ".join(f"{a} = {n}" for a, n in ALIASES.items())
    p = Parser(
        prog="meddift", description="Training-free 3D correspondence from diffusion features (MedDIFT).",
        epilog=f"backbones (extract --backbone NAME): {', '.join(available_backbones())} ({short})",
    )
    p.add_argument("--version", action="version", version=f"napari-meddift {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        sp = sub.add_parser(command.NAME, help=command.HELP, description=getattr(command, "DESCRIPTION", None))
        command.add_arguments(sp)
        sp.set_defaults(func=command.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``meddift``: parse ``argv`` (default ``sys.argv[1:]``), run, return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_guarded(lambda: _run(argv))


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)  # usage errors are one line too (Parser.error)
    check_bounds(args)  # every numeric option within its documented bound, before any work
    return args.func(args)


__all__ = ["SUBCOMMANDS", "build_parser", "main"]
