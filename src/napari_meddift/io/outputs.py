"""Output files: never one of the inputs, written whole or not at all.

* :func:`check_outputs` runs before any work: each output is a file we may write
  (:func:`paths.check_output_file`), not a special file or a dangling link, not the same file as
  an input (compared by device and inode, so a hard link, a symlink or another spelling of the
  path is caught), not inside an input folder (a store), and not the same place as another output.
* :func:`replacing` writes a file as stores are written: into ``NAME.partial-<pid>-<hex>/NAME``
  beside it, then renamed over ``NAME`` (companion files such as an ``.mhd``'s ``.raw`` first).
  A kill or a failure leaves the old file as it was; a full disk is one line and leaves nothing.
  ``.partial-*`` folders of dead processes are removed by the next writer of that name.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from ..errors import MedDiftError
from .locking import pid_alive, sibling_path, siblings
from .paths import check_output_file


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a link to an input is that input
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_outputs(outputs: Mapping[str, object], inputs: Mapping[str, object] = {}) -> dict[str, Path]:
    """Check every output before the work; returns ``{flag: Path}`` of the given ones.

    ``outputs``: ``{flag or name: path or None}``, e.g. ``{"-o/--output": "f.nii.gz"}``.
    ``inputs``: the same for the files and folders read.

    Raises MedDiftError: one line naming the flag, the path and the way out.
    """
    outs = {k: Path(v).expanduser() for k, v in outputs.items() if v not in (None, "")}
    ins = {k: Path(v).expanduser() for k, v in inputs.items() if v not in (None, "")}
    in_ids = {k: ident for k, p in ins.items() if (ident := _identity(p)) is not None}
    in_dirs = {k: in_ids[k] for k, p in ins.items() if k in in_ids and p.is_dir()}
    places: dict[tuple, str] = {}
    for flag, path in outs.items():
        if path.is_symlink() and not path.exists():
            raise MedDiftError(f"{flag} {path} is a dangling symbolic link (to {os.readlink(path)}); "
                               "remove it or choose another name")
        if path.exists():
            mode = os.stat(path).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise MedDiftError(f"{flag} {path} is a special file (a pipe, device or socket), not a regular file; "
                                   "choose a file name")
        check_output_file(path, flag)
        ident = _identity(path)
        for k, i in in_ids.items():
            if ident is not None and ident == i:
                raise MedDiftError(f"{flag} {path} is the input {k} {ins[k]}; writing it would destroy that input: "
                                   "choose another output name")
        absolute = Path(os.path.abspath(path))
        for parent in absolute.parents:  # an output inside an input folder (a store) changes that input
            pid = _identity(parent)
            for k, i in in_dirs.items():
                if pid is not None and pid == i:
                    raise MedDiftError(f"{flag} {path} lies inside the input {k} {ins[k]}; choose a path outside it")
        pid = _identity(_nearest_dir(path.parent))
        place = ident or (pid, os.path.relpath(absolute, os.path.abspath(_nearest_dir(path.parent))))
        if place in places:
            raise MedDiftError(f"{flag} {path} is the same file as {places[place]}; give each output its own name")
        places[place] = flag
    return outs


def _nearest_dir(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise
    finally:
        os.close(fd)


def write_failed(path: Path, exc: BaseException, what: str = "output") -> MedDiftError:
    """The one line for an output that could not be written (full disk, permissions, ...)."""
    err = getattr(exc, "errno", None)
    if err in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
        return MedDiftError(f"{what} {path}: the disk is full; nothing was written (an earlier file there is "
                            "unchanged): free some space or choose another folder")
    text = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    return MedDiftError(f"{what} {path}: cannot be written ({text}); nothing was written: check the folder "
                        "exists, is writable and has free space")


def _clean_dead_partials(path: Path) -> None:
    me = os.getpid()
    for p, kind, pid in siblings(path):
        if kind == "partial" and pid != me and (pid is None or not pid_alive(pid)):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def replacing(path: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """``with replacing(path) as tmp: write(tmp)`` -- ``path`` is replaced by what was written
    to ``tmp`` only when the block finishes; otherwise it stays as it was and nothing is left.

    ``tmp`` has ``path``'s file name (inside a fresh sibling folder), so format detection by
    ending and file names written into headers (``.mhd`` -> ``.raw``) come out right. An
    ``OSError`` (full disk, read-only folder) becomes one MedDiftError.
    """
    path = Path(path).expanduser()
    if path.is_symlink() and path.exists():
        path = Path(os.path.realpath(path))  # write the file the link points to, keep the link
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_dead_partials(path)
        folder = sibling_path(path, "partial")
        folder.mkdir()
    except OSError as exc:
        raise write_failed(path, exc, what) from None
    try:
        tmp = folder / path.name
        yield tmp
        made = sorted(folder.iterdir(), key=lambda p: (p.name == path.name, p.name))
        if not tmp.exists():
            raise MedDiftError(f"{what} {path}: the writer produced no file; nothing was written")
        for f in made:
            _fsync(f)
        for f in made:
            os.replace(f, path.parent / f.name)
        _fsync(path.parent, directory=True)
    except OSError as exc:
        raise write_failed(path, exc, what) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str, what: str = "output") -> Path:
    """Write a text file (a report, a JSON summary) whole or not at all."""
    path = Path(path).expanduser()
    with replacing(path, what) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return path


def write_image(image, path: str | os.PathLike, what: str = "output") -> Path:
    """``sitk.WriteImage`` through :func:`replacing`, checked complete (:func:`check_image_written`)."""
    import SimpleITK as sitk

    path = Path(path).expanduser()
    with replacing(path, what) as tmp:
        try:
            sitk.WriteImage(image, str(tmp))
        except RuntimeError as exc:
            raise write_failed(path, exc, what) from None
        check_image_written(tmp, image, f"{what} {path}")
    return path


def check_image_written(tmp: Path, image, what: str = "output") -> None:
    """MedDiftError unless ``tmp`` (just written by SimpleITK) holds all of ``image``'s voxels.

    ITK's NIfTI writer reports no error when the disk fills up and leaves a truncated file; the
    data bytes are counted here (a .gz stream is read to its end, which checks its CRC)."""
    import gzip
    import zlib

    need = int(image.GetNumberOfPixels()) * int(image.GetNumberOfComponentsPerPixel()) * int(
        image.GetSizeOfPixelComponent())
    name = tmp.name.lower()
    try:
        if name.endswith(".gz"):
            total = 0
            with gzip.open(tmp, "rb") as f:
                while block := f.read(1 << 22):
                    total += len(block)
        else:
            total = sum(p.stat().st_size for p in tmp.parent.iterdir())
    except (OSError, EOFError, zlib.error) as exc:
        raise MedDiftError(f"{what}: the file written is incomplete ({exc}); nothing was written: free some disk "
                           "space or choose another folder") from None
    if total < need:
        raise MedDiftError(f"{what}: only {total} of {need} bytes could be written (the disk is full?); nothing was "
                           "written: free some space or choose another folder")
