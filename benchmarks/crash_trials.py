"""Crash-and-corruption trials of descriptor stores: the figures of docs/reliability.md.

Part 1, kills: a writer process replaces store A with store B (or B with A) and is SIGKILLed,
either after a random delay inside its run or exactly at one step of the replace (after the
partial is complete, between the two renames, after the second rename, while deleting the old
copy). Then this process opens the store (which rolls back an interrupted replace) and checks
it: it must hold exactly A or exactly B (full check: every chunk decodes, checksums match).
A *corrupted* outcome is a store that opens with other values or fails the full check; a *lost*
outcome is no store at all although one existed before the kill. The next write must then
succeed and leave no ``.partial-*``/``.old-*``/``.lock`` behind.

Part 3, register outputs: a writer process writes what ``meddift register`` writes (the
displacement field, a warped image, a Jacobian map as .nii.gz/.mha, the mapped points as CSV)
over a complete earlier set, and is SIGKILLed at a random time or right before a rename. Every
file must then read back exactly as the old or the new one (never 0 bytes, never truncated).

Part 2, corruption: random damage to complete stores (delete, truncate or overwrite chunk
files, flip one byte); every damaged store must be refused by open, by reading, or by
``meddift check`` -- never read back silently as different values.

    python benchmarks/crash_trials.py --kills 120 --steps 10 --damage 100 --outputs 60 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from napari_meddift.errors import MedDiftError  # noqa: E402
from napari_meddift.io import store as S  # noqa: E402

#: MAISI-like level shapes at 1/4 scale of a 192x192x208 scan (C, z, y, x): a few MB per store
SHAPES = {"up0": (64, 12, 12, 13), "up1": (32, 24, 24, 26), "up2": (16, 48, 48, 52)}
ATTRS = {"image_shape": (192, 192, 208), "spacing": (1.5, 1.5, 1.5)}

WRITER = r"""
import os, signal, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from napari_meddift.io import store as S
path, seed, step = sys.argv[2], int(sys.argv[3]), sys.argv[4]
shapes = {"up0": (64, 12, 12, 13), "up1": (32, 24, 24, 26), "up2": (16, 48, 48, 52)}
rng = np.random.default_rng(seed)
levels = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_replace, real_rmtree = os.replace, S._rmtree
def replace(src, dst):  # our renames only: zarr itself renames files inside the partial folder
    src_name, dst_name = os.path.basename(str(src)), os.path.basename(str(dst))
    if step == "before-rename-old" and ".old-" in dst_name:
        kill()
    real_replace(src, dst)
    if step == "between-renames" and ".old-" in dst_name:
        kill()
    if step == "after-rename-new" and ".partial-" in src_name and dst_name == os.path.basename(path):
        kill()
os.replace = replace
def rmtree(p):
    if step == "deleting-old" and ".old-" in str(p):
        import shutil
        for i, child in enumerate(sorted(p.rglob("*"), reverse=True)):
            if i == 5:
                kill()
            (child.unlink if child.is_file() else child.rmdir)()
    real_rmtree(p)
S._rmtree = rmtree
import zarr  # imported before "ready": random kills land inside the write itself
print("ready", flush=True)
S.write_store(path, levels, {"image_shape": (192, 192, 208), "spacing": (1.5, 1.5, 1.5)})
"""


OUTPUT_WRITER = r"""
import os, signal, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
folder, seed, step = sys.argv[2], int(sys.argv[3]), sys.argv[4]
import SimpleITK as sitk
from napari_meddift.io.landmarks import write_points_csv
from napari_meddift.io.outputs import write_image
from napari_meddift.io.volume import Volume, write_volume
real_replace = os.replace
def replace(src, dst):
    if step == "before-rename" and ".partial-" in str(src):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = replace
rng = np.random.default_rng(seed)
field = sitk.GetImageFromArray(rng.standard_normal((64, 64, 64, 3)).astype(np.float32), isVector=True)
vol = Volume(rng.standard_normal((64, 64, 64)).astype(np.float32))
pts = rng.uniform(0, 60, (2000, 3))
print("ready", flush=True)
write_image(field, os.path.join(folder, "field.nii.gz"), "field")
write_image(field, os.path.join(folder, "field.mha"), "field")
write_volume(vol, os.path.join(folder, "warped.nii.gz"))
write_volume(vol, os.path.join(folder, "jacobian.mha"))
write_points_csv(os.path.join(folder, "matched.csv"), pts)
"""

OUTPUT_NAMES = ("field.nii.gz", "field.mha", "warped.nii.gz", "jacobian.mha", "matched.csv")


def _read_output(path: Path):
    import SimpleITK as sitk

    if path.suffix == ".csv":
        return path.read_text()
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).tobytes()


def output_trials(n_random: int, n_steps: int, rng: random.Random) -> dict:
    """Part 3: SIGKILL while register's outputs are written over earlier ones."""
    out = {"trials": 0, "files_checked": 0, "old": 0, "new": 0, "corrupted": 0, "lost": 0, "debris_after_next_write": 0}
    plan = [("random", "none")] * n_random + [("before-rename", "before-rename")] * n_steps
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        refs = {}
        t0 = time.perf_counter()
        for seed in (0, 1):  # the reference contents of both sets, written whole
            subprocess.run([sys.executable, "-c", OUTPUT_WRITER, str(SRC), str(folder), str(seed), "none"], check=True,
                           capture_output=True)
            refs[seed] = {n: _read_output(folder / n) for n in OUTPUT_NAMES}
        write_s = (time.perf_counter() - t0) / 2
        current = 1
        for kind, step in plan:
            new = 1 - current
            proc = subprocess.Popen([sys.executable, "-c", OUTPUT_WRITER, str(SRC), str(folder), str(new), step],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            proc.stdout.readline()
            if kind == "random":
                time.sleep(rng.uniform(0, 1.5 * write_s))
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            out["trials"] += 1
            for name in OUTPUT_NAMES:
                out["files_checked"] += 1
                path = folder / name
                if not path.exists():
                    out["lost"] += 1
                    continue
                try:
                    got = _read_output(path)
                except Exception:  # noqa: BLE001 - unreadable counts as corrupted
                    out["corrupted"] += 1
                    continue
                out["old" if got == refs[current][name] else "new" if got == refs[new][name] else "corrupted"] += 1
            # the next full write succeeds and leaves no partial folder behind
            subprocess.run(
                [sys.executable, "-c", OUTPUT_WRITER, str(SRC), str(folder), str(current), "none"],
                check=True,
                capture_output=True,
            )
            out["debris_after_next_write"] += sum(".partial-" in p.name for p in folder.iterdir())
    out["write_seconds"] = round(write_s, 2)
    return out


def levels_for(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def as_stored(levels):
    return {k: v.astype(np.float16).astype(np.float32) for k, v in levels.items()}


def classify(path: Path, refs: dict[int, dict]) -> str:
    """'A'/'B' (whole store of that seed), 'none' (refused: no store), or 'corrupted'."""
    try:
        store = S.open_store(path)
        values = store.load_levels()
        if not S.verify_store(path)["ok"]:
            return "corrupted"
    except MedDiftError as exc:
        return "none" if "no descriptor store" in str(exc) else f"refused: {exc}"
    for seed, ref in refs.items():
        if values.keys() == ref.keys() and all(np.array_equal(values[k], ref[k]) for k in ref):
            return "A" if seed == 0 else "B"
    return "corrupted"


def debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if any(t in p.name for t in (".partial-", ".old-", ".lock")))


def kill_trials(n_random: int, n_steps: int, rng: random.Random) -> dict:
    refs = {0: as_stored(levels_for(0)), 1: as_stored(levels_for(1))}
    steps = ["before-rename-old", "between-renames", "after-rename-new", "deleting-old"]
    plan = [("random", None)] * n_random + [(s, s) for s in steps for _ in range(n_steps)]
    out = {"trials": 0, "outcomes": {}, "corrupted": 0, "lost": 0, "next_write_failed": 0, "debris_after_next_write": 0,
           "killed_before_done": 0}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "s.zarr"
        S.write_store(path, levels_for(0), ATTRS)
        current = 0
        t0 = time.perf_counter()
        S.write_store(path, levels_for(1), ATTRS)
        write_s = time.perf_counter() - t0
        current = 1
        for kind, step in plan:
            new = 1 - current
            proc = subprocess.Popen([sys.executable, "-c", WRITER, str(SRC), str(path), str(new), step or "none"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            proc.stdout.readline()  # imports done
            if kind == "random":
                time.sleep(rng.uniform(0, 2.0 * write_s))
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            out["killed_before_done"] += proc.returncode == -signal.SIGKILL
            result = classify(path, refs)
            seed_now = {"A": 0, "B": 1}.get(result)
            label = result if seed_now is None else ("old store" if seed_now == current else "new store")
            key = f"{kind}: {label}"
            out["outcomes"][key] = out["outcomes"].get(key, 0) + 1
            out["trials"] += 1
            out["corrupted"] += result == "corrupted" or result.startswith("refused")
            out["lost"] += result == "none"
            current = {"A": 0, "B": 1}.get(result, current)
            try:  # the next write must work and clean up
                S.write_store(path, levels_for(1 - current), ATTRS)
                current = 1 - current
            except Exception:  # noqa: BLE001
                out["next_write_failed"] += 1
            out["debris_after_next_write"] += len(debris(folder))
    out["write_seconds"] = round(write_s, 3)
    return out


def damage_trials(n: int, rng: random.Random) -> dict:
    kinds = ["delete chunk", "truncate chunk", "empty chunk", "random bytes", "flip one byte"]
    out = {"trials": 0, "detected_at_open": 0, "detected_at_read": 0, "detected_by_check": 0, "silent": 0,
           "by_kind": {}}
    ref = as_stored(levels_for(0))
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            path = Path(tmp) / f"d{i}.zarr"
            S.write_store(path, levels_for(0), ATTRS)
            chunks = sorted(p for p in (path / "levels").rglob("*") if p.is_file() and p.name != "zarr.json")
            victim = rng.choice(chunks)
            kind = kinds[i % len(kinds)]
            data = victim.read_bytes()
            if kind == "delete chunk":
                victim.unlink()
            elif kind == "truncate chunk":
                victim.write_bytes(data[: rng.randrange(1, len(data))])
            elif kind == "empty chunk":
                victim.write_bytes(b"")
            elif kind == "random bytes":
                victim.write_bytes(os.urandom(len(data)))
            else:
                b = bytearray(data)
                j = rng.randrange(len(b))
                b[j] ^= 1 << rng.randrange(8)
                victim.write_bytes(bytes(b))
            where = "silent"
            try:
                store = S.open_store(path)
            except MedDiftError:
                where = "detected_at_open"
            else:
                try:
                    values = store.load_levels()
                except MedDiftError:
                    where = "detected_at_read"
                else:
                    if not S.verify_store(path)["ok"]:
                        where = "detected_by_check"
                    elif all(np.array_equal(values[k], ref[k]) for k in ref):
                        # the damage did not change any value (cannot happen with zstd checksums)
                        where = "detected_by_check"
            out[where] += 1
            out["trials"] += 1
            out["by_kind"].setdefault(kind, {}).setdefault(where, 0)
            out["by_kind"][kind][where] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=120)
    ap.add_argument("--steps", type=int, default=10, help="trials per injected step")
    ap.add_argument("--damage", type=int, default=100)
    ap.add_argument("--outputs", type=int, default=60, help="random kills of register-output writers (part 3)")
    ap.add_argument("--output-steps", type=int, default=10, help="kills right before an output's rename")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    t0 = time.perf_counter()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
              "kills": kill_trials(a.kills, a.steps, rng), "damage": damage_trials(a.damage, rng),
              "outputs": output_trials(a.outputs, a.output_steps, rng)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
