"""``meddift report`` on the demo pair: stores extracted per timestep into the cache (a rerun
reuses them), the CSV/JSON/PNG written, a cell recomputed the slow way from the cached stores."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_meddift.backbones import backbone_levels
from napari_meddift.cli import main
from napari_meddift.evaluation.metrics import summarize, tre_mm
from napari_meddift.io.landmarks import read_points
from napari_meddift.io.store import open_store
from napari_meddift.matching import Matcher
from napari_meddift.synthetic.demo import DEMO_DIR, FILES


def _demo(name):
    return str(DEMO_DIR / FILES[name])


@pytest.mark.slow
def test_report_on_the_demo_pair(tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["report", _demo("inhale"), _demo("exhale"), "--points", _demo("src"), "--truth", _demo("tgt"),
            "--timesteps", "0,20", "--radius", "8", "--cache", str(cache), "--mask", _demo("lungs_inhale"),
            "-o", str(out)]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "best by tre_mean_mm:" in said and (out / "report.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(out / "report.csv")))
    # mini's stores hold its default levels, up0..up2: each level, each pair and the fused default
    # (all three), 2 timesteps, 3 regions
    assert backbone_levels("mini")[1] == ("up0", "up1", "up2")
    configurations = ["up0", "up1", "up2", "fused (default)", "up0+up1", "up0+up2", "up1+up2"]
    assert sorted({r["configuration"] for r in rows}) == sorted(configurations)
    assert len(rows) == 7 * 2 * 3
    doc = json.loads((out / "report.json").read_text())
    assert doc["meta"]["n_points"] == 300 and doc["meta"]["timesteps"] == [0, 20]

    # the cell (up1, t=20, window 8, all landmarks), recomputed the slow way from its own stores
    row = next(r for r in rows if (r["configuration"], r["timestep"], r["region"]) == ("up1", "20", "all"))
    src, tgt = open_store(row["source_store"]), open_store(row["target_store"])
    assert src.attrs["timestep"] == 20 and src.attrs["backbone"] == "mini"
    assert row["weights_hash"] == src.attrs["weights_hash"] and row["radius"] == "8"
    pts, truth = read_points(_demo("src")), read_points(_demo("tgt"))
    table = Matcher.from_stores(src, tgt, levels=["up1"]).match_points(np.rint(pts).astype(int), 8)
    err = tre_mm(table.target_zyx, truth, tgt.spacing)
    s = summarize(err)
    assert float(row["tre_mean_mm"]) == s["mean"] and float(row["tre_p95_mm"]) == s["p95"]
    assert float(row["within_2mm_pct"]) == pytest.approx(100 * np.mean(err <= 2.0), abs=1e-12)
    assert float(row["fb_consistent_pct"]) == pytest.approx(100 * np.mean(table.consistent), abs=1e-12)
    assert float(row["ambiguity_mean"]) == pytest.approx(np.nanmean(table.ambiguity.astype(float)), rel=1e-12)
    # every demo landmark lies in the inhale lungs: the inside region is all of them
    inside = next(r for r in rows if (r["configuration"], r["timestep"], r["region"]) == ("up1", "20", "inside mask"))
    assert inside["n"] == "300" and inside["tre_mean_mm"] == row["tre_mean_mm"]

    # a rerun reuses the four cached stores (none written again) and gives the same table
    stores = {p.name: open_store(p).attrs["created"] for p in cache.glob("*.zarr")}
    assert len(stores) == 4
    assert main(argv[:-1] + [str(tmp_path / "again")]) == 0
    assert {p.name: open_store(p).attrs["created"] for p in cache.glob("*.zarr")} == stores
    assert list(csv.DictReader(open(tmp_path / "again" / "report.csv"))) == rows

    # the stores themselves (their own timestep only), with a user fusion and no truth
    assert main(["report", row["source_store"], row["target_store"], "--points", _demo("src"),
                 "--fusion", "up0:3+up1", "--radius", "8", "-o", str(tmp_path / "stores")]) == 0
    rows2 = list(csv.DictReader(open(tmp_path / "stores" / "report.csv")))
    assert [r["configuration"] for r in rows2] == [*configurations, "up0:3+up1"]
    assert rows2[1]["fb_consistent_pct"] == row["fb_consistent_pct"] and rows2[1]["tre_mean_mm"] == ""


def test_report_user_errors_are_one_line(tmp_path, capsys):
    pts = _demo("src")
    cases = [
        (["report", _demo("inhale"), str(tmp_path / "x.zarr"), "--points", pts, "-o", str(tmp_path / "o")],
         "both as images or both as descriptor stores"),
        (["report", _demo("inhale"), _demo("exhale"), "--points", pts, "--truth", str(tmp_path / "none.csv"),
          "-o", str(tmp_path / "o")], "no such file"),
        (["report", _demo("inhale"), _demo("exhale"), "--points", pts, "--timesteps", "0,2000",
          "-o", str(tmp_path / "o")], "outside 0..999"),
        (["report", _demo("inhale"), _demo("exhale"), "--points", pts, "--radius", "-1", "-o", str(tmp_path / "o")],
         "--radius must be"),
    ]
    (tmp_path / "x.zarr").mkdir()
    for argv, msg in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("meddift: error:") and msg in err[0], err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("**/*.zarr/zarr.json"))
