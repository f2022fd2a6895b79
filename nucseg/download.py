"""Getting files: a resumable, verified HTTP download and a checksum lock file.

:func:`fetch` copies a local file or downloads a URL to a destination; only a
verified file ever takes the destination's name. An HTTP transfer streams into
``.<name>.part`` beside the destination; when it is interrupted, the next
attempt (and the next run) asks the server for the rest with an HTTP ``Range``
request. Failed attempts are retried a bounded number of times with
exponential back-off.

Checksums: when the caller gives none, the sha256 of the first complete,
verified download is recorded in a lock file ``<name>.sha256`` next to it
(``sha256sum`` format); every later fetch of the same file is checked against
it.

A full disk stops the transfer at once (it is not retried) with
``no space left on device while writing <dest>``, and the partial file is removed.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nucseg
from nucseg.files import NoSpaceError, atomic_file, reporting_no_space

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: HTTP status codes worth another attempt (the server may recover).
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class DownloadSettings:
    """How hard to try.

    Attributes
    ----------
    retries : int
        Further attempts after the first one fails.
    backoff : float
        Seconds before the first retry; doubled before each next one.
    timeout : float
        Seconds without data before an attempt is abandoned.
    progress : bool or None
        Show a progress bar; ``None``: when standard error is a terminal.
    max_unpacked_gb : float
        Largest total size, in GB (10^9 bytes), of the files unpacked from one archive
        (:func:`nucseg.datasets.unpack_zip`); a larger archive is refused before anything is
        written. The 2018 Data Science Bowl's largest archive unpacks to 0.08 GB.
    max_ratio : float
        Largest compression ratio (unpacked size / packed size) of an archive as a whole and
        of any member over :data:`RATIO_MIN_BYTES`: a zip bomb (a small archive that unpacks
        to a huge file) exceeds it. Image archives hold compressed images and reach about 1;
        raw, mostly empty TIFFs may reach 10-50.
    """

    retries: int = 5
    backoff: float = 2.0
    timeout: float = 60.0
    progress: bool | None = None
    max_unpacked_gb: float = 100.0
    max_ratio: float = 200.0


#: Members smaller than this (bytes) are not held to :attr:`DownloadSettings.max_ratio`: a small
#: empty mask compresses a thousandfold and is harmless.
RATIO_MIN_BYTES = 10 << 20


def sha256sum(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def is_url(source: str) -> bool:
    """Whether ``source`` is an http(s) URL rather than a local path."""
    return str(source).startswith(("http://", "https://"))


def lock_path(dest: str | os.PathLike) -> Path:
    """The lock file that records the sha256 of ``dest``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".sha256")


def read_lock(dest: str | os.PathLike) -> str | None:
    """The sha256 recorded for ``dest``, or ``None``."""
    lock = lock_path(dest)
    if not lock.is_file():
        return None
    text = lock.read_text().split()
    if not text or not re.fullmatch(r"[0-9a-f]{64}", text[0]):
        raise ValueError(f"{lock}: not a sha256 lock file (expected '<64 hex digits>  <name>')")
    return text[0]


def write_lock(dest: str | os.PathLike, digest: str) -> Path:
    lock = lock_path(dest)
    with atomic_file(lock) as tmp:
        tmp.write_text(f"{digest}  {Path(dest).name}\n")
    return lock


def verify_checksum(path: str | os.PathLike, sha256: str | None, name: str | None = None) -> str:
    """Check the sha256 of ``path``; return the digest found.

    Raises
    ------
    ValueError
        Naming the file, the expected and the found digest.
    """
    found = sha256sum(path)
    if sha256 is None:
        log.info("%s: sha256 %s (none expected)", name or path, found)
    elif found != sha256.lower():
        raise ValueError(f"{name or path}: wrong checksum: expected sha256 {sha256}, found {found}")
    else:
        log.info("%s: sha256 verified", name or path)
    return found


class _Incomplete(Exception):
    """The server closed the connection before the announced end."""


def _progress_bar(total: int | None, initial: int, name: str, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name, file=sys.stderr)


def _attempt(url: str, part: Path, settings: DownloadSettings) -> None:
    """One request: append the rest of ``url`` to ``part`` (resuming from its size)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"nucseg/{nucseg.__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=settings.timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            log.info("%s: server has nothing after byte %d: transfer complete", url, offset)
            return
        raise
    with response:
        total = None
        if response.status == 206:
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise _Incomplete(f"unexpected Content-Range {response.headers.get('Content-Range')!r} for a request from byte {offset}")
            total = int(match.group(2)) if match.group(2) != "*" else None
            log.info("%s: resuming at byte %d", url, offset)
        else:
            if offset:
                log.info("%s: server ignored the range request; downloading from the start", url)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        bar = _progress_bar(total, offset, Path(part.name).name.removesuffix(".part").lstrip("."), settings.progress)
        try:
            with reporting_no_space(_dest_of(part)), open(part, "ab" if offset else "wb") as out:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except http.client.IncompleteRead as exc:
                        out.write(exc.partial)
                        raise _Incomplete(f"connection closed after {out.tell()} bytes") from exc
                    if not block:
                        break
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Incomplete(f"got {size} of {total} bytes")


def http_download(url: str, part: str | os.PathLike, settings: DownloadSettings = DownloadSettings()) -> Path:
    """Download ``url`` into ``part``, resuming and retrying; returns ``part`` once complete.

    Raises
    ------
    ValueError
        The server refuses the file (4xx other than 408/425/429), or every
        attempt failed; the message names the URL and the last error. The
        partial file is kept, so a later call resumes it.
    NoSpaceError
        The disk is full: not retried (the partial file is kept; :func:`fetch` removes it).
    """
    part = Path(part)
    last: BaseException | None = None
    for attempt in range(settings.retries + 1):
        try:
            _attempt(url, part, settings)
            return part
        except NoSpaceError:
            raise
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_STATUS:
                raise ValueError(f"{url}: download failed: HTTP {exc.code} {exc.reason}") from exc
            last = exc
        except (_Incomplete, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            last = exc
        if attempt < settings.retries:
            wait = settings.backoff * 2**attempt
            log.warning("%s: attempt %d of %d failed (%s); retrying in %.1f s", url, attempt + 1, settings.retries + 1, last, wait)
            time.sleep(wait)
    raise ValueError(f"{url}: download failed after {settings.retries + 1} attempts ({last})")


def _dest_of(part: Path) -> Path:
    """The file a ``.<name>.part`` file becomes."""
    return part.with_name(part.name.removeprefix(".").removesuffix(".part"))


def _looks_complete(path: Path, name: str, dest: Path) -> None:
    """A downloaded zip must read as a whole (central directory and every CRC)."""
    if not zipfile.is_zipfile(path):
        if dest.suffix.lower() == ".zip":
            raise ValueError(f"{name}: downloaded file is not a complete zip archive")
        return
    with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()
    if bad is not None:
        raise ValueError(f"{name}: downloaded zip archive is corrupt (member {bad!r} fails its CRC)")


def fetch(source: str, dest: str | os.PathLike, sha256: str | None = None, settings: DownloadSettings = DownloadSettings()) -> Path:
    """Copy or download ``source`` to ``dest``; only a verified file takes the name ``dest``.

    Parameters
    ----------
    source : str
        Local path, or http(s) URL.
    dest : path-like
        Where the verified file goes.
    sha256 : str, optional
        Expected hex digest. Without it, the digest recorded in the lock file
        ``<dest>.sha256`` is expected; without that either, the first complete
        download (a zip must pass its CRC checks) is recorded there.
    settings : DownloadSettings

    Raises
    ------
    FileNotFoundError
        A local ``source`` does not exist.
    ValueError
        The download failed, or the checksum differs (the bad bytes are
        deleted, so the next try starts afresh); nothing is left at ``dest``.
    NoSpaceError
        The disk filled up: ``no space left on device while writing <dest>``; the partial
        file is removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = sha256.lower() if sha256 else read_lock(dest)
    part = dest.with_name(f".{dest.name}.part")
    try:
        if is_url(source):
            log.info("downloading %s", source)
            http_download(source, part, settings)
        else:
            if not Path(source).is_file():
                raise FileNotFoundError(f"file not found: {source}")
            log.info("copying %s", source)
            with reporting_no_space(dest):
                shutil.copyfile(source, part)
    except NoSpaceError:
        part.unlink(missing_ok=True)
        raise
    try:
        if expected is None:
            _looks_complete(part, source, dest)
        digest = verify_checksum(part, expected, name=source)
    except ValueError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    if expected is None:
        write_lock(dest, digest)
        log.info("%s: sha256 recorded in %s", source, lock_path(dest))
    return dest
