"""Atomic outputs: nothing half-written ever takes an output's name."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary sibling name; rename it to ``dest`` on success.

    On any exception the temporary folder is removed and ``dest`` is left as it was.

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
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file under the temporary sibling name ``.<name>.part``; rename it to ``path``
    on success. On any exception the temporary file is removed and ``path`` is left as it was.

    Examples
    --------
    >>> with atomic_file(tmp_path / "table.csv") as tmp:  # doctest: +SKIP
    ...     table.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as CSV under a temporary name, then rename it to ``path``."""
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)
