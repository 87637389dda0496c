"""Seeded, bounded fuzzing: malformed landmark files, Learn2Reg configs and damaged stores give
either a correct result or one MedDiftError -- never another exception, never silent garbage."""

import json
import os
import random
from pathlib import Path

import numpy as np

from napari_meddift.errors import MedDiftError
from napari_meddift.evaluation.l2r_config import read_l2r_config
from napari_meddift.io import store as S
from napari_meddift.io.landmarks import read_points

VALID_CSV = "10.5,20,30\n1,2,3\n100,200,80.25\n"
TOKENS = ["", ",", ",,", " ", "\t", "\n", "\r\n", "nan", "inf", "-inf", "1e999", "x", "#", "point", "index",
          "3", "-1", "0.5", "1,2", "1,2,3,4", "\x00", "\xff", "é", '"', "1;2;3", "x,y,z"]


def _mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        i = rng.randrange(len(text) + 1)
        if op == 0:
            text = text[:i] + rng.choice(TOKENS) + text[i:]
        elif op == 1 and text:
            j = min(len(text), i + rng.randint(1, 6))
            text = text[:i] + text[j:]
        elif op == 2:
            lines = text.splitlines(keepends=True) or [""]
            text = "".join(rng.sample(lines, len(lines)) + [rng.choice(lines)])
        else:
            text = text[:i]
    return text


def test_fuzz_landmark_files(tmp_path):
    rng = random.Random(1234)
    outcomes = {"ok": 0, "refused": 0}
    for trial in range(300):
        path = tmp_path / f"p{trial}.csv"
        if trial % 10 == 0:
            path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))))
        else:
            path.write_text(_mutate(VALID_CSV, rng), encoding="utf-8", errors="surrogatepass")
        try:
            pts = read_points(path)
        except MedDiftError:
            outcomes["refused"] += 1
            continue
        assert pts.ndim == 2 and pts.shape[1] == 3 and len(pts) >= 1
        assert np.isfinite(pts).all(), (path.read_bytes(), pts)
        outcomes["ok"] += 1
    assert outcomes["ok"] > 20 and outcomes["refused"] > 50, outcomes  # both paths were exercised


def _random_json(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "none", "bool", "list", "dict"] if depth < 3 else ["str", "int", "none"]
    k = rng.choice(kinds)
    if k == "str":
        return rng.choice(["", "a", "imagesTr/LungCT_0001_0000.nii.gz", "../x", "fixed"])
    if k == "int":
        return rng.choice([0, -1, 3, 10**12])
    if k == "float":
        return rng.choice([0.5, float("1e308")])
    if k == "none":
        return None
    if k == "bool":
        return rng.random() < 0.5
    if k == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["fixed", "moving", "eval_pairs", "expected_shape", "x"]): _random_json(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def test_fuzz_l2r_configs(tmp_path):
    from napari_meddift.evaluation.l2r import l2r_cases

    rng = random.Random(99)
    good = {
        "eval_pairs": [{"fixed": "./imagesTr/LungCT_0001_0000.nii.gz", "moving": "./imagesTr/LungCT_0001_0001.nii.gz"}],
        "expected_shape": [192, 192, 208, 3],
    }
    counts = {"ok": 0, "refused": 0}
    for trial in range(200):
        root = tmp_path / f"r{trial}"
        root.mkdir()
        if trial % 4 == 0:
            doc = json.loads(json.dumps(good))
            key = rng.choice(["eval_pairs", "expected_shape"])
            doc[key] = _random_json(rng)
        elif trial % 4 == 1:
            doc = {"eval_pairs": [_random_json(rng) for _ in range(rng.randint(0, 2))]}
        else:
            doc = _random_json(rng)
        text = json.dumps(doc)
        if trial % 7 == 0:
            text = text[: rng.randrange(len(text) + 1)]
        (root / "LungCT_VAL_evaluation_config.json").write_text(text)
        try:
            read_l2r_config(root / "LungCT_VAL_evaluation_config.json")
            cfg, cases = l2r_cases(root)
        except MedDiftError:
            counts["refused"] += 1
            continue
        assert cases and all(c.fixed_image.name and c.moving_image.name for c in cases)
        counts["ok"] += 1
    assert counts["refused"] > 100, counts


DAMAGE = ["delete chunk", "truncate chunk", "random bytes", "flip byte", "append bytes", "level json garbage",
          "level json shape", "group json truncated", "group json levels", "delete level", "complete false",
          "image_shape garbage"]


def _damage(path: Path, kind: str, rng: random.Random) -> None:
    chunks = sorted(p for p in (path / "levels").rglob("*") if p.is_file() and p.name != "zarr.json")
    victim = rng.choice(chunks)
    data = victim.read_bytes()
    level_json = path / "levels" / rng.choice(["up0", "up1"]) / "zarr.json"
    group_json = path / "zarr.json"
    doc = json.loads(group_json.read_text())
    if kind == "delete chunk":
        victim.unlink()
    elif kind == "truncate chunk":
        victim.write_bytes(data[: rng.randrange(1, len(data))])
    elif kind == "random bytes":
        victim.write_bytes(os.urandom(len(data)))
    elif kind == "flip byte":
        b = bytearray(data)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        victim.write_bytes(bytes(b))
    elif kind == "append bytes":
        victim.write_bytes(data + os.urandom(rng.randint(1, 50)))
    elif kind == "level json garbage":
        level_json.write_text(level_json.read_text()[: rng.randrange(1, 60)])
    elif kind == "level json shape":
        meta = json.loads(level_json.read_text())
        meta["shape"][rng.randrange(1, 4)] += rng.choice([-3, 5])
        level_json.write_text(json.dumps(meta))
    elif kind == "group json truncated":
        group_json.write_text(group_json.read_text()[: rng.randrange(1, 100)])
    elif kind == "group json levels":
        doc["attributes"]["levels"] = rng.choice([[], "up0", ["up9"], [1, 2], None])
        group_json.write_text(json.dumps(doc))
    elif kind == "delete level":
        import shutil

        shutil.rmtree(path / "levels" / "up1")
    elif kind == "complete false":
        doc["attributes"]["complete"] = rng.choice([False, "yes", None])
        group_json.write_text(json.dumps(doc))
    elif kind == "image_shape garbage":
        doc["attributes"]["image_shape"] = rng.choice([[0, 10, 10], "big", [1, 2], [None, 1, 1]])
        group_json.write_text(json.dumps(doc))


def test_fuzz_damaged_stores(tmp_path):
    rng = random.Random(7)
    data_rng = np.random.default_rng(0)
    levels = {"up0": data_rng.standard_normal((4, 10, 9, 20)).astype(np.float32),
              "up1": data_rng.standard_normal((2, 20, 18, 40)).astype(np.float32)}
    ref = {k: v.astype(np.float16).astype(np.float32) for k, v in levels.items()}
    attrs = {"image_shape": (40, 36, 80), "spacing": (2.5, 0.7, 0.7)}
    outcomes: dict[str, int] = {}
    for trial in range(len(DAMAGE) * 6):
        kind = DAMAGE[trial % len(DAMAGE)]
        path = tmp_path / f"s{trial}.zarr"
        S.write_store(path, levels, attrs)
        _damage(path, kind, rng)
        try:
            store = S.open_store(path)
            values = store.load_levels()
            report = S.verify_store(path)
        except MedDiftError as exc:
            assert str(exc).strip(), kind
            outcome = "refused"
        else:
            same = values.keys() == ref.keys() and all(np.array_equal(values[k], ref[k]) for k in ref)
            # opening and reading may pass only if the values are the original ones, or the full check flags it
            assert same or not report["ok"], (kind, report)
            outcome = "intact" if same and report["ok"] else "flagged by check"
        outcomes[f"{kind}: {outcome}"] = outcomes.get(f"{kind}: {outcome}", 0) + 1
    # every kind of damage is refused by open or read, before the full check is even needed
    assert all(k.endswith("refused") for k in outcomes), outcomes
    assert sum(outcomes.values()) == len(DAMAGE) * 6
