"""Download stage: fetch a dataset archive, verify it, unpack it safely, read its layout.

A dataset is an archive (a local path or an http(s) URL) in the 2018 Data
Science Bowl training layout::

    <image_id>/images/<image_id>.png     one image
    <image_id>/masks/<mask_id>.png       one binary mask per nucleus (0 outside, >0 inside)

The embedded sample (``resources/sample``) and the real challenge archives go
through the same code: :func:`fetch` (copy or download, sha256 check, atomic
rename), :func:`unpack_zip` (no member may leave the target folder) and
:func:`read_sample` (image + label image).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from nucseg.files import atomic_dir
from nucseg.imageio import decode_image, read_image

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def sha256sum(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def is_url(source: str) -> bool:
    """Whether ``source`` is an http(s) URL rather than a local path."""
    return source.startswith(("http://", "https://"))


def fetch(source: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Copy or download ``source`` to ``dest``; only a verified file takes the name ``dest``.

    Parameters
    ----------
    source : str
        Local path, or http(s) URL.
    dest : path-like
        Where the verified file goes. The transfer goes to a temporary file in
        the same folder, which is renamed once its checksum matches.
    sha256 : str, optional
        Expected hex digest. ``None`` skips the check (and logs the digest found).

    Raises
    ------
    FileNotFoundError
        A local ``source`` does not exist.
    ValueError
        The checksum differs; nothing is left at ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            if is_url(source):
                log.info("downloading %s", source)
                try:
                    with urllib.request.urlopen(source, timeout=timeout) as response:
                        shutil.copyfileobj(response, out, CHUNK)
                except (urllib.error.URLError, OSError) as exc:
                    raise ValueError(f"{source}: download failed ({exc})") from exc
            else:
                if not Path(source).is_file():
                    raise FileNotFoundError(f"dataset archive not found: {source}")
                log.info("copying %s", source)
                with open(source, "rb") as fh:
                    shutil.copyfileobj(fh, out, CHUNK)
        verify_checksum(tmp, sha256, name=source)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def verify_checksum(path: str | os.PathLike, sha256: str | None, name: str | None = None) -> str:
    """Check the sha256 of ``path``; return the digest found.

    Raises
    ------
    ValueError
        Naming the file, the expected and the found digest.
    """
    found = sha256sum(path)
    if sha256 is None:
        log.warning("%s: no sha256 given; found %s", name or path, found)
    elif found != sha256.lower():
        raise ValueError(f"{name or path}: wrong checksum: expected sha256 {sha256}, found {found}")
    else:
        log.info("%s: sha256 verified", name or path)
    return found


def _safe_member(info: zipfile.ZipInfo, archive: str) -> PurePosixPath | None:
    """The member's relative path, or an error if it would escape the target folder."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    mode = info.external_attr >> 16
    if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"{archive}: member {info.filename!r} would be written outside the target folder")
    if stat.S_ISLNK(mode):
        raise ValueError(f"{archive}: member {info.filename!r} is a symbolic link; refusing to unpack it")
    if info.is_dir():
        return None
    return path


def unpack_zip(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a zip archive into ``dest``, atomically and safely.

    Every member is checked before anything is written: absolute paths, ``..``
    and symbolic links are refused. Each member's CRC is verified while
    reading. The archive is unpacked into a temporary sibling folder that is
    renamed to ``dest`` at the end, so an interrupted or failed unpack leaves
    nothing at ``dest``.

    Raises
    ------
    ValueError
        The archive is truncated, corrupt, or has an unsafe member; the message names it.
    FileExistsError
        ``dest`` exists already.
    """
    archive = Path(archive)
    with atomic_dir(dest) as tmp:
        try:
            with zipfile.ZipFile(archive) as zf:
                members = [(info, _safe_member(info, str(archive))) for info in zf.infolist()]
                for info, rel in members:
                    if rel is None:
                        continue
                    target = tmp.joinpath(*rel.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
        except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, OSError, zlib.error) as exc:
            raise ValueError(f"{archive}: truncated or corrupt zip archive ({exc})") from exc
    return dest


def download_dataset(source: str, dest: str | os.PathLike, sha256: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download stage: get a dataset archive, verify it, unpack it into ``dest``.

    Parameters
    ----------
    source : str
        Local path or http(s) URL of a zip archive in the challenge layout.
    dest : path-like
        Folder to create with the unpacked dataset.
    sha256 : str, optional
        Expected checksum of the archive.
    cache_dir : path-like, optional
        Where a downloaded archive is kept (URLs only; default: ``dest``'s parent
        folder ``downloads``). A local archive is verified and unpacked in place.

    Returns
    -------
    Path
        ``dest``, holding one folder per image.
    """
    dest = Path(dest)
    if is_url(source):
        cache = Path(cache_dir) if cache_dir is not None else dest.parent / "downloads"
        archive = cache / PurePosixPath(source.split("?")[0]).name
        if archive.is_file() and sha256 and sha256sum(archive) == sha256.lower():
            log.info("using cached %s", archive)
        else:
            fetch(source, archive, sha256)
    else:
        archive = Path(source)
        if not archive.is_file():
            raise FileNotFoundError(f"dataset archive not found: {source}")
        verify_checksum(archive, sha256)
    unpack_zip(archive, dest)
    ids = list_images(dest)
    if not ids:
        shutil.rmtree(dest)
        raise ValueError(f"{source}: no image found in the <id>/images/<id>.png layout")
    log.info("%s: %d images unpacked into %s", source, len(ids), dest)
    return dest


def list_images(root: str | os.PathLike) -> list[str]:
    """Image ids of an unpacked dataset (folders holding ``images/<id>.*``), sorted."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any((p / "images").glob(f"{p.name}.*")))


@dataclass(frozen=True)
class Sample:
    """One image of a dataset with its ground truth.

    Attributes
    ----------
    image_id : str
    image : (H, W, 3) ndarray of uint8
    labels : (H, W) ndarray of uint32 or None
        0 is background, 1..N the nuclei; ``None`` when the dataset has no masks.
    n_overlap : int
        Pixels claimed by more than one mask (each goes to the mask read last).
    """

    image_id: str
    image: np.ndarray
    labels: np.ndarray | None
    n_overlap: int = 0


def read_sample(root: str | os.PathLike, image_id: str) -> Sample:
    """Read one image and merge its per-nucleus masks into a label image.

    Masks are read in sorted file-name order and numbered 1..N in that order.
    Where two masks overlap (it happens by a pixel in the challenge data) the
    later mask takes the pixel; an empty mask is skipped with a warning, so
    numbering stays consecutive.

    Raises
    ------
    ValueError
        An unreadable image or mask, or a mask whose size differs from its image.
    """
    folder = Path(root) / image_id
    candidates = sorted((folder / "images").glob(f"{image_id}.*"))
    if not candidates:
        raise ValueError(f"{folder}: no image file images/{image_id}.*")
    image = read_image(candidates[0])
    mask_dir = folder / "masks"
    if not mask_dir.is_dir():
        return Sample(image_id, image, None)
    labels = np.zeros(image.shape[:2], np.uint32)
    claimed = np.zeros(image.shape[:2], bool)
    overlap = np.zeros(image.shape[:2], bool)
    label = 0
    for mask_path in sorted(mask_dir.iterdir()):
        if not mask_path.is_file() or mask_path.name.startswith("."):
            continue
        mask = decode_image(mask_path.read_bytes(), str(mask_path))
        if mask.ndim == 3:  # an RGB(A) mask: any colour channel counts, alpha does not
            mask = mask[..., :3].max(axis=2)
        if mask.shape != labels.shape:
            raise ValueError(f"{mask_path}: mask of size {mask.shape} differs from its image's size {labels.shape}")
        inside = mask > 0
        if not inside.any():
            log.warning("%s: empty mask skipped", mask_path)
            continue
        label += 1
        overlap |= claimed & inside
        claimed |= inside
        labels[inside] = label
    return Sample(image_id, image, labels, int(np.count_nonzero(overlap)))
