"""Download stage: get a dataset, verify it, unpack it safely; read its images and ground truth.

A dataset is declared by a ``source`` (an http(s) URL or a local path), a
``layout`` and optionally a ground-truth ``solution`` file:

``dsb`` (the 2018 Data Science Bowl layout)
    A zip archive of ``<id>/images/<id>.png``, with either ``<id>/masks/*.png``
    (one binary mask per nucleus: the training layout) or a solution CSV
    (``ImageId, EncodedPixels, Height, Width[, Usage]``: the test layout).
``images`` (a user's own images)
    A folder, a glob pattern or a zip archive of PNG, JPEG or TIFF files, any
    bit depth, greyscale, RGB or RGBA; no ground truth. The image id is the
    file's path below the folder, without suffix, ``/`` written as ``__``.
``semantic`` (images with a class per pixel: the semantic task, :mod:`nucseg.tasks.semantic`)
    A zip archive (or folder) of ``images/<id>.<ext>`` and ``labels/<id>.<ext>``: a label
    image of the same size holding one declared value per class (``classes`` in the
    config); an image without a label file has no ground truth.
``stardist`` and ``cellpose`` (images beside instance label images, :mod:`nucseg.layouts`)
    ``images/<name>.<ext>`` beside ``masks/<name>.tif``, or ``<name>_img.png`` beside
    ``<name>_masks.png``: a zip archive or a folder; every image has its label image.

Every layout's source may be a zip archive or a local folder (whose files are linked, not
copied); ``images`` also takes a glob pattern.

The download stage makes ``results/datasets/<name>/``: the unpacked archive
(``subdir`` picks a folder inside it), links to the user's files for a folder
or glob, and the solution as ``solution.csv``. :func:`list_images` and
:func:`read_sample` read it back, one image at a time.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from nucseg.download import CHUNK, RATIO_MIN_BYTES, DownloadSettings, fetch, is_url, read_lock, sha256sum, verify_checksum
from nucseg.files import NoSpaceError, atomic_dir, reporting_no_space
from nucseg.imageio import IMAGE_SUFFIXES, decode_image, read_image_info
from nucseg.layouts import EXPECTED, PAIRED_LAYOUTS, index_pairs, read_label_image

log = logging.getLogger(__name__)

__all__ = [
    "unpack_zip",
    "download_dataset",
    "source_files",
    "local_image_files",
    "list_images",
    "read_sample",
    "load_solution",
    "Sample",
    "LAYOUTS",
]

LAYOUTS = ("dsb", "images", "semantic") + PAIRED_LAYOUTS
#: The layouts whose datasets hold ground truth for every image (scored by default as test sets).
GROUND_TRUTH_LAYOUTS = ("dsb", "semantic") + PAIRED_LAYOUTS
SOLUTION = "solution.csv"
#: Beside the copy ``solution.csv``: the user's file (or URL) it was copied from, which messages name.
SOLUTION_SOURCE = "solution.source"


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


def _check_unique_members(members: list[tuple[zipfile.ZipInfo, PurePosixPath | None]], archive: Path) -> None:
    """Refuse an archive holding two members of one name: unpacked, the later would silently
    replace the earlier."""
    seen: set[PurePosixPath] = set()
    for info, rel in members:
        if rel is None:
            continue
        if rel in seen:
            raise ValueError(f"{archive}: two members are named {str(rel)!r}; unpacking would keep only the later one")
        seen.add(rel)


def _check_sizes(members: list[tuple[zipfile.ZipInfo, PurePosixPath]], archive: Path, settings: DownloadSettings) -> None:
    """Refuse an archive whose members would unpack beyond the settings' bounds (a zip bomb)."""
    total = sum(info.file_size for info, _ in members)
    packed = sum(info.compress_size for info, _ in members)
    limit = settings.max_unpacked_gb * 1e9
    if total > limit:
        raise ValueError(
            f"{archive}: refusing to unpack {total / 1e9:.3g} GB (more than download.max_unpacked_gb = {settings.max_unpacked_gb:g} GB); "
            "raise that setting if the archive is trusted"
        )
    ratios = [(repr(info.filename), info.file_size / max(info.compress_size, 1)) for info, _ in members if info.file_size >= RATIO_MIN_BYTES]
    if total >= RATIO_MIN_BYTES:
        ratios.append(("the archive as a whole", total / max(packed, 1)))
    for what, ratio in ratios:
        if ratio > settings.max_ratio:
            raise ValueError(
                f"{archive}: refusing to unpack: {what} would unpack to {ratio:.0f} times its packed size "
                f"(more than download.max_ratio = {settings.max_ratio:g}: a zip bomb?); raise that setting if the archive is trusted"
            )


def _unpack_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, archive: Path) -> None:
    """Copy one member to ``target``, never more bytes than its header declares."""
    left = info.file_size
    with zf.open(info) as src, open(target, "wb") as out:
        while block := src.read(CHUNK):
            left -= len(block)
            if left < 0:
                raise ValueError(f"{archive}: member {info.filename!r} unpacks to more than the {info.file_size} bytes its header declares")
            out.write(block)


def unpack_zip(archive: str | os.PathLike, dest: str | os.PathLike, subdir: str | None = None, settings: DownloadSettings = DownloadSettings()) -> Path:
    """Unpack a zip archive into ``dest``, atomically and safely.

    Every member is checked before anything is written: absolute paths, ``..``
    and symbolic links are refused, and so is an archive that would unpack to
    more than ``settings.max_unpacked_gb`` or at a compression ratio above
    ``settings.max_ratio`` (a zip bomb). Each member's CRC is verified while
    reading, and no member may unpack beyond the size its header declares. The
    archive is unpacked into a temporary sibling folder that is renamed to
    ``dest`` at the end, so an interrupted or failed unpack leaves nothing at
    ``dest``.

    Parameters
    ----------
    subdir : str, optional
        Only the members below this folder of the archive, with that prefix
        removed (e.g. ``repo-master/stage1_train``).
    settings : DownloadSettings
        The bounds ``max_unpacked_gb`` and ``max_ratio``.

    Raises
    ------
    ValueError
        The archive is truncated, corrupt, too large, or has an unsafe member;
        or ``subdir`` is not in it. The message names the archive.
    NoSpaceError
        The disk filled up: ``no space left on device while writing <file>``.
    FileExistsError
        ``dest`` exists already.
    """
    archive = Path(archive)
    prefix = PurePosixPath(subdir.strip("/")).parts if subdir else ()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, OSError) as exc:
        raise ValueError(f"{archive}: truncated or corrupt zip archive ({exc})") from exc
    with zf:
        members = [(info, _safe_member(info, str(archive))) for info in zf.infolist()]
        _check_unique_members(members, archive)
        members = [(info, rel) for info, rel in members if rel is not None and rel.parts[: len(prefix)] == prefix and len(rel.parts) > len(prefix)]
        if prefix and not members:
            raise ValueError(f"{archive}: no member below {subdir!r}")
        _check_sizes(members, archive, settings)
        with atomic_dir(dest) as tmp:
            for info, rel in members:
                parts = rel.parts[len(prefix) :]
                target = tmp.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with reporting_no_space(Path(dest).joinpath(*parts)):
                        _unpack_member(zf, info, target, archive)
                except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                    raise ValueError(f"{archive}: truncated or corrupt zip archive ({exc})") from exc
                except OSError as exc:
                    if isinstance(exc, NoSpaceError):
                        raise
                    raise ValueError(f"{archive}: cannot unpack member {info.filename!r} ({exc})") from exc
    return Path(dest)


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if _is_image_file(p))


def local_image_files(source: str) -> list[Path]:
    """The PNG, JPEG and TIFF files of a local folder (searched recursively) or glob pattern,
    sorted, as absolute paths; hidden files are left out."""
    if Path(source).is_dir():
        return _image_files(Path(source).resolve())
    return sorted(Path(p).resolve() for p in glob.glob(source, recursive=True) if _is_image_file(Path(p)))


def source_files(source: str | None, layout: str = "dsb") -> list[Path]:
    """The local files a dataset is made from: the workflow makes them the download job's input,
    so that a replaced archive, or an image (or label image) added to, removed from or changed
    in a folder, reruns the dataset's stages.

    A URL gives none (its checksum or lock file guards it), and so does a local path that does
    not exist: the download job then stops with a message naming it.
    """
    if not source or is_url(source):
        return []
    if Path(source).is_file():
        return [Path(source)]
    return local_image_files(source) if layout == "images" or Path(source).is_dir() else []


def _link_images(source: str, dest: Path) -> None:
    """Make ``dest`` a folder of links to the image files of a local folder (its sub-folders
    kept) or glob pattern."""
    files = local_image_files(source)
    if not files:
        raise FileNotFoundError(f"no PNG, JPEG or TIFF image found at {source}")
    root = Path(source).resolve() if Path(source).is_dir() else Path(os.path.commonpath([str(f.parent) for f in files]))
    with atomic_dir(dest) as tmp:
        for f in files:
            link = tmp / f.relative_to(root)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f)


def _archive_for(source: str, sha256: str | None, cache: Path, settings: DownloadSettings) -> Path:
    """A verified local copy of an archive: downloaded into ``cache`` (kept), or the local file itself."""
    if is_url(source):
        archive = cache / PurePosixPath(source.split("?")[0]).name
        expected = sha256.lower() if sha256 else read_lock(archive)
        if archive.is_file() and expected and sha256sum(archive) == expected:
            log.info("using cached %s", archive)
            return archive
        return fetch(source, archive, sha256, settings)
    archive = Path(source)
    if not archive.is_file():  # a folder never comes here: download_dataset links its files
        raise FileNotFoundError(f"dataset archive not found: {source}" + (" (it exists but is not a regular file)" if archive.exists() else ""))
    verify_checksum(archive, sha256)
    return archive


def _lay_out(source: str, dest: Path, sha256: str | None, layout: str, subdir: str | None, cache: Path, settings: DownloadSettings) -> None:
    """Make ``dest`` from the source: links to the image files of a local folder (or, for the
    ``images`` layout, of a glob pattern), else the unpacked (downloaded, verified) archive."""
    if not is_url(source) and Path(source).is_dir():
        if sha256:
            raise ValueError(f"{source} is a folder: a sha256 checksum is for an archive (leave sha256 out for a folder)")
        _link_images(str(Path(source, subdir)) if subdir else source, dest)
    elif layout == "images" and not is_url(source) and not str(source).lower().endswith(".zip"):
        _link_images(source, dest)
    else:
        unpack_zip(_archive_for(source, sha256, cache, settings), dest, subdir, settings)


def _copy_solution(solution: str, solution_sha256: str | None, dest: Path, cache: Path, settings: DownloadSettings) -> None:
    """Copy the solution CSV (downloaded into ``cache``, or a local file; verified) to
    ``dest/solution.csv``, and note beside it where it came from."""
    if is_url(solution):
        local = fetch(solution, cache / PurePosixPath(solution.split("?")[0]).name, solution_sha256, settings)
    else:
        local = Path(solution)
        if not local.is_file():
            raise FileNotFoundError(f"solution file not found: {solution}")
        verify_checksum(local, solution_sha256)
    shutil.copyfile(local, dest / SOLUTION)
    (dest / SOLUTION_SOURCE).write_text(f"{solution}\n")


def download_dataset(
    source: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    layout: str = "dsb",
    solution: str | None = None,
    solution_sha256: str | None = None,
    subdir: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    settings: DownloadSettings = DownloadSettings(),
) -> Path:
    """Download stage: get a dataset, verify it, and lay it out in ``dest``.

    Parameters
    ----------
    source : str
        http(s) URL or local path of a zip archive, or a local folder in the layout (its image
        files are linked, not copied); for ``layout="images"`` also a glob pattern of image files.
    dest : path-like
        Folder to create (atomically: nothing is left there on error).
    sha256 : str, optional
        Expected checksum of the archive. A downloaded archive without one is
        checked against (or recorded in) the lock file ``<archive>.sha256``
        in ``cache_dir``.
    layout : {"dsb", "images", "semantic", "stardist", "cellpose"}
    solution, solution_sha256 : str, optional
        Ground truth of a ``dsb`` test set: a solution CSV (URL or path), kept as ``dest/solution.csv``.
    subdir : str, optional
        Folder inside the archive (or the folder) that holds the layout.
    cache_dir : path-like, optional
        Where downloaded files are kept (default: ``<dest>/../downloads``).

    Returns
    -------
    Path
        ``dest``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {layout!r}; choose one of {LAYOUTS}")
    dest = Path(dest)
    cache = Path(cache_dir) if cache_dir is not None else dest.parent / "downloads"
    _lay_out(source, dest, sha256, layout, subdir, cache, settings)
    try:
        if solution:
            _copy_solution(solution, solution_sha256, dest, cache, settings)
            load_solution(dest, list_images(dest, layout))  # unknown ids or bad runs stop here
        ids = list_images(dest, layout)
        if not ids:
            expected = {"dsb": "<id>/images/<id>.png", "semantic": "images/<id>.png with labels/<id>.png", **EXPECTED}.get(layout, "PNG, JPEG or TIFF files")
            raise ValueError(f"{source}: no image found in the {layout!r} layout ({expected})")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    log.info("%s: %d images in %s", source, len(ids), dest)
    return dest


def list_images(root: str | os.PathLike, layout: str = "dsb") -> list[str]:
    """Image ids of a dataset folder made by :func:`download_dataset`, sorted.

    ``dsb``: the folders holding ``images/<id>.*``. ``images``: every image
    file below ``root``, its relative path without suffix, ``/`` as ``__``.
    ``semantic``: the same below ``images/``. ``stardist``, ``cellpose``: the ids of
    :func:`nucseg.layouts.index_pairs`.

    Raises
    ------
    ValueError
        Two files of one id, or (paired layouts) an image without its label image or the
        reverse; the message names the files.
    """
    return sorted(_index(root, layout))


def _image_id(path: Path, root: Path) -> str:
    return "__".join(path.relative_to(root).with_suffix("").parts)


def _ids_of_files(root: Path) -> dict[str, Path]:
    """``{id: file}`` of the image files below ``root``, in one pass (linear: plate screens
    have 100,000 images and more); two files of one id are refused."""
    index: dict[str, Path] = {}
    for path in _image_files(root):
        image_id = _image_id(path, root)
        if image_id in index:
            raise ValueError(f"{root}: several files share the image id {image_id!r} (same name, other suffix): {index[image_id]} and {path}")
        index[image_id] = path
    return index


def _dsb_ids(root: Path) -> dict[str, Path]:
    index = {}
    for folder in root.iterdir() if root.is_dir() else ():
        found = sorted((folder / "images").glob(f"{glob.escape(folder.name)}.*")) if folder.is_dir() else []
        if found:
            index[folder.name] = found[0]
    return index


@functools.lru_cache(maxsize=8)
def _cached_index(root: str, layout: str, stamp: int, cwd: str) -> dict:
    path = Path(root)
    if layout == "dsb":
        return _dsb_ids(path)
    if layout == "images":
        return _ids_of_files(path)
    if layout == "semantic":
        return _ids_of_files(path / "images") if (path / "images").is_dir() else {}
    if layout in PAIRED_LAYOUTS:
        return index_pairs(path, layout)
    raise ValueError(f"unknown dataset layout {layout!r}; choose one of {LAYOUTS}")


def _index(root: str | os.PathLike, layout: str) -> dict:
    """The dataset's ``{id: image file}`` (paired layouts: ``{id: (image, label image)}``), made
    once per folder (a dataset folder is written whole by the download stage and not changed
    after: the folder's modification time is part of the key all the same). The files are
    paths below ``root`` as given (relative where it is), so that what records them (the index
    tables' ``source``) is the same in every working directory."""
    root = Path(root)
    stamp = root.stat().st_mtime_ns if root.exists() else 0
    return _cached_index(str(root), layout, stamp, os.getcwd())


def image_path(root: str | os.PathLike, image_id: str, layout: str) -> Path:
    """The image file of ``image_id`` in an unpacked dataset of ``layout``.

    Raises
    ------
    ValueError
        No such image; the message names the folder and the id.
    """
    found = _index(root, layout).get(image_id)
    if found is None:
        raise ValueError(f"{root}: no image file for image id {image_id!r}")
    return found[0] if layout in PAIRED_LAYOUTS else found


@dataclass(frozen=True)
class Sample:
    """One image of a dataset with its ground truth.

    Attributes
    ----------
    image_id : str
    image : (H, W, 3) ndarray of uint8
    labels : (H, W) ndarray of uint32 or None
        0 is background, 1..N the nuclei; ``None`` when the dataset has no ground truth for it.
    n_overlap : int
        Pixels claimed by more than one mask (each goes to the mask read last).
    info : dict
        ``bit_depth`` and ``channels`` of the image file (see :func:`nucseg.imageio.describe_pixels`).
    """

    image_id: str
    image: np.ndarray
    labels: np.ndarray | None
    n_overlap: int = 0
    info: dict = field(default_factory=dict)


def solution_name(root: str | os.PathLike) -> str:
    """The ground-truth file as messages name it: the user's file (or URL) that the dataset's
    ``solution.csv`` was copied from, else the copy."""
    source = Path(root) / SOLUTION_SOURCE
    return source.read_text().strip() if source.is_file() else str(Path(root) / SOLUTION)


def load_solution(root: str | os.PathLike, ids: list[str] | None = None) -> dict[str, np.ndarray] | None:
    """Label images of the dataset's ``solution.csv``, or ``None`` when there is none.

    Raises
    ------
    ValueError
        The CSV names an ImageId that is not among ``ids``, or a run is malformed
        or beyond its image; the message names the file and the ImageId.
    """
    path = Path(root) / SOLUTION
    if not path.is_file():
        return None
    from nucseg.rle import read_solution

    name = solution_name(root)
    labels = read_solution(path, name)
    if ids is not None:
        unknown = sorted(set(labels) - set(ids))
        if unknown:
            raise ValueError(f"{name}: ImageId {unknown[0]!r} is not an image of the dataset ({len(unknown)} unknown ids)")
    return labels


def _masks_to_labels(mask_dir: Path, shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Merge per-nucleus mask files into a label image (see :func:`read_sample`)."""
    labels = np.zeros(shape, np.uint32)
    claimed = np.zeros(shape, bool)
    overlap = np.zeros(shape, bool)
    label = 0
    for mask_path in sorted(mask_dir.iterdir()):
        if not mask_path.is_file() or mask_path.name.startswith("."):
            continue
        mask = decode_image(mask_path.read_bytes(), str(mask_path))
        if mask.ndim == 3:  # a grey+alpha or RGB(A) mask: any colour channel counts, alpha does not
            mask = mask[..., : 1 if mask.shape[2] == 2 else 3].max(axis=2)
        if mask.shape != shape:
            raise ValueError(f"{mask_path}: mask of size {mask.shape} differs from its image's size {shape}")
        inside = mask > 0
        if not inside.any():
            log.warning("%s: empty mask skipped", mask_path)
            continue
        label += 1
        overlap |= claimed & inside
        claimed |= inside
        labels[inside] = label
    return labels, int(np.count_nonzero(overlap))


def _semantic_labels(root: Path, image_id: str, shape: tuple[int, int], class_values: tuple[int, ...] | None) -> np.ndarray | None:
    """The ``labels/<id>.*`` image of the semantic layout as class indices (raw values without
    ``class_values``), or ``None`` when there is none."""
    path = _index(root / "labels", "images").get(image_id)
    if path is None:
        return None
    labels = decode_image(path.read_bytes(), str(path))
    if labels.ndim == 3 and labels.shape[2] in (3, 4) and (labels[..., :3] == labels[..., :1]).all():
        labels = labels[..., 0]  # a grey label image saved as RGB(A)
    if labels.ndim != 2:
        raise ValueError(f"{path}: a label image must hold one value per pixel (greyscale), got shape {labels.shape}")
    if labels.shape != shape:
        raise ValueError(f"{path}: label image of size {labels.shape} differs from its image's size {shape}")
    if class_values is None:
        return labels.astype(np.uint32)
    from nucseg.classmaps import to_class_index

    return to_class_index(labels, class_values, str(path))


def ground_truth(root: str | os.PathLike, image_id: str, layout: str, solution: dict[str, np.ndarray] | None = None) -> str | None:
    """Where :func:`read_sample` takes an image's ground truth from: ``"labels"`` (the semantic
    layout's label file), ``"masks"`` (the dsb layout's masks folder), ``"label_image"`` (the
    stardist and cellpose layouts' instance label image), ``"solution"`` (the decoded solution
    CSV), or None."""
    if layout == "semantic":
        return "labels"
    if layout in PAIRED_LAYOUTS:
        return "label_image"
    if layout == "dsb" and (Path(root) / image_id / "masks").is_dir():
        return "masks"
    if solution is not None and image_id in solution:
        return "solution"
    return None


def read_sample(
    root: str | os.PathLike, image_id: str, layout: str = "dsb", solution: dict[str, np.ndarray] | None = None, class_values: tuple[int, ...] | None = None
) -> Sample:
    """Read one image and its ground truth.

    Ground truth comes from the image's ``masks/`` folder (``dsb`` training
    layout), else from ``solution`` (the decoded ``solution.csv``, see
    :func:`load_solution`), else there is none. Masks are read in sorted
    file-name order and numbered 1..N in that order. Where two masks overlap
    (it happens by a pixel in the challenge data) the later mask takes the
    pixel; an empty mask is skipped with a warning, so numbering stays
    consecutive.

    ``semantic`` layout: the ground truth is ``labels/<id>.*``, turned into class indices
    (0..K-1, ``uint8``) by ``class_values``, the label value of each class in order.
    ``stardist`` and ``cellpose`` layouts: the image's label image, its values kept
    (:func:`nucseg.layouts.read_label_image`).

    Raises
    ------
    ValueError
        An unreadable image or mask, or a mask or solution entry whose size differs from its image;
        a semantic label image whose size differs from its image or that holds a value outside
        ``class_values`` (the message names the file and the value).
    """
    root = Path(root)
    image, info = read_image_info(image_path(root, image_id, layout))
    shape = image.shape[:2]
    source = ground_truth(root, image_id, layout, solution)
    if source == "labels":
        return Sample(image_id, image, _semantic_labels(root, image_id, shape, class_values), 0, info)
    if source == "masks":
        labels, n_overlap = _masks_to_labels(root / image_id / "masks", shape)
        return Sample(image_id, image, labels, n_overlap, info)
    if source == "label_image":
        return Sample(image_id, image, read_label_image(_index(root, layout)[image_id][1], shape), 0, info)
    if source == "solution":
        labels = solution[image_id]
        if labels.shape != shape:
            raise ValueError(f"{solution_name(root)}: ImageId {image_id!r} has size {labels.shape} but its image is {shape}")
        return Sample(image_id, image, labels, 0, info)
    return Sample(image_id, image, None, 0, info)
