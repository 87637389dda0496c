"""The feature-quality report (evaluation/report.py): every cell equals an independent run of the
matcher and of evaluation.metrics for that configuration; the configuration list; noise/signal."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_meddift.errors import MedDiftError
from napari_meddift.evaluation.metrics import summarize, tre_mm
from napari_meddift.evaluation.report import (
    COLUMNS, FUSED, configurations, feature_report, noise_signal, pairs_by_timestep, parse_fusion,
)
from napari_meddift.io.store import open_store, write_store
from napari_meddift.matching import Matcher

SHAPE = (24, 24, 24)
SHIFT = np.array([1, -2, 2])  # target voxel = source voxel + SHIFT
SPACING = (2.0, 1.5, 1.0)


def _smooth(rng, c, shape, sigma):
    return np.stack([gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(c)]).astype(np.float32)


def _pair(tmp_path, t: int, seed: int = 0):
    """A source/target store pair at timestep t: target = source shifted by SHIFT, plus noise that
    grows with t; levels up0 (native), up1 (half resolution), up2 (quarter)."""
    rng = np.random.default_rng(seed)
    base = {"up0": _smooth(rng, 6, SHAPE, 1.5), "up1": _smooth(rng, 8, (12, 12, 12), 1.0),
            "up2": _smooth(rng, 4, (6, 6, 6), 0.7)}
    noise = np.random.default_rng(100 + t)
    src, tgt = {}, {}
    for name, arr in base.items():
        f = 24 // arr.shape[1]
        tgt_arr = arr.copy()
        if f == 1:
            tgt_arr = np.roll(arr, tuple(SHIFT), axis=(1, 2, 3))
        src[name] = arr + 0.02 * t / 50 * noise.standard_normal(arr.shape).astype(np.float32)
        tgt[name] = tgt_arr + 0.02 * t / 50 * noise.standard_normal(arr.shape).astype(np.float32)
    attrs = {"image_shape": list(SHAPE), "spacing": list(SPACING), "backbone": "mini", "weights_hash": "abc",
             "timestep": t}
    s = write_store(tmp_path / f"src-t{t}.zarr", src, attrs, dtype="float32")
    g = write_store(tmp_path / f"tgt-t{t}.zarr", tgt, attrs, dtype="float32")
    return open_store(s.path), open_store(g.path)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    return pairs_by_timestep([_pair(d, 0), _pair(d, 50)])


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(3)
    src = rng.integers(4, 20, size=(25, 3)).astype(float)
    return src, src + SHIFT + rng.normal(0, 0.3, size=src.shape)  # truth: sub-voxel, as landmarks are


@pytest.fixture(scope="module")
def report(pairs, points):
    mask = np.zeros(SHAPE, bool)
    mask[:12] = True
    return feature_report(pairs, points[0], points[1], fusions=["up0:2+up2"], radii=(3, None), mask=mask)


def _independent(pairs, config_levels, weights, t, radius, src, truth, sel=None):
    """The slow way: a fresh matcher for this configuration alone, then evaluation.metrics."""
    s, g = pairs[t]
    table = Matcher.from_stores(s, g, levels=config_levels, weights=weights).match_points(
        np.rint(src).astype(int), radius, exclusion=2, fb_threshold=1.5)
    sel = np.ones(len(src), bool) if sel is None else sel
    err = tre_mm(table.target_zyx[sel], truth[sel], SPACING)
    summ = summarize(err)
    amb = table.ambiguity[sel].astype(float)
    return table, {
        "n": int(sel.sum()), "tre_mean_mm": summ["mean"], "tre_median_mm": summ["median"], "tre_p95_mm": summ["p95"],
        "within_2mm_pct": 100.0 * np.count_nonzero(err <= 2.0) / sel.sum(),
        "fb_consistent_pct": 100.0 * np.count_nonzero(table.fb_distance[sel] <= 1.5) / sel.sum(),
        "fb_mean_vox": float(np.mean(table.fb_distance[sel].astype(float))),
        "ambiguity_mean": float(np.nanmean(amb)) if np.isfinite(amb).any() else math.nan,
    }


@pytest.mark.parametrize("name,levels,weights,t,radius", [
    ("up1", ("up1",), None, 0, 3),
    (FUSED, ("up0", "up1", "up2"), None, 50, 3),
    ("up0+up2", ("up0", "up2"), None, 0, None),
    ("up0:2+up2", ("up0", "up2"), {"up0": 2.0, "up2": 1.0}, 50, 3),
])
def test_cells_equal_independent_runs(report, pairs, points, name, levels, weights, t, radius):
    src, truth = points
    table, want = _independent(pairs, levels, weights, t, radius, src, truth)
    np.testing.assert_array_equal(report.matches[(name, t, radius)].target_zyx, table.target_zyx)
    row = report.cell(name, t, radius)
    for key, value in want.items():
        assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-12, nan_ok=True), key
    # a region cell: the landmarks whose source voxel lies in the mask (z < 12)
    inside = np.rint(src[:, 0]) < 12
    _, want_in = _independent(pairs, levels, weights, t, radius, src, truth, inside)
    row_in = report.cell(name, t, radius, "inside mask")
    for key, value in want_in.items():
        assert row_in[key] == pytest.approx(value, rel=1e-12, abs=1e-12, nan_ok=True), key
    assert row["levels"] == "+".join(levels) and row["timestep"] == t
    assert row["radius"] == ("global" if radius is None else radius)
    assert row["backbone"] == "mini" and row["weights_hash"] == "abc"


def test_the_fused_features_find_the_shift(report):
    """Not only equal to the matcher: the synthetic shift is found (t=0, window), so the cells
    carry information (a report of NaNs or zeros would pass the equality test too)."""
    row = report.cell("up0", 0, 3)  # only up0 carries the shift (the coarser levels are not moved)
    assert row["within_2mm_pct"] >= 90 and row["fb_consistent_pct"] >= 90
    assert report.cell("up2", 0, 3)["tre_mean_mm"] > 2 * row["tre_mean_mm"]
    assert report.cell("up0", 50, 3)["tre_mean_mm"] >= row["tre_mean_mm"]  # noise does not help


def test_table_shape_and_files(report, tmp_path):
    names = [c.name for c in report.configurations]
    assert names == ["up0", "up1", "up2", FUSED, "up0+up1", "up0+up2", "up1+up2", "up0:2+up2"]
    assert report.regions == ["all", "inside mask", "outside mask"]
    assert len(report.rows) == len(names) * 2 * 2 * 3  # configurations x timesteps x searches x regions
    inside = report.cell("up0", 0, 3, "inside mask")["n"]
    assert inside + report.cell("up0", 0, 3, "outside mask")["n"] == 25 and 0 < inside < 25
    rows = list(csv.DictReader(open(report.write_csv(tmp_path / "r.csv"))))
    assert tuple(rows[0]) == COLUMNS and len(rows) == len(report.rows)
    assert float(rows[0]["tre_mean_mm"]) == report.rows[0]["tre_mean_mm"]  # repr: no digits lost
    doc = json.loads(report.write_json(tmp_path / "r.json").read_text())
    assert doc["rows"][5]["weights"] == report.rows[5]["weights"] and doc["meta"]["timesteps"] == [0, 50]
    grid = report.grid("tre_mean_mm", 3)
    assert grid.shape == (len(names), 2) and grid[3, 1] == report.cell(FUSED, 50, 3)["tre_mean_mm"]
    best = report.best("tre_mean_mm", 3)
    assert best["tre_mean_mm"] == np.nanmin(grid)


def test_without_truth_only_consistency_and_ambiguity(pairs, points):
    rep = feature_report(pairs, points[0], radii=(3,), levels=("up0", "up1"))
    assert [c.name for c in rep.configurations] == ["up0", "up1", FUSED]  # the pair is the fused default
    row = rep.cell("up1", 50)
    assert math.isnan(row["tre_mean_mm"]) and math.isnan(row["within_2mm_pct"])
    _, want = _independent(pairs, ("up1",), None, 50, 3, points[0], points[0])
    assert row["fb_consistent_pct"] == pytest.approx(want["fb_consistent_pct"], rel=1e-12)
    assert row["ambiguity_mean"] == pytest.approx(want["ambiguity_mean"], rel=1e-12)
    with pytest.raises(MedDiftError, match="no truth"):
        rep.best("tre_mean_mm")


def test_configuration_list():
    cs = configurations(["a", "b", "c"], ["c+a", "a:1+b:3", "b:2+c:2"])
    names = [c.name for c in cs]
    # c+a is the pair a+c again and b:2+c:2 the pair b+c (same relative weights): listed once
    assert names == ["a", "b", "c", FUSED, "a+b", "a+c", "b+c", "a:1+b:3"]
    assert cs[-1].weight_map == {"a": 1.0, "b": 3.0} and cs[3].levels == ("a", "b", "c")
    assert [c.name for c in configurations(["up0"])] == ["up0"]
    assert parse_fusion("0+2", ["up0", "up1", "up2"]).levels == ("up0", "up2")
    for bad, msg in (("up0+up9", "unknown level"), ("up0:x", "not a number"), ("up0+up0", "twice"),
                     ("up0:0", "positive sum"), ("", "names no level")):
        with pytest.raises(MedDiftError, match=msg):
            parse_fusion(bad, ["up0", "up1"])


def test_noise_signal():
    from napari_meddift.backbones.noise import make_scheduler

    ab = float(make_scheduler().alphas_cumprod[20])
    assert noise_signal({"backbone": "mini", "timestep": 20}) == pytest.approx(math.sqrt((1 - ab) / ab), rel=1e-9)
    assert noise_signal({"backbone": "mini", "timestep": 0}) < noise_signal({"backbone": "mini", "timestep": 200})
    assert noise_signal({"timestep": 20, "noise_signal": 0.25}) == 0.25  # the store's own attribute wins
    assert math.isnan(noise_signal({"backbone": "mind"}))
    assert math.isnan(noise_signal({"backbone": "maisi", "timestep": 20, "backbone_config": {"variant": "rflow"}}))


def test_user_errors_before_work(pairs, points):
    src, truth = points
    with pytest.raises(MedDiftError, match="lies outside the image"):
        feature_report(pairs, np.vstack([src, [[30, 0, 0]]]))
    with pytest.raises(MedDiftError, match="in pairs"):
        feature_report(pairs, src, truth[:-1])
    with pytest.raises(MedDiftError, match="source image's grid"):
        feature_report(pairs, src, mask=np.zeros((5, 5, 5), bool))
    with pytest.raises(MedDiftError, match="not in every store"):
        feature_report(pairs, src, levels=["up7"])
    with pytest.raises(MedDiftError, match="same timestep"):
        pairs_by_timestep([(pairs[0][0], pairs[50][1])])


def test_label_regions(pairs, points):
    """A label image: one row per label value found at the landmarks, each the subset's numbers."""
    src, truth = points
    labels = np.zeros(SHAPE, np.int16)
    labels[:, :12] = 3
    labels[:, 12:] = 7
    rep = feature_report({0: pairs[0]}, src, truth, levels=("up0",), radii=(3,), mask=labels)
    assert rep.regions == ["all", "label 3", "label 7"]
    in3 = np.rint(src[:, 1]) < 12
    for region, sel in (("label 3", in3), ("label 7", ~in3)):
        _, want = _independent(pairs, ("up0",), None, 0, 3, src, truth, sel)
        row = rep.cell("up0", 0, 3, region)
        assert row["n"] == want["n"] > 0
        assert row["tre_mean_mm"] == pytest.approx(want["tre_mean_mm"], rel=1e-12)
