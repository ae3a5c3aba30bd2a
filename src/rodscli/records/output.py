"""Output paths: checked before a stage runs, written atomically after (a temp file in the
target folder, then a rename), so a failed stage leaves no partial output."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from rodscli.errors import InputError
from rodscli.records.formats import file_format


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(path: str | Path, folder: bool = False) -> str:
    """Raise an InputError now when `path` could not be written at the end of a stage: an
    unknown file type, an existing directory where a file goes (or a file where a folder
    goes), a regular file among its parents, or a place this process cannot write in (tried
    with a temporary file, so read-only file systems count too). Creates nothing."""
    path = str(path)
    if path == "-":
        if folder:
            raise InputError("this output is a folder; stdout cannot hold it", where=path)
        return path
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise InputError("exists and is not a folder", where=path)
    if not folder and target.is_dir():
        raise InputError("is a directory; give a file name", where=path)
    if not folder:
        file_format(path)
    place = target if folder and target.is_dir() else target.absolute().parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise InputError(f"{place} is a file, so nothing can be written under it", where=path)
    try:
        fd, probe = tempfile.mkstemp(dir=place, prefix=".rods-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write in {place}: {exc.strerror or exc}", where=path) from None
    return path


class Atomic:
    """A temp file beside `path`, renamed over it on success, removed on failure."""

    def __init__(self, path: str):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        except OSError as exc:  # the place changed since check_output, or it was never checked
            raise InputError(f"cannot write here: {exc.strerror or exc}", where=path) from None
        # mkstemp makes the file private (0600); outputs get the usual permissions
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)

    def commit(self) -> None:
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:  # e.g. a directory was made at the path meanwhile
            raise InputError(f"cannot write here: {exc.strerror or exc}", where=self.path) from None

    def abort(self) -> None:
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def write_atomic_bytes(path: str | Path, data: bytes) -> None:
    """Write a whole (small) file atomically."""
    target = Atomic(str(path))
    try:
        with open(target.tmp, "wb") as fh:
            fh.write(data)
        target.commit()
    except BaseException:
        target.abort()
        raise

