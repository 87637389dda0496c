"""``meddift --help`` stays light: importing the command line and building its parser (every
sub-command's options included) imports neither PyTorch nor numba nor Dask nor napari.

Checked as behaviour (what lands in ``sys.modules`` of a fresh interpreter), not as a time;
benchmarks/bench_cli_help.py measures the time (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "numba", "dask", "distributed", "napari", "qtpy", "monai", "zarr", "SimpleITK", "scipy")

PROBE = """
import contextlib, io, json, sys
import napari_meddift.cli as cli
parser = cli.build_parser()
seen = {"build": [m for m in HEAVY if m in sys.modules]}
for argv in [["--help"]] + [[c.NAME, "--help"] for c in cli.SUBCOMMANDS]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            cli.main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    assert "usage: meddift" in out.getvalue(), argv
    seen[" ".join(argv)] = [m for m in HEAVY if m in sys.modules]
print(json.dumps(seen))
"""


def test_help_imports_no_heavy_library():
    code = f"HEAVY = {HEAVY!r}\n" + PROBE
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    from napari_meddift.cli import SUBCOMMANDS

    assert set(seen) == {"build", "--help"} | {f"{c.NAME} --help" for c in SUBCOMMANDS}
    assert all(imported == [] for imported in seen.values()), {k: v for k, v in seen.items() if v}


def test_the_probe_would_see_a_heavy_import():
    """The check above is not vacuous: the same probe reports torch once the matcher is imported."""
    code = f"HEAVY = {HEAVY!r}\nimport napari_meddift.matching.matcher\n" + PROBE
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "torch" in seen["build"] and "numba" in seen["build"]
