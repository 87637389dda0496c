"""The npe2 manifest: valid, installed, and pointing at importable callables."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

REPO = Path(__file__).resolve().parents[1]


def test_manifest_validates_from_the_file():
    pm = npe2.PluginManifest.from_file(REPO / "napari.yaml")
    assert pm.name == "napari-meddift"
    titles = {w.display_name for w in pm.contributions.widgets}
    assert {"Extract descriptors", "Correspondence explorer", "Landmarks", "Feature view (PCA)"} <= titles
    store_reader = next(r for r in pm.contributions.readers if r.command.endswith("read_store"))
    assert store_reader.accepts_directories and "*.zarr" in store_reader.filename_patterns
    assert [s.key for s in pm.contributions.sample_data] == ["demo_pair"]


def test_every_command_imports():
    pm = npe2.PluginManifest.from_file(REPO / "napari.yaml")
    for cmd in pm.contributions.commands:
        module, attr = cmd.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), cmd.id


def test_packaged_manifest_is_the_top_level_one():
    import napari_meddift

    packaged = Path(napari_meddift.__file__).parent / "napari.yaml"
    assert packaged.read_text(encoding="utf-8") == (REPO / "napari.yaml").read_text(encoding="utf-8")


def test_npe2_validate_installed_plugin():
    exe = shutil.which("npe2") or str(Path(sys.executable).with_name("npe2"))
    if not Path(exe).exists():
        pytest.skip("npe2 command not found")
    res = subprocess.run([exe, "validate", "napari-meddift"], capture_output=True, text=True, timeout=120,
                         encoding="utf-8", errors="replace")  # its output has a check mark; the locale may be C
    out = res.stdout + res.stderr
    if "not found" in out.lower() and "napari-meddift" in out:
        pytest.skip("napari-meddift is not installed (pip install -e .)")
    assert res.returncode == 0, out
    assert "valid" in out.lower()
