"""Crash recovery, writer locking and chunk integrity of descriptor stores (issue: nothing silent)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from napari_meddift.io import store as S
from napari_meddift.errors import MedDiftError
from napari_meddift.io.locking import StoreLock

SRC = Path(__file__).resolve().parents[1] / "src"
ATTRS = {"image_shape": (40, 36, 80), "spacing": (2.5, 0.7, 0.7)}


def _levels(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"up0": rng.standard_normal((4, 10, 9, 20)).astype(np.float32),
            "up1": rng.standard_normal((2, 20, 18, 40)).astype(np.float32)}


def _values(path) -> dict:
    return S.open_store(path).load_levels()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], np.asarray(b[k], np.float16).astype(np.float32)) for k in a)


def _run(code: str, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, env=full, timeout=timeout)


#: a writer that SIGKILLs itself right after the old store was moved aside (the replace window)
KILL_IN_REPLACE_WINDOW = """
import os, signal, sys
import numpy as np
from napari_meddift.io import store as S
real = os.replace
def replace(src, dst):
    real(src, dst)
    if ".old-" in os.path.basename(str(dst)):  # our rename, not zarr's own inside a folder
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
rng = np.random.default_rng(1)
levels = {"up0": rng.standard_normal((4, 10, 9, 20)).astype(np.float32),
          "up1": rng.standard_normal((2, 20, 18, 40)).astype(np.float32)}
S.write_store(sys.argv[1], levels, {"image_shape": (40, 36, 80), "spacing": (2.5, 0.7, 0.7)})
"""


def test_sigkill_in_replace_window_is_rolled_back_on_open(tmp_path):
    path = tmp_path / "a.zarr"
    S.write_store(path, _levels(0), ATTRS)
    proc = _run(KILL_IN_REPLACE_WINDOW, path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not path.exists()  # the kill came between the two renames
    stranded = [p.name for p in tmp_path.iterdir() if ".old-" in p.name]
    assert len(stranded) == 1
    assert _same(_values(path), _levels(0))  # open put the old store back
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name or ".partial-" in p.name]


def test_sigkill_in_replace_window_is_rolled_back_on_next_write(tmp_path):
    path = tmp_path / "a.zarr"
    S.write_store(path, _levels(0), ATTRS)
    assert _run(KILL_IN_REPLACE_WINDOW, path).returncode == -signal.SIGKILL
    S.write_store(path, _levels(2), ATTRS)
    assert _same(_values(path), _levels(2))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["a.zarr"]  # no .old, .partial
    with StoreLock(tmp_path / "a.zarr", timeout=0):  # and the lock is free (its empty file may stay)
        pass


def test_stale_partials_of_dead_processes_are_removed(tmp_path):
    path = tmp_path / "a.zarr"
    S.write_store(path, _levels(0), ATTRS)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f"a.zarr.partial-{dead.pid}-0badc0de"
        legacy = tmp_path / "a.zarr.partial-deadbeef"  # written before pids were recorded
        live = tmp_path / f"a.zarr.partial-{alive.pid}-0123abcd"
        other = tmp_path / f"b.zarr.partial-{dead.pid}-0badc0de"  # another store's: not ours to touch
        for p in (stale, legacy, live, other):
            (p / "levels").mkdir(parents=True)
            (p / "levels" / "junk").write_bytes(b"x" * 1000)
        S.write_store(path, _levels(1), ATTRS)
        assert not stale.exists() and not legacy.exists()
        assert live.exists() and other.exists()
    finally:
        alive.kill()
        alive.wait()


def test_second_writer_waits_for_the_lock_then_writes(tmp_path):
    path = tmp_path / "a.zarr"
    code = """
    import sys, numpy as np
    from napari_meddift.io import store as S
    S.write_store(sys.argv[1], {"up0": np.ones((2, 4, 4, 4), np.float32)},
                  {"image_shape": (4, 4, 4), "spacing": (1, 1, 1)})
    print("wrote")
    """
    lock = StoreLock(path).acquire()
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(path)],
                            env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.PIPE, text=True)
    time.sleep(3.0)
    assert proc.poll() is None and not path.exists()  # waiting, nothing written
    lock.release()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "wrote" in out
    assert S.open_store(path).level_names == ("up0",)
    with StoreLock(path, timeout=0):  # released: free at once (the empty lock file may stay)
        pass


def test_second_writer_stops_with_one_clear_line_after_timeout(tmp_path):
    path = tmp_path / "a.zarr"
    with StoreLock(path):
        proc = _run(
            """
        import sys, numpy as np
        from napari_meddift.cli import main
        from napari_meddift.io import store as S
        from napari_meddift.errors import MedDiftError
        try:
            S.write_store(sys.argv[1], {"up0": np.ones((2, 4, 4, 4), np.float32)},
                          {"image_shape": (4, 4, 4), "spacing": (1, 1, 1)})
        except MedDiftError as exc:
            print(exc)
        """,
            path,
            env={"MEDDIFT_LOCK_TIMEOUT": "0.5"},
        )
    assert f"process {os.getpid()} is writing {path}" in proc.stdout
    assert "choose another output path" in proc.stdout and not path.exists()


def test_store_written_meanwhile_is_not_overwritten(tmp_path):
    path = tmp_path / "a.zarr"
    token = S.store_token(path)  # taken before a long extraction: nothing there
    S.write_store(path, _levels(0), ATTRS)  # another process wins the race
    with pytest.raises(S.ReplacedMeanwhile, match="written by another process"):
        S.write_store(path, _levels(1), ATTRS, replaces=token)
    assert _same(_values(path), _levels(0))
    token = S.store_token(path)
    S.write_store(path, _levels(1), ATTRS, replaces=token)  # unchanged since: replaced
    assert _same(_values(path), _levels(1))


@pytest.mark.slow  # 14-17 s on a 2-core CPU
def test_concurrent_extractions_of_different_images_never_both_say_wrote(tmp_path):
    """Two CLI extractions of different scans to one store: one writes, the other stops (or
    waits and replaces); whoever says "wrote" holds the store that is there at that moment.
    (On the scans' own grid: at mini's 2.5 mm these 24^3 scans extract in a blink, and the slow
    writer's start-up could then come after the fast one's whole run.)"""
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    scans = []
    for i in range(2):
        f = tmp_path / f"scan{i}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(rng.normal(-400, 300, (24, 24, 24)).astype(np.int16)), str(f))
        scans.append(f)
    out = tmp_path / "s.zarr"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    slow = textwrap.dedent("""
    import sys, time
    from napari_meddift.io import store as S
    real = S.write_store
    def write_store(*a, **k):
        time.sleep(float(sys.argv[1]))  # hold back the write: the other extraction finishes first
        return real(*a, **k)
    S.write_store = write_store
    import napari_meddift.backbones.extraction as E
    E.write_store = write_store
    from napari_meddift.cli import main
    sys.exit(main(sys.argv[2:]))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", slow, str(delay), "extract", str(scan), "-o", str(out),
                               "--random-weights", "--spacing", "native"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              # lenient: one unexplained decode error seen under load
                              encoding="utf-8", errors="replace")
             for delay, scan in ((8.0, scans[0]), (0.0, scans[1]))]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    (out0, err0, rc0), (out1, err1, rc1) = results
    assert rc1 == 0 and out1.startswith("wrote"), err1
    assert rc0 == 2 and "written by another process" in err0 and out0 == "", (out0, err0)
    errors = [ln for ln in err0.splitlines() if ln.startswith("meddift")]  # besides the progress bar
    assert len(errors) == 1 and errors[0].startswith("meddift: error:") and "Traceback" not in err0
    assert S.open_store(out).attrs["source"] == "scan1"


def test_missing_chunk_file_is_refused_at_open(tmp_path):
    path = tmp_path / "a.zarr"
    S.write_store(path, _levels(0), ATTRS)
    chunk = path / "levels" / "up1" / "c" / "0" / "1" / "1" / "2"
    assert chunk.is_file()
    chunk.unlink()
    with pytest.raises(MedDiftError, match=r"damaged: up1 lacks 1 of its chunk files \(e.g. c/0/1/1/2\)"):
        S.open_store(path)


def test_all_zero_chunks_are_written_so_the_check_holds(tmp_path):
    path = tmp_path / "z.zarr"
    S.write_store(
        path, {"up0": np.zeros((2, 20, 20, 20), np.float32)}, {"image_shape": (20, 20, 20), "spacing": (1, 1, 1)}
    )
    assert S.open_store(path).load_levels()["up0"].sum() == 0  # opens: every chunk present


def test_garbage_chunk_bytes_are_one_clear_error_and_check_finds_them(tmp_path, capsys):
    from napari_meddift.cli import main

    path = tmp_path / "a.zarr"
    S.write_store(path, _levels(0), ATTRS)
    (path / "levels" / "up1" / "c" / "0" / "0" / "1" / "0").write_bytes(os.urandom(300))
    store = S.open_store(path)  # the cheap check sees every file there
    with pytest.raises(MedDiftError, match="level up1 has chunk data that does not decode"):
        store.load_levels()
    with pytest.raises(MedDiftError, match="does not decode"):
        store.read_box("up1", (slice(0, 16), slice(16, 18), slice(0, 4)))
    report = S.verify_store(path)
    assert not report["ok"] and report["levels"]["up0"]["problems"] == []
    assert report["levels"]["up1"]["problems"] == ["1 chunk(s) do not decode (c/0/0/1/0)"]
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"DAMAGED {path}: up1: 1 chunk(s) do not decode")
    assert err.strip() == "meddift: error: 1 of 1 store(s) damaged; extract them again"


def test_chunk_swapped_for_another_valid_chunk_fails_the_checksum(tmp_path, capsys):
    from napari_meddift.cli import main

    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    S.write_store(a, _levels(0), ATTRS)
    S.write_store(b, _levels(5), ATTRS)
    rel = Path("levels/up0/c/0/0/0/0")
    (a / rel).write_bytes((b / rel).read_bytes())  # decodes fine, wrong values
    rep = S.verify_store(a)
    assert rep["levels"]["up0"]["problems"] == ["values differ from the checksum recorded when it was written"]
    assert main(["check", str(b)]) == 0
    assert capsys.readouterr().out.startswith(f"ok {b}: 2 level(s), 14 chunks decoded, checksums match")


def test_nan_in_a_level_is_reported_by_check(tmp_path):
    import zarr

    path = tmp_path / "n.zarr"
    S.write_store(path, _levels(0), ATTRS)  # write_store refuses NaN; it appears afterwards
    zarr.open_array(str(path / "levels" / "up0"), mode="r+")[0, 0, 0, 0] = np.nan
    assert S.verify_store(path)["levels"]["up0"]["problems"] == [
        "1 NaN/inf value(s)", "values differ from the checksum recorded when it was written"]


def test_destination_checks_before_work(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(MedDiftError, match="not a napari-meddift descriptor store; refusing"):
        S.check_store_destination(tmp_path / "plain")
    (tmp_path / "f").write_text("x")
    with pytest.raises(MedDiftError, match="is a file"):
        S.check_store_destination(tmp_path / "f")
    with pytest.raises(MedDiftError, match="is a file, not a folder"):
        S.check_store_destination(tmp_path / "f" / "s.zarr")
    with pytest.raises(MedDiftError, match="cannot write in /proc"):
        S.check_store_destination("/proc/s.zarr")
    assert S.check_store_destination(tmp_path / "new" / "deeper" / "s.zarr")  # made when written
    assert not (tmp_path / "new").exists()
