"""Crash safety of descriptor stores: one writer at a time, and recovery after a kill.

A store at ``X.zarr`` is replaced in three steps: the new store is built in
``X.zarr.partial-<pid>-<hex>``, the old store is renamed to ``X.zarr.old-<pid>-<hex>``, the new
one is renamed to ``X.zarr``, and the old one is deleted. Writers hold ``X.zarr.lock`` (a
``filelock.FileLock``: ``flock`` on Linux/macOS, ``msvcrt`` byte locks on Windows, both released
by the operating system when a process dies; where neither exists, filelock's soft lock, which
records the holder's pid and breaks the lock of a dead holder) for all of it, so
whoever holds the lock knows that no other process is between those steps: a missing
``X.zarr`` beside a complete ``X.zarr.old-*`` is an interrupted replace (the old store is
renamed back), and ``.partial-*``/``.old-*`` folders of dead processes are debris (removed).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
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

    A thin layer over :class:`filelock.FileLock` (one lock per instance, not per thread, so
    two StoreLocks of one path exclude each other even inside one process). Waits up to
    ``timeout`` seconds for another writer, then raises MedDiftError naming it (its pid, which
    a native lock's holder writes into the lock file and a soft lock records itself).
    """

    def __init__(self, path: str | os.PathLike, timeout: float | None = None, poll: float = 0.05) -> None:
        from filelock import FileLock

        self.path = Path(path)
        self.lock = lock_path(self.path)
        self.timeout = LOCK_TIMEOUT_S if timeout is None else float(timeout)
        self.poll = poll
        self._lock = FileLock(str(self.lock), timeout=self.timeout, poll_interval=poll, thread_local=False)

    @property
    def soft(self) -> bool:
        """True when this lock is filelock's soft lock (no ``fcntl``/``msvcrt`` here)."""
        try:
            self._lock.pid  # native locks have no marker to read and raise AttributeError
        except AttributeError:
            return False
        except Exception:  # noqa: BLE001 - a marker that cannot be read is still a soft lock
            return True
        return True

    def _holder(self) -> str:
        pid = None
        if self.soft:
            try:
                pid = self._lock.pid
            except Exception:  # noqa: BLE001
                pid = None
        else:
            try:
                text = self.lock.read_text().strip()
            except (OSError, UnicodeDecodeError):
                text = ""
            pid = int(text) if text.isdigit() else None
        return f"process {pid}" if pid else "another process"

    def acquire(self) -> "StoreLock":
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise MedDiftError(
                f"{self._holder()} is writing {self.path} (lock {self.lock.name}); "
                "wait for it to finish or choose another output path"
            ) from None
        except OSError as exc:
            raise MedDiftError(
                f"cannot create the lock file {self.lock} ({exc.strerror or exc}); "
                f"choose an output folder you can write to"
            ) from None
        if not self.soft:  # name the holder for a waiter's message (a soft lock records it itself)
            try:
                fd = os.open(self.lock, os.O_WRONLY)
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, str(os.getpid()).encode())
                finally:
                    os.close(fd)
            except OSError:  # pragma: no cover - a courtesy for the message only
                pass
        return self

    @property
    def locked(self) -> bool:
        return self._lock.is_locked

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)

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
