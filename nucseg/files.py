"""Atomic outputs: nothing half-written ever takes an output's name, and a full disk says where.

Outputs are built under a hidden temporary sibling name and renamed when complete. A process
killed outright (``kill -9``, a cluster's time limit) cannot clean up after itself: its
temporary folder stays behind, and is removed the next time the same output is written
(:func:`atomic_dir`). Two processes must not write the same output at the same time: Snakemake
never runs two jobs for one output, and the command line holds its output folder
(:func:`locked_folder`). Scratch folders of a killed run are removed by the next run that uses
them (:func:`scratch_dir`, :func:`remove_stale`).

A write that fails because the file system is full raises :class:`NoSpaceError`, whose message
is ``no space left on device while writing <path>`` (or, for a full disk quota or a file size
limit, says so); what was half-written is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

#: errno values that mean "no room to write": a full file system, a full quota, a file size limit.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


#: What each of :data:`NO_SPACE` means, in the message of :class:`NoSpaceError`.
NO_SPACE_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the file system's or the process's file size limit)",
}


class NoSpaceError(OSError):
    """A write failed for want of room; the message names the file being written:
    ``no space left on device while writing <path>`` (or the quota or file size limit)."""

    def __init__(self, path: str | os.PathLike, code: int = errno.ENOSPC):
        super().__init__(code, NO_SPACE_REASONS.get(code, NO_SPACE_REASONS[errno.ENOSPC]), str(path))

    def __str__(self) -> str:
        return f"{self.strerror} while writing {self.filename}"


def no_space_errno(exc: BaseException) -> int | None:
    """The errno (one of :data:`NO_SPACE`) if ``exc``, or an exception it was raised from or
    during, is a write that found no room, else ``None``. Libraries wrap the ``OSError``
    (PyTorch's ``torch.save`` raises a ``RuntimeError`` with it as its context), so the chain
    is searched."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def reporting_no_space(path: str | os.PathLike) -> Iterator[None]:
    """Turn a failed write for want of space inside the block into :class:`NoSpaceError` naming ``path``."""
    try:
        yield
    except NoSpaceError:
        raise
    except Exception as exc:
        code = no_space_errno(exc)
        if code is not None:
            raise NoSpaceError(path, code) from exc
        raise


def _stale_temporaries(dest: Path) -> list[Path]:
    """Temporary folders :func:`atomic_dir` left for ``dest`` (``.<name>.<8 characters>.part``)."""
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.[a-z0-9_]{{8}}\.part")
    if not dest.parent.is_dir():
        return []
    return sorted(p for p in dest.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def remove_stale_temporaries(dest: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders that killed writers of ``dest`` left behind; return them."""
    stale = _stale_temporaries(Path(dest))
    for path in stale:
        log.info("removing %s, left by an interrupted earlier write of %s", path, dest)
        shutil.rmtree(path, ignore_errors=True)
    return stale


def remove_stale(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """Remove the entries of ``folder`` whose whole name matches the regular expression
    ``pattern`` (scratch and temporaries that killed writers left behind); return them.

    Only for a folder no live process is writing into: the one output of a Snakemake job (a
    job owns its outputs), or a folder held with :func:`locked_folder`.
    """
    folder, regex = Path(folder), re.compile(pattern)
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if regex.fullmatch(p.name) and not p.is_symlink())
    for path in stale:
        log.info("removing %s, left by an interrupted earlier run", path)
        if path.is_dir():
            _rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return stale


def _rmtree(path: Path, settle: float = 0.0) -> None:
    """Remove a folder; again if a writer thread that had not yet stopped (a failed zarr write's
    siblings) added to it meanwhile (``Directory not empty``). ``settle``: after a failed write,
    the folder must stay gone this many seconds (a loaded machine runs such a thread late: one
    re-created a chunk's folder after the first removal), retried for up to 10 s."""
    deadline = time.monotonic() + 10.0
    while True:
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(settle if not path.exists() else 0.1)
        if not path.exists():
            return
        if time.monotonic() > deadline:
            shutil.rmtree(path)
            return


@contextlib.contextmanager
def scratch_dir(folder: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A temporary folder ``<folder>/<prefix><8 characters>`` for the block, removed afterwards
    whatever happens; those a killed run left (same prefix) are removed first, so call it only
    where no live process shares the prefix (:func:`remove_stale`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale(folder, re.escape(prefix) + r"[a-z0-9_]{8}")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    try:
        yield path
    finally:
        _rmtree(path)


#: The lock file :func:`locked_folder` holds in the folder.
LOCK_NAME = ".nucseg.lock"


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold ``<folder>/.nucseg.lock`` for the block, so that one process at a time writes into
    ``folder``; a second is refused at once.

    The lock is the kernel's (``flock``): it ends with the process that holds it, however that
    ends, so the lock file a killed run leaves behind blocks nothing. The file holds the holder's
    process id, and is removed when the block ends.

    Raises
    ------
    ValueError
        Another process holds the folder: ``<folder>: another <command> (process <pid>) is
        writing into this folder; wait for it to end, or choose another folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            message = f"{folder}: another {command} (process {holder}) is writing into this folder; wait for it to end, or choose another folder"
            raise ValueError(message) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed the file between our open and our lock: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary sibling name; rename it to ``dest`` on success.

    On any exception the temporary folder is removed and ``dest`` is left as it was; a full
    disk raises :class:`NoSpaceError` naming ``dest``. Temporary folders of ``dest`` left by
    an earlier writer that was killed are removed first.

    Examples
    --------
    >>> with atomic_dir(tmp_path / "out.zarr") as tmp:  # doctest: +SKIP
    ...     write_things(tmp)
    """
    dest = Path(dest)
    if dest.exists():
        if not overwrite:
            raise FileExistsError(f"{dest} exists already")
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        with reporting_no_space(dest):
            yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            _rmtree(tmp, settle=0.5)  # writer threads of a failed write (dask, zarr) may still be adding files


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, unique: bool = False) -> Iterator[Path]:
    """Write a file under the temporary sibling name ``.<name>.part``; rename it to ``path``
    on success. On any exception the temporary file is removed and ``path`` is left as it was;
    a full disk raises :class:`NoSpaceError` naming ``path``.

    ``unique``: the temporary name is ``.<name>.<8 characters>.part``, one per writer, for a
    file that several processes may write at once with the same content (a cache): each
    writes its own temporary and the last rename wins, never a mixture.

    Examples
    --------
    >>> with atomic_file(tmp_path / "table.csv") as tmp:  # doctest: +SKIP
    ...     table.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part" if unique else f".{path.name}.part")
    try:
        with reporting_no_space(path):
            yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as CSV under a temporary name, then rename it to ``path``."""
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)
