"""The public `meddift` contract, run on a real small CT (tests/data) with mini at random weights."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from napari_meddift.backbones.levels import resolve_levels
from napari_meddift.backbones.mini import DATA_DIR
from napari_meddift.cli import SUBCOMMANDS, main
from napari_meddift.errors import MedDiftError
from napari_meddift.io.store import open_store


@pytest.fixture(scope="module")
def ct(small_data):
    return small_data / "ct" / "lung_elastix_small.nii.gz"


@pytest.fixture(scope="module")
def store_path(ct, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "lung.zarr"
    assert main(["extract", str(ct), "-o", str(out), "--random-weights"]) == 0
    return out


def test_extract_writes_a_complete_store(store_path, ct):
    store = open_store(store_path)
    assert store.image_shape == (64, 78, 57)  # SOURCES.md: 57x78x64 (x,y,z)
    # random weights run at the default weights' timestep and levels (their JSON)
    meta = json.loads((DATA_DIR / "mini_v2.json").read_text(encoding="utf-8"))
    assert store.attrs["timestep"] == meta["default_timestep"]
    assert list(store.level_names) == meta["default_levels"]


def test_extract_again_reuses(store_path, ct, capsys):
    """The default timestep is resolved before the cache key: naming it gives the same store."""
    t = open_store(store_path).attrs["timestep"]
    assert main(["extract", str(ct), "-o", str(store_path), "--random-weights", "--timestep", str(t)]) == 0
    assert "reused" in capsys.readouterr().out


def test_match_self_finds_same_voxels_and_evaluate_reports_zero(store_path, tmp_path, capsys):
    pts = tmp_path / "pts.csv"
    xyz = np.array([[20, 30, 40], [10, 50, 20], [40, 60, 30]])
    np.savetxt(pts, xyz, delimiter=",", fmt="%d")
    out = tmp_path / "out.csv"
    assert main(["match", str(store_path), str(store_path), "--points", str(pts), "-o", str(out),
                 "--radius", "4"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r for r in rows[0]] == ["x", "y", "z", "score", "ambiguity", "fb_distance", "consistent"]
    got = np.array([[float(r["x"]), float(r["y"]), float(r["z"])] for r in rows])
    np.testing.assert_array_equal(got, xyz)  # a volume matched to itself: every point stays
    assert all(abs(float(r["score"]) - 1.0) < 1e-5 for r in rows)
    assert all(r["consistent"] == "1" for r in rows)
    capsys.readouterr()
    assert main(["evaluate", str(out), str(pts), "--spacing", "2.7,2.7,5.0", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 3 and summary["mean"] == 0.0


def test_evaluate_uses_spacing_in_xyz_order(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    np.savetxt(a, [[0, 0, 0], [1, 1, 1]], delimiter=",", fmt="%d")
    np.savetxt(b, [[1, 0, 0], [1, 1, 3]], delimiter=",", fmt="%d")
    assert main(["evaluate", str(a), str(b), "--spacing", "2,3,5", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # first pair differs by one voxel in x (2 mm), second by two in z (10 mm)
    assert summary["mean"] == pytest.approx(6.0)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["extract", "/nonexistent/scan.nii.gz", "-o", "x.zarr", "--random-weights"], "scan.nii.gz"),
        (["match", "/nonexistent/a.zarr", "/nonexistent/b.zarr", "--points", "p.csv", "-o", "o.csv"], "a.zarr"),
        (["evaluate", "a.csv", "b.csv", "--spacing", "1,2"], "--spacing"),
        # the sub-commands that used to parse and report on their own follow the same contract
        (["train-mini", "--data", "/nonexistent/data", "--out", "w.pt", "--quiet"], "no ct/ folder"),
        (["evaluate-l2r", "--root", "/nonexistent/l2r", "--backbone", "identity"], "/nonexistent/l2r"),
        (["build-demo", "--ct", "/nonexistent/ct.nii.gz", "--out", "demo"], "ct.nii.gz"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("meddift: error:") and needle in err[0]


def test_maisi_without_weights_names_the_missing_files(ct, tmp_path, capsys):
    assert main(["extract", str(ct), "-o", str(tmp_path / "m.zarr"), "--backbone", "maisi",
                 "--weights", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "diff_unet_3d_ddpm.pt" in err and "--random-weights" in err
    assert not (tmp_path / "m.zarr").exists()


@pytest.mark.parametrize("name", [c.NAME for c in SUBCOMMANDS])
def test_every_sub_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: meddift {name}")


def test_backbone_mind_is_the_short_name_and_help_lists_backbones(ct, tmp_path, capsys):
    out = tmp_path / "mind.zarr"
    assert main(["extract", str(ct), "-o", str(out), "--backbone", "mind"]) == 0
    assert open_store(out).attrs["backbone"] == "mind-ssc"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    sub = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in ("maisi", "mini", "mind-ssc", "mind ="):
        assert name in top and name in sub
    assert main(["extract", str(ct), "-o", str(tmp_path / "x.zarr"), "--backbone", "nope"]) == 2
    assert "available: maisi, mind-ssc, mini" in capsys.readouterr().err


def test_resolve_levels():
    names = ("up0", "up1", "up2", "up3")
    assert resolve_levels("0,3", names) == ("up0", "up3")
    assert resolve_levels("up2,1", names) == ("up2", "up1")
    assert resolve_levels(None, names) is None
    with pytest.raises(MedDiftError, match="out of range"):
        resolve_levels("7", names)


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "napari_meddift.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "napari-meddift" in r.stdout
