"""TRE, summaries and tables, checked on the real Learn2Reg landmark pairs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_meddift.errors import MedDiftError
from napari_meddift.evaluation.l2r_config import l2r_case_id, l2r_case_ids, l2r_shape_zyx, read_l2r_config
from napari_meddift.evaluation.metrics import format_summary_table, summarize, tre_mm, tre_table
from napari_meddift.io.landmarks import read_point_pairs

# Learn2Reg LungCT spacing: 1.75 x 1.25 x 1.75 mm in x,y,z, i.e. (1.75, 1.25, 1.75) in z,y,x
L2R_SPACING_ZYX = (1.75, 1.25, 1.75)
# SOURCES.md: identity TRE mean +- std (mm) per case
PUBLISHED = {1: (20.2, 5.6, 81), 2: (15.6, 5.4, 100), 3: (8.1, 4.2, 100)}


@pytest.fixture(scope="module")
def l2r(shared_data):
    return shared_data / "landmarks" / "learn2reg_lungct"


@pytest.mark.parametrize("case", [1, 2, 3])
def test_identity_tre_learn2reg(l2r, case):
    d = l2r / "landmarksTr"
    fixed_f, moving_f = d / f"LungCT_000{case}_0000.csv", d / f"LungCT_000{case}_0001.csv"
    fixed, moving = read_point_pairs(fixed_f, moving_f)
    err = tre_mm(moving, fixed, L2R_SPACING_ZYX)
    s = summarize(err)
    # independent numpy computation straight from the files (x,y,z order, spacing x,y,z)
    fx = np.loadtxt(fixed_f, delimiter=",")
    mx = np.loadtxt(moving_f, delimiter=",")
    ref = np.sqrt((((fx - mx) * np.array([1.75, 1.25, 1.75])) ** 2).sum(axis=1))
    np.testing.assert_allclose(err, ref, atol=1e-12)
    assert abs(s["mean"] - ref.mean()) < 0.05
    assert abs(s["std"] - ref.std()) < 0.05
    mean, std, n = PUBLISHED[case]
    assert s["n"] == n
    assert abs(s["mean"] - mean) < 0.05
    assert abs(s["std"] - std) < 0.05
    assert s["median"] == pytest.approx(np.median(ref))
    assert s["p95"] == pytest.approx(np.percentile(ref, 95))
    assert s["max"] == pytest.approx(ref.max())


def test_tre_axis_order_matters():
    # 1 voxel along z (first axis) with spacing (3, 1, 1) is 3 mm, along x only 1 mm
    assert tre_mm([[1, 0, 0]], [[0, 0, 0]], (3, 1, 1))[0] == pytest.approx(3.0)
    assert tre_mm([[0, 0, 1]], [[0, 0, 0]], (3, 1, 1))[0] == pytest.approx(1.0)
    # a single point (3,) works too
    assert tre_mm([0, 3, 4], [0, 0, 0], (1, 1, 1)).tolist() == [5.0]


def test_tre_errors():
    with pytest.raises(MedDiftError, match="2 predicted points but 3 true"):
        tre_mm(np.zeros((2, 3)), np.zeros((3, 3)), (1, 1, 1))
    with pytest.raises(MedDiftError, match=r"\(N, 3\)"):
        tre_mm(np.zeros((2, 2)), np.zeros((2, 2)), (1, 1, 1))
    with pytest.raises(MedDiftError, match="spacing"):
        tre_mm(np.zeros((2, 3)), np.zeros((2, 3)), (1, 0, 1))


def test_summarize_edge_cases():
    s = summarize([])
    assert s["n"] == 0 and np.isnan(s["mean"])
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s == {"n": 4, "mean": 2.5, "std": pytest.approx(np.std([1, 2, 3, 4])), "median": 2.5,
                 "p95": pytest.approx(3.85), "max": 4.0}
    with pytest.raises(MedDiftError, match="NaN"):
        summarize([1.0, np.nan])


def test_tre_table_rows(l2r):
    d = l2r / "landmarksTr"
    fixed, moving = read_point_pairs(d / "LungCT_0003_0000.csv", d / "LungCT_0003_0001.csv")
    pred = fixed + np.array([0.0, 0.0, 1.0])  # 1 voxel off in x -> 1.75 mm
    rows = tre_table(pred, fixed, L2R_SPACING_ZYX, source_zyx=moving)
    assert len(rows) == 100
    r0 = rows[0]
    # file row 1 of LungCT_0003_0000.csv: 131,121,90 (x,y,z)
    assert (r0["true_x"], r0["true_y"], r0["true_z"]) == (131.0, 121.0, 90.0)
    assert r0["pred_x"] == 132.0
    assert all(r["tre_mm"] == pytest.approx(1.75) for r in rows)
    init = np.array([r["initial_mm"] for r in rows])
    assert abs(init.mean() - 8.1) < 0.05
    assert "initial_mm" not in tre_table(pred, fixed, L2R_SPACING_ZYX)[0]


def test_format_summary_table():
    text = format_summary_table({
        "identity": summarize([20.0, 22.0]),
        "meddift": summarize([1.0, 2.0, 3.0]),
    })
    lines = text.strip().splitlines()
    assert lines[0].startswith("| method | n | mean (mm)")
    assert lines[1].startswith("|---|")
    assert lines[2] == "| identity | 2 | 21.00 | 1.00 | 21.00 | 21.90 | 22.00 |"
    assert lines[3].startswith("| meddift | 3 | 2.00 |")
    with pytest.raises(MedDiftError, match="lacks"):
        format_summary_table({"x": {"n": 1}})


def test_read_l2r_config(l2r, tmp_path):
    cfg = read_l2r_config(l2r / "LungCT_VAL_evaluation_config.json")
    assert cfg["task_name"] == "LungCT"
    assert cfg["expected_shape"] == [192, 192, 208, 3]
    assert l2r_shape_zyx(cfg) == (208, 192, 192)
    assert len(cfg["eval_pairs"]) == 3
    assert l2r_case_ids(cfg) == ["0001", "0002", "0003"]
    assert {m["name"] for m in cfg["evaluation_methods"]} >= {"TRE_lm", "TRE_kp"}
    # the config carries no spacing; it belongs to the images/masks
    assert "spacing" not in cfg
    # and the shape agrees with the shipped masks (192x192x208, 1.75x1.25x1.75 mm in x,y,z)
    from napari_meddift.io.volume import read_volume

    mask = read_volume(l2r / "masksTr" / "LungCT_0001_0000.nii.gz")
    assert mask.shape == l2r_shape_zyx(cfg)
    np.testing.assert_allclose(mask.spacing, L2R_SPACING_ZYX)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MedDiftError, match="not valid JSON"):
        read_l2r_config(bad)
    with pytest.raises(MedDiftError, match="no such"):
        read_l2r_config(tmp_path / "none.json")


def test_l2r_case_id_is_strict():
    """One parser for case ids: paths and every Learn2Reg ending work, anything else is refused."""
    assert l2r_case_id("LungCT_0001_0000.nii.gz") == "0001"
    assert l2r_case_id("./imagesTr/LungCT_0012_0001.nii.gz") == "0012"
    assert l2r_case_id("landmarksTr/NLST_0101_0000.csv") == "0101"
    for bad in ("LungCT_1_0000.nii.gz", "scan.nii.gz", "LungCT_0001.nii.gz", "LungCT_0001_0000_x.nii.gz",
                "LungCT_0001_0000.mha", "_0001_0000.nii.gz"):
        with pytest.raises(MedDiftError, match="expected TASK_XXXX_0000"):
            l2r_case_id(bad)
    # a config naming a malformed image is refused, not turned into a made-up id
    with pytest.raises(MedDiftError, match="scan_a.nii.gz"):
        l2r_case_ids({"eval_pairs": [{"fixed": "imagesTr/scan_a.nii.gz", "moving": "imagesTr/scan_b.nii.gz"}]})

