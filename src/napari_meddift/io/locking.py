"""Crash safety of descriptor stores: one writer at a time, and recovery after a kill.

A store at ``X.zarr`` is replaced in three steps: the new store is built in
``X.zarr.partial-<pid>-<hex>``, the old store is renamed to ``X.zarr.old-<pid>-<hex>``, the new
one is renamed to ``X.zarr``, and the old one is deleted. Writers hold ``X.zarr.lock`` (an
``flock`` on Linux/macOS, released by the kernel when a process dies) for all of it, so
whoever holds the lock knows that no other process is between those steps: a missing
``X.zarr`` beside a complete ``X.zarr.old-*`` is an interrupted replace (the old store is
renamed back), and ``.partial-*``/``.old-*`` folders of dead processes are debris (removed).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from pathlib import Path

from ..errors import MedDiftError

#: seconds a writer waits for another writer of the same store before giving up
LOCK_TIMEOUT_S = float(os.environ.get("MEDDIFT_LOCK_TIMEOUT", "300"))

_SIBLING = re.compile(r"^(?P<name>.+)\.(?P<kind>partial|old)-(?:(?P<pid>\d+)-)?(?P<tag>[0-9a-f]+)$")


def sibling_path(path: Path, kind: str) -> Path:
    """``<path>.<kind>-<pid>-<hex>``: a temporary sibling that names the process that made it."""
    return path.parent / f"{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def lock_path(path: Path) -> Path:
    return path.parent / f"{path.name}.lock"


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists on this machine (ours or another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def siblings(path: Path) -> list[tuple[Path, str, int | None]]:
    """(folder, 'partial' | 'old', pid or None) for every temporary sibling of ``path``."""
    out = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return out
    for p in entries:
        m = _SIBLING.match(p.name)
        if m and m.group("name") == path.name:
            pid = m.group("pid")
            out.append((p, m.group("kind"), int(pid) if pid else None))
    return out


class StoreLock:
    """``with StoreLock(path):`` -- exclusive right to change the store at ``path``.

    Waits up to ``timeout`` seconds for another writer, then raises MedDiftError naming it.
    The lock file is removed on release (and re-checked on acquire, so a waiter never holds a
    lock on a file that was already unlinked).
    """

    def __init__(self, path: str | os.PathLike, timeout: float | None = None, poll: float = 0.05) -> None:
        self.path = Path(path)
        self.lock = lock_path(self.path)
        self.timeout = LOCK_TIMEOUT_S if timeout is None else float(timeout)
        self.poll = poll
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            text = self.lock.read_text().strip()
        except OSError:
            return "another process"
        return f"process {text}" if text.isdigit() else "another process"

    def acquire(self) -> "StoreLock":
        import fcntl

        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise MedDiftError(
                    f"cannot create the lock file {self.lock} ({exc.strerror}); "
                    f"choose an output folder you can write to"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise MedDiftError(
                        f"{self._holder()} is writing {self.path} (lock {self.lock.name}); "
                        "wait for it to finish or choose another output path"
                    ) from None
                time.sleep(self.poll)
                continue
            try:  # the file we locked must still be the one at the lock path
                same = os.fstat(fd).st_ino == os.stat(self.lock).st_ino
            except OSError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:  # the pid is only for messages; on a full disk the flock alone still locks
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            except OSError:
                pass
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.lock)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def recover(path: Path, is_complete_store) -> list[str]:
    """Undo what a killed writer left at ``path``; call only while holding :class:`StoreLock`.

    * ``path`` missing and a complete ``.old-*`` beside it: the replace was interrupted between
      its two renames, so the old store is renamed back (the newest one if there are several);
    * every other ``.old-*`` (the store at ``path`` is whole) and every ``.partial-*`` of a
      process that no longer runs (or of an older version that did not record its pid) is removed.

    ``is_complete_store(folder) -> bool`` decides what a complete store is.
    Returns one line per action taken (for logs and tests).
    """
    actions: list[str] = []
    found = siblings(path)
    me = os.getpid()
    if not path.exists():
        olds = sorted((p for p, kind, _ in found if kind == "old" and is_complete_store(p)),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        if olds:
            os.replace(olds[0], path)
            actions.append(f"restored {path.name} from {olds[0].name} (an interrupted replace)")
            found = siblings(path)
    whole = path.exists()
    for p, kind, pid in found:
        if pid == me:
            continue
        if kind == "old" and not whole:
            continue  # the only copy left of something: keep it for a person to look at
        if kind == "partial" and pid is not None and pid_alive(pid):
            continue  # a live process on this machine (without our lock, so an older version)
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            actions.append(f"removed {p.name}")
    return actions
