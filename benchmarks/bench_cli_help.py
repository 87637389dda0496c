"""How long ``meddift --help`` and every sub-command's ``--help`` take, in fresh interpreters.

    python benchmarks/bench_cli_help.py                     # this checkout's src/, 5 runs each
    python benchmarks/bench_cli_help.py --src OTHER/src     # another checkout (before/after)

Each run is ``python -m napari_meddift.cli [SUB] --help`` in a new process (interpreter start-up
included, as a user sees it); prints the median and the slowest of the runs per command as a
markdown table, and the heavy libraries the parser imported. Figures go to docs/performance.md.
tests/test_cli_help.py checks the behaviour behind the time (no PyTorch, numba, Dask or napari).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numba", "dask", "distributed", "napari", "scipy", "SimpleITK", "zarr", "monai")


def time_command(argv: list[str], env: dict, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "napari_meddift.cli", *argv], env=env, capture_output=True,
                              text=True)
        out.append(time.perf_counter() - t)
        if proc.returncode != 0 or "usage: meddift" not in proc.stdout:
            raise SystemExit(f"{argv}: exit {proc.returncode}\n{proc.stderr}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(REPO / "src"), help="the src/ folder to import napari_meddift from")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": args.src}
    names = subprocess.run([sys.executable, "-c", "from napari_meddift.cli import SUBCOMMANDS as S; "
                            "print(' '.join(c.NAME for c in S))"], env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    heavy = subprocess.run([sys.executable, "-c", "import sys, napari_meddift.cli as c; c.build_parser(); "
                            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    bare = [time_command_python(env) for _ in range(args.runs)]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}, src {args.src}")
    print(f"heavy libraries imported by build_parser(): {heavy or 'none'}")
    print(f"bare `python -c pass`: median {statistics.median(bare):.2f} s\n")
    print("| command | median (s) | slowest (s) |\n|---|---:|---:|")
    for argv in [["--help"]] + [[n, "--help"] for n in names]:
        t = time_command(argv, env, args.runs)
        print(f"| `meddift {' '.join(argv)}` | {statistics.median(t):.2f} | {max(t):.2f} |", flush=True)


def time_command_python(env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
