"""Output paths checked before any long work: can we write there, and is it ours to write?"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ..errors import MedDiftError


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_can_create_in(folder: Path, target: Path, what: str) -> None:
    """MedDiftError unless new entries can be made in ``folder`` (an existing folder).

    ``os.access`` is not enough for read-only mounts and pseudo file systems (/proc, /sys),
    so a probe folder is made and removed."""
    if not folder.is_dir():
        raise MedDiftError(f"{what} {target}: {folder} is a file, not a folder; choose another path")
    probe = folder / f".meddift-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise MedDiftError(
            f"{what} {target}: cannot write in {folder} ({exc.strerror or exc}); choose a folder you can write to"
        ) from None


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """A file we may (over)write: not a folder, in a folder we can write to (made later if missing)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise MedDiftError(f"{what} {path} is a folder; give a file name")
    check_can_create_in(nearest_existing(path.parent), path, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise MedDiftError(f"{what} {path} exists and is read-only; choose another name")
    return path


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """A folder we may write into: an existing writable folder, or one we can create."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise MedDiftError(f"{what} {path} is a file, not a folder; give a folder")
    check_can_create_in(nearest_existing(path), path, what)
    return path


def check_not_special(path: str | os.PathLike, what: str = "input") -> Path:
    """MedDiftError for a pipe (FIFO), device or socket given as a file to read: reading one
    would wait forever. Missing paths and regular files and folders pass (their own checks follow)."""
    path = Path(path).expanduser()
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return path
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise MedDiftError(f"{what} {path} is {kind}, not a file; reading it could wait forever: give a regular file")
    return path


def usable_folder(path: str | os.PathLike, what: str = "cache folder") -> Path:
    """Create ``path`` if needed and make sure we can write in it (for caches)."""
    path = check_output_folder(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedDiftError(f"{what} {path} cannot be created ({exc.strerror or exc}); choose another folder") from None
    check_can_create_in(path, path, what)
    return path
