"""The cache folder and the one file-name cleaner every generated file goes through."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from napari_meddift.io.cache import default_cache_dir, safe_filename

SRC = Path(__file__).resolve().parents[1] / "src"


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
    if not sys.platform.startswith("linux"):  # macOS: ~/Library/Caches, Windows: %LOCALAPPDATA%
        assert default_cache_dir().name in ("napari-meddift", "Cache")
        return
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "napari-meddift"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "napari-meddift"



# --- the store lock on a platform without fcntl (Windows; any Python built without it) ---------

_NO_FCNTL = """
import sys
sys.modules["fcntl"] = None  # `import fcntl` now raises ImportError, as on Windows
import warnings
warnings.simplefilter("ignore")  # filelock says it falls back to its soft lock
from napari_meddift.io.locking import StoreLock
from napari_meddift.errors import MedDiftError
"""


def _python(code: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _NO_FCNTL + textwrap.dedent(code), *map(str, args)],
                            env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_store_lock_works_without_fcntl(tmp_path):
    """Without fcntl the lock still excludes a second writer (another process), names the holder
    in its one-line error, is free again after release, and a killed holder does not block the
    store for ever."""
    path = tmp_path / "a.zarr"
    holder = _python("""
    lock = StoreLock(sys.argv[1]).acquire()
    assert lock.soft, "expected filelock's soft lock without fcntl"
    print("held", flush=True)
    sys.stdin.readline()  # hold until told
    lock.release()
    print("released", flush=True)
    sys.stdin.readline()
    """, path, stdin=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        waiter = _python("""
        try:
            StoreLock(sys.argv[1], timeout=0.5).acquire()
            print("acquired")
        except MedDiftError as exc:
            print(exc)
        """, path)
        out, err = waiter.communicate(timeout=60)
        assert "acquired" not in out, out
        assert f"process {holder.pid} is writing {path}" in out and "choose another output path" in out, (out, err)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        again = _python("""
        with StoreLock(sys.argv[1], timeout=5):
            print("acquired")
        """, path)
        assert again.communicate(timeout=60)[0].strip() == "acquired"
    finally:
        holder.kill()
        holder.wait()
    # a holder killed while holding: the next writer takes the lock over (no stale lock for ever)
    dead = _python("""
    StoreLock(sys.argv[1]).acquire()
    print("held", flush=True)
    sys.stdin.readline()
    """, path, stdin=subprocess.PIPE)
    assert dead.stdout.readline().strip() == "held"
    dead.kill()
    dead.wait()
    after = _python("""
    with StoreLock(sys.argv[1], timeout=30):
        print("acquired")
    """, path)
    out, err = after.communicate(timeout=90)
    assert out.strip() == "acquired", err
