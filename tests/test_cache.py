"""The cache folder and the one file-name cleaner every generated file goes through."""

from __future__ import annotations

from pathlib import Path

from napari_meddift.io.cache import default_cache_dir, safe_filename


def test_safe_filename_keeps_safe_text_and_replaces_runs():
    assert safe_filename("test-patch_r4") == "test-patch_r4"
    assert safe_filename("mini (random weights)") == "mini_random_weights_"
    assert safe_filename("a/b\\c:d") == "a_b_c_d"
    assert safe_filename("CT scan ü.nii.gz") == "CT_scan_.nii.gz"
    assert safe_filename("", "volume") == "volume" and safe_filename("") == "file"


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDDIFT_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MEDDIFT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "napari-meddift"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "napari-meddift"
