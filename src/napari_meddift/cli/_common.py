"""What every sub-command shares: the error-to-exit mapping, argument groups and the progress bar."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from ..progress import ProgressCallback
from ..errors import CancelledError, MedDiftError

#: exit status of a user-fixable problem (``MedDiftError``), the same as argparse's usage errors
EXIT_ERROR = 2
#: exit status of a cancelled or interrupted run (128 + SIGINT)
EXIT_CANCELLED = 130


class UsageError(MedDiftError):
    """A command line that argparse refuses (unknown option, missing or mistyped value)."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: they raise UsageError (exit 2 via :func:`run_guarded`)
    instead of printing the usage block. Sub-command parsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        sub = self.prog.removeprefix("meddift").strip()
        raise UsageError(f"{sub + ': ' if sub else ''}{message} (see `{self.prog} --help`)")


def one_line(text: object) -> str:
    """A message folded onto one line (multi-line library texts included)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def run_guarded(run: Callable[[], int | None]) -> int:
    """Run a sub-command and map what escapes it to an exit status and one line on stderr.

    ``MedDiftError`` -> 2 and ``meddift: error: <message>`` (folded onto one line); CPU and CUDA
    out-of-memory -> 2 with the ways out; other ``OSError`` (disk full, permissions) -> 2 naming the
    file; ``CancelledError`` and Ctrl-C -> 130. Anything else is a bug and keeps its traceback.
    """
    from ..errors import is_out_of_memory, out_of_memory_message

    try:
        return int(run() or 0)
    except CancelledError as exc:
        print(f"meddift: cancelled: {one_line(exc)}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("meddift: interrupted; nothing half-written was kept", file=sys.stderr)
        return EXIT_CANCELLED
    except MedDiftError as exc:
        print(f"meddift: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # out of memory and file-system failures are the user's to fix
        if is_out_of_memory(exc):
            print(f"meddift: error: {out_of_memory_message(exc)}", file=sys.stderr)
            return EXIT_ERROR
        if isinstance(exc, OSError):
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            print(f"meddift: error: {where}{one_line(exc.strerror or exc)}; check the path, free disk space "
                  "and permissions", file=sys.stderr)
            return EXIT_ERROR
        raise


def _num(v) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def check_range(value, name: str, low=None, high=None, what: str = "") -> None:
    """MedDiftError unless ``low <= value <= high`` (either bound optional), before any work."""
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f">= {_num(low)}" if high is None else f"<= {_num(high)}" if low is None
                  else f"in [{_num(low)}, {_num(high)}]")
        raise MedDiftError(f"{name} must be {bounds}{what}, got {value}")


#: the bound of every numeric option, by its argparse ``dest`` (docs/cli.md, "Bounds"); checked by
#: :func:`check_bounds` for every sub-command before its work starts. ``--timestep`` and
#: ``--radius`` are checked by their commands (their range depends on the backbone / image).
BOUNDS: dict[str, tuple[float, float, str]] = {
    "seed": (0, 2**32 - 1, ""),
    "samples": (1, 64, " (noise samples averaged)"),
    "workers": (1, 256, " worker processes"),
    "threads": (1, 256, " threads"),
    "retries": (0, 10, " extra attempts"),
    "grid_spacing": (1, 32, " voxels"),
    "search_radius": (1, 64, " voxels"),
    "search_step": (1, 16, " voxels"),
    "smoothness": (0, 1e4, ""),
    "iterations": (0, 5000, " Adam steps"),
    "minutes": (0.01, 7 * 24 * 60, " minutes"),
    "crop": (16, 512, " voxels"),
    "spacing": (0.1, 20, " mm"),
    "batch": (1, 256, " crops"),
    "lr": (1e-8, 1.0, ""),
    "max_steps": (1, 10**7, " steps"),
}


#: options whose sub-command checks the low end itself, with its own messages (train-mini's
#: ``check_training_args``: positive, crop a multiple of the network's factor); only their upper
#: bound is checked here
OWN_LOWER_BOUNDS = {"train-mini": frozenset({"minutes", "crop", "spacing", "batch", "lr", "max_steps", "threads"})}


def check_bounds(args: argparse.Namespace) -> None:
    """MedDiftError for the first numeric option outside :data:`BOUNDS` (NaN and inf included)."""
    import math

    own = OWN_LOWER_BOUNDS.get(getattr(args, "command", None) or "", frozenset())
    for dest, (low, high, unit) in BOUNDS.items():
        value = getattr(args, dest, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if dest in own and not (math.isfinite(value) and value > high):
            continue
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise MedDiftError(f"{flag} must be a finite number in [{_num(low)}, {_num(high)}]{unit}, got {value}")
        check_range(value, flag, low, high, unit)


def tqdm_progress(desc: str, unit: str = "step") -> ProgressCallback:
    """A core progress callback ``progress(done, total, message)`` drawn as a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    bar = None

    def progress(done: int, total: int, message: str = "") -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)
        bar.total = total
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()

    return progress


def parse_triplet(text: str, what: str) -> tuple[float, float, float]:
    """``"1.75,1.25,1.75"`` -> three floats; a MedDiftError naming ``what`` otherwise."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise MedDiftError(f"{what} must be three comma-separated numbers like 1.75,1.25,1.75, got {text!r}")
    return values  # type: ignore[return-value]


def add_backbone_arguments(p: argparse.ArgumentParser, backbone_help: str, timestep_help: str | None = None) -> None:
    """--backbone, --weights | --random-weights, --timestep, --seed."""
    p.add_argument("--backbone", default="mini", help=backbone_help)
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", help="folder with the backbone's checkpoint files (MAISI)")
    w.add_argument("--random-weights", action="store_true", help="same architecture at seeded random weights")
    p.add_argument("--timestep", type=int, default=None,
                   help=(timestep_help or "diffusion timestep") + "; default: the backbone's own: mini, the one its "
                   "weights record (chosen on validation pairs; 20 where they record none); MAISI, the noise/signal "
                   "of DDPM t=20 (DDPM 20, rectified flow 155)")
    p.add_argument("--seed", type=int, default=0)


def add_spacing_argument(p: argparse.ArgumentParser) -> None:
    """``--spacing MM|native``: the grid the backbone runs on (default: the backbone's own)."""
    p.add_argument("--spacing", default=None, metavar="MM|native",
                   help="voxel spacing the backbone runs at, in mm (e.g. 2.5 or 2.5mm), or 'native' for the "
                        "scan's own grid; default: the backbone's own (mini: the 2.5 mm it was trained at; "
                        "MAISI and MIND-SSC: native). Positions stay in the scan's own voxels")


def add_maisi_arguments(p: argparse.ArgumentParser) -> None:
    """--region, --variant, --latent: what only MAISI takes (see :func:`maisi_options`)."""
    p.add_argument("--region", choices=["head", "chest", "abdomen", "lower"],
                   help="MAISI DDPM body-region conditioning (default chest)")
    p.add_argument("--variant", choices=["auto", "ddpm", "rflow"],
                   help="MAISI UNet when the folder holds several (default auto: DDPM first); with "
                        "--random-weights the architecture")
    p.add_argument("--latent", choices=["mean", "sample"],
                   help="MAISI latent: posterior mean (default, deterministic) or a seeded sample")


def maisi_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``get_backbone`` from :func:`add_maisi_arguments`' flags; a
    MedDiftError when they are given for another backbone."""
    given = {
        k: v
        for k, v in (("body_region", args.region), ("variant", args.variant), ("latent", args.latent))
        if v is not None
    }
    if given and str(args.backbone).lower() != "maisi":
        flags = ", ".join("--" + {"body_region": "region"}.get(k, k) for k in given)
        raise MedDiftError(f"{flags} apply to --backbone maisi only")
    return given


def add_levels_argument(p: argparse.ArgumentParser, help: str) -> None:
    """--levels: indices or names, resolved by :func:`napari_meddift.backbones.levels.resolve_levels`."""
    p.add_argument("--levels", help=help)


def add_search_arguments(p: argparse.ArgumentParser, global_help: str, radius_help: str = "") -> None:
    """--radius R | --global (``global_search``): the matching search window; R is millimetres
    (``25mm``) or a bare number of voxels; the default is ``DEFAULT_RADIUS_MM`` (see
    :func:`search_radius`)."""
    from ..matching.window import DEFAULT_RADIUS_MM, parse_radius

    s = p.add_mutually_exclusive_group()
    s.add_argument("--radius", type=parse_radius, default=None, metavar="R",
                   help=(radius_help + "; " if radius_help else "")
                   + f"half-width of the search window: millimetres like {DEFAULT_RADIUS_MM:g}mm (per axis "
                   "ceil(R / spacing) voxels), or a bare number of voxels on every axis; "
                   f"default {DEFAULT_RADIUS_MM:g}mm")
    s.add_argument("--global", dest="global_search", action="store_true", help=global_help)


def search_radius(args: argparse.Namespace):
    """The window of :func:`add_search_arguments`' flags: None for ``--global``, else a
    ``Radius`` (``--radius`` or the default ``DEFAULT_RADIUS_MM`` mm)."""
    from ..matching.window import DEFAULT_RADIUS_MM, Radius

    if getattr(args, "global_search", False):
        return None
    return args.radius if args.radius is not None else Radius.mm(DEFAULT_RADIUS_MM)


def window_text(radius, spacing) -> str:
    """``40 mm = (16, 64, 58) voxels (z, y, x)`` for a radius on a grid; ``global`` for None."""
    from ..matching.window import voxel_radius

    if radius is None:
        return "global (the whole target)"
    return f"{radius} = {voxel_radius(radius, spacing)} voxels (z, y, x)"


def add_allow_mixed_argument(p: argparse.ArgumentParser) -> None:
    """--allow-mixed: compare stores of different backbones, weights or settings anyway."""
    p.add_argument("--allow-mixed", action="store_true",
                   help="compare stores extracted with different backbones, weights, timesteps or preprocessing "
                        "(refused otherwise: their descriptors are not comparable)")


def add_device_argument(p: argparse.ArgumentParser, default: str = "auto", auto: bool = True) -> None:
    """--device auto|cpu|cuda (without ``auto`` where the command has no default device)."""
    p.add_argument("--device", default=default, choices=(["auto"] if auto else []) + ["cpu", "cuda"])
