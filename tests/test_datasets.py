"""Tests of nucseg.datasets: fetch (local and over HTTP), safe unpacking, the challenge layout.

Nothing here touches the network: downloads come from an HTTP server the test
starts on 127.0.0.1, serving a folder of ``tmp_path``.
"""

from __future__ import annotations

import functools
import http.server
import io
import re
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from nucseg.datasets import download_dataset, list_images, read_sample, source_files, unpack_zip
from nucseg.download import DownloadSettings, fetch, is_url, sha256sum, verify_checksum

from .conftest import REPO, snakemake

SAMPLE_TEST = REPO / "resources" / "sample" / "sample_test.zip"
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256(b"abc")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the signature of the base class
        pass


@pytest.fixture
def http_root(tmp_path):
    """``(folder, base_url)``: files put in ``folder`` are served at ``base_url + name``."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def part_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".part" in p.name]


def sample_sha256() -> str:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return config["datasets"]["sample_test"]["sha256"]


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- checksums and fetch


def test_sha256sum_and_verify(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert sha256sum(path) == ABC_SHA256
    assert verify_checksum(path, ABC_SHA256.upper()) == ABC_SHA256
    assert verify_checksum(path, None) == ABC_SHA256
    with pytest.raises(ValueError, match=re.escape(f"{path}: wrong checksum: expected sha256 {'0' * 64}, found {ABC_SHA256}")):
        verify_checksum(path, "0" * 64)


@pytest.mark.parametrize("source, expected", [("http://x/a.zip", True), ("https://x/a.zip", True), ("ftp://x/a.zip", False), ("data/http.zip", False)])
def test_is_url(source, expected):
    assert is_url(source) is expected


def test_fetch_over_http_with_checksum(http_root, tmp_path):
    www, base = http_root
    (www / "abc.bin").write_bytes(b"abc")
    dest = tmp_path / "downloads" / "abc.bin"
    assert fetch(base + "abc.bin", dest, sha256=ABC_SHA256) == dest
    assert dest.read_bytes() == b"abc"
    assert part_files(dest.parent) == []


def test_fetch_wrong_checksum_leaves_nothing(http_root, tmp_path):
    www, base = http_root
    (www / "abc.bin").write_bytes(b"abc")
    dest = tmp_path / "downloads" / "abc.bin"
    with pytest.raises(ValueError, match=re.escape(base + "abc.bin") + ": wrong checksum"):
        fetch(base + "abc.bin", dest, sha256="0" * 64)
    assert not dest.exists()
    assert part_files(tmp_path / "downloads") == []


def test_fetch_wrong_checksum_keeps_previous_file(tmp_path):
    src = tmp_path / "abc.bin"
    src.write_bytes(b"abc")
    dest = tmp_path / "out" / "abc.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(ValueError, match="wrong checksum"):
        fetch(str(src), dest, sha256="0" * 64)
    assert dest.read_bytes() == b"old"


def test_fetch_local_copy(tmp_path):
    src = tmp_path / "abc.bin"
    src.write_bytes(b"abc")
    dest = tmp_path / "out" / "copy.bin"
    fetch(str(src), dest, sha256=ABC_SHA256)
    assert dest.read_bytes() == b"abc"
    assert src.read_bytes() == b"abc"
    assert part_files(tmp_path) == []


def test_fetch_missing_local_source_names_it(tmp_path):
    missing = tmp_path / "nowhere.zip"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        fetch(str(missing), tmp_path / "out" / "a.zip")
    assert not (tmp_path / "out" / "a.zip").exists()
    assert part_files(tmp_path) == []


def test_fetch_http_404_leaves_nothing(http_root, tmp_path):
    _, base = http_root
    dest = tmp_path / "downloads" / "missing.zip"
    with pytest.raises(ValueError, match="download failed"):
        fetch(base + "missing.zip", dest)
    assert not dest.exists()
    assert part_files(tmp_path / "downloads") == []


def test_fetch_http_error_names_the_url(http_root, tmp_path):
    """Regression: a failed download must say which URL failed."""
    _, base = http_root
    with pytest.raises(ValueError, match=re.escape(base + "missing.zip")):
        fetch(base + "missing.zip", tmp_path / "missing.zip")


# ---------------------------------------------------------------- unpack_zip


def make_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_unpack_valid_archive(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"x/": b"", "x/one.txt": b"1", "x/sub/two.txt": b"22", "top.txt": b"333"})
    dest = tmp_path / "out"
    assert unpack_zip(archive, dest) == dest
    assert (dest / "x" / "one.txt").read_bytes() == b"1"
    assert (dest / "x" / "sub" / "two.txt").read_bytes() == b"22"
    assert (dest / "top.txt").read_bytes() == b"333"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]  # no temporary folder left


def test_unpack_refuses_existing_dest(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"one.txt": b"1"})
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path / "out"))):
        unpack_zip(archive, tmp_path / "out")


def test_unpack_truncated_archive_names_it_and_creates_nothing(tmp_path):
    rng = np.random.default_rng(0)
    archive = make_zip(tmp_path / "a.zip", {f"f{i}.bin": rng.bytes(2000) for i in range(5)})
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(str(archive)) + ": truncated or corrupt"):
        unpack_zip(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_unpack_crc_error_names_archive(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"f.bin": b"A" * 1000}, zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    at = data.index(b"A" * 100)
    data[at + 10] = ord("B")
    archive.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(str(archive))):
        unpack_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unpack_corrupt_deflate_stream_names_archive(tmp_path):
    """Regression: corrupt compressed data must give the ValueError naming the archive, not zlib.error."""
    payload = bytes(np.random.default_rng(0).integers(0, 4, 20000, dtype=np.uint8))
    archive = make_zip(tmp_path / "a.zip", {"a/b.bin": payload})
    data = bytearray(archive.read_bytes())
    for i in range(60, 400):  # inside the compressed data of the only member
        data[i] ^= 0x55
    archive.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(str(archive))):
        unpack_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16
    return info


@pytest.mark.parametrize(
    "member, message",
    [
        ("../evil", "outside the target folder"),
        ("a/../../evil", "outside the target folder"),
        ("/abs/path", "outside the target folder"),
        ("C:/evil", "outside the target folder"),
        ("..\\evil", "outside the target folder"),
        (symlink_info("link"), "symbolic link"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "drive", "backslash", "symlink"],
)
def test_unpack_refuses_unsafe_member(tmp_path, member, message):
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/first.txt", b"written before the bad member is reached?")
        zf.writestr(member, b"/etc/passwd" if isinstance(member, zipfile.ZipInfo) else b"pwned")
    name = member.filename if isinstance(member, zipfile.ZipInfo) else member
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=re.escape(str(archive)) + ".*" + re.escape(repr(name)) + ".*" + message):
        unpack_zip(archive, work / "out")
    assert sorted(tmp_path.rglob("*")) == before  # nothing written anywhere, dest absent
    assert not (work / "out").exists()
    assert not Path("/abs/path").exists()


def zip_of_zeros(archive: Path, n_bytes: int) -> Path:
    """A zip archive holding one member of ``n_bytes`` zero bytes (deflated about a thousandfold)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("a/images/a.tif", "w", force_zip64=True) as member:
        block = bytes(1 << 20)
        for _ in range(n_bytes >> 20):
            member.write(block)
    return archive


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    """Regression: a small zip holding a huge member unpacked fully (2 MB -> 2 GB, exit 0).
    Here 200 MB of zeros in a 0.2 MB archive, refused under the default settings."""
    work = tmp_path / "work"
    work.mkdir()
    archive = zip_of_zeros(work / "bomb.zip", 200 << 20)
    assert archive.stat().st_size < 1 << 20
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(
        ValueError,
        match=re.escape(f"{archive}: refusing to unpack: 'a/images/a.tif' would unpack to") + r" \d+ times its packed size .*download.max_ratio = 200",
    ):
        unpack_zip(archive, work / "out")
    assert sorted(tmp_path.rglob("*")) == before


def test_the_total_unpacked_size_is_bounded(tmp_path):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a/images/a.png", bytes(range(256)) * 1000)  # 256 kB, stored: ratio 1
        zf.writestr("b/images/b.png", bytes(range(256)) * 1000)
    with pytest.raises(ValueError, match=re.escape(f"{archive}: refusing to unpack 0.000512 GB (more than download.max_unpacked_gb = 0.0005 GB)")):
        unpack_zip(archive, tmp_path / "out", settings=DownloadSettings(max_unpacked_gb=0.0005))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zip"]
    unpack_zip(archive, tmp_path / "out", settings=DownloadSettings(max_unpacked_gb=0.001))  # within the bound
    assert (tmp_path / "out/b/images/b.png").stat().st_size == 256_000


def test_the_bounds_reach_the_download_stage(tmp_path):
    archive = zip_of_zeros(tmp_path / "bomb.zip", 20 << 20)
    with pytest.raises(ValueError, match="download.max_ratio = 50"):
        download_dataset(str(archive), tmp_path / "ds", settings=DownloadSettings(max_ratio=50))
    assert not (tmp_path / "ds").exists()


# ---------------------------------------------------------------- download_dataset


def test_download_embedded_sample(tmp_path):
    dest = download_dataset(str(SAMPLE_TEST), tmp_path / "sample_test", sha256=sample_sha256())
    ids = list_images(dest)
    assert len(ids) == 12
    assert ids == sorted(ids)
    assert all((dest / i / "images" / f"{i}.png").is_file() for i in ids)


def test_download_embedded_sample_wrong_checksum(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(SAMPLE_TEST)) + ": wrong checksum"):
        download_dataset(str(SAMPLE_TEST), tmp_path / "sample_test", sha256="0" * 64)
    assert not (tmp_path / "sample_test").exists()


def test_download_missing_local_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none.zip"))):
        download_dataset(str(tmp_path / "none.zip"), tmp_path / "ds")


def test_download_over_http_then_from_cache(http_root, tmp_path):
    www, base = http_root
    shutil.copy(SAMPLE_TEST, www / "sample_test.zip")
    url = base + "sample_test.zip"
    dest = download_dataset(url, tmp_path / "data" / "first", sha256=sample_sha256())
    assert len(list_images(dest)) == 12
    cached = tmp_path / "data" / "downloads" / "sample_test.zip"
    assert sha256sum(cached) == sample_sha256()
    # the server no longer has it: the verified cached copy is used
    (www / "sample_test.zip").unlink()
    second = download_dataset(url + "?dl=1", tmp_path / "data" / "second", sha256=sample_sha256())
    assert len(list_images(second)) == 12


def test_download_archive_without_images_removes_dest(tmp_path):
    archive = make_zip(tmp_path / "other.zip", {"readme.txt": b"no images here"})
    with pytest.raises(ValueError, match=re.escape(str(archive)) + ": no image found"):
        download_dataset(str(archive), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


# ---------------------------------------------------------------- read_sample


def write_masks(folder: Path, masks: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        (folder / name).write_bytes(png_bytes(mask))


def square(shape, y0, y1, x0, x1, value=255, dtype=np.uint8) -> np.ndarray:
    m = np.zeros(shape, dtype)
    m[y0:y1, x0:x1] = value
    return m


def test_read_sample_merges_masks_in_sorted_order(tmp_path):
    shape = (5, 8)
    image = np.arange(40, dtype=np.uint8).reshape(shape)
    (tmp_path / "img" / "images").mkdir(parents=True)
    (tmp_path / "img" / "images" / "img.png").write_bytes(png_bytes(image))
    write_masks(
        tmp_path / "img" / "masks",
        {
            "d.png": square(shape, 1, 3, 2, 4),  # overlaps a.png at (1, 2) and (2, 2): d comes later, takes them
            "b.png": square(shape, 3, 5, 6, 8, value=1),  # any value > 0 is inside
            "a.png": square(shape, 0, 3, 0, 3),
            "c.png": np.zeros(shape, np.uint8),  # empty: skipped, numbering stays consecutive
        },
    )
    (tmp_path / "img" / "masks" / ".hidden.png").write_bytes(png_bytes(square(shape, 0, 5, 0, 8)))
    sample = read_sample(tmp_path, "img")
    expected = np.array(
        [
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 3, 3, 0, 0, 0, 0],
            [1, 1, 3, 3, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 2, 2],
            [0, 0, 0, 0, 0, 0, 2, 2],
        ]
    )
    assert sample.image_id == "img"
    assert sample.labels.dtype == np.uint32
    np.testing.assert_array_equal(sample.labels, expected)
    assert sample.n_overlap == 2
    np.testing.assert_array_equal(sample.image, np.repeat(image[..., None], 3, axis=2))


def test_read_sample_rgba_mask_ignores_alpha(tmp_path):
    shape = (4, 4)
    (tmp_path / "i" / "images").mkdir(parents=True)
    (tmp_path / "i" / "images" / "i.png").write_bytes(png_bytes(np.zeros(shape, np.uint8)))
    rgba = np.zeros(shape + (4,), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere
    rgba[1:3, 1:3, :3] = 255
    write_masks(tmp_path / "i" / "masks", {"m.png": rgba})
    np.testing.assert_array_equal(read_sample(tmp_path, "i").labels, square(shape, 1, 3, 1, 3, value=1))


def test_read_sample_grey_alpha_mask_ignores_alpha(tmp_path):
    """Regression: an opaque grey+alpha mask must label only its non-zero grey pixels."""
    shape = (4, 4)
    (tmp_path / "i" / "images").mkdir(parents=True)
    (tmp_path / "i" / "images" / "i.png").write_bytes(png_bytes(np.zeros(shape, np.uint8)))
    la = np.dstack([square(shape, 1, 3, 1, 3), np.full(shape, 255, np.uint8)])
    (tmp_path / "i" / "masks").mkdir()
    Image.fromarray(la, mode="LA").save(tmp_path / "i" / "masks" / "m.png")
    np.testing.assert_array_equal(read_sample(tmp_path, "i").labels, square(shape, 1, 3, 1, 3, value=1))


def test_read_sample_n_overlap_counts_pixels(tmp_path):
    """Regression: ``n_overlap`` is documented as pixels claimed by more than one mask."""
    shape = (3, 3)
    (tmp_path / "i" / "images").mkdir(parents=True)
    (tmp_path / "i" / "images" / "i.png").write_bytes(png_bytes(np.zeros(shape, np.uint8)))
    write_masks(tmp_path / "i" / "masks", {f"{k}.png": square(shape, 1, 2, k, k + 1) | square(shape, 0, 1, 0, 1) for k in range(3)})
    assert read_sample(tmp_path, "i").n_overlap == 1  # only pixel (0, 0) is claimed by more than one mask


def test_read_sample_mask_of_wrong_size_names_it(tmp_path):
    (tmp_path / "i" / "images").mkdir(parents=True)
    (tmp_path / "i" / "images" / "i.png").write_bytes(png_bytes(np.zeros((4, 6), np.uint8)))
    write_masks(tmp_path / "i" / "masks", {"ok.png": square((4, 6), 0, 1, 0, 1), "small.png": square((4, 5), 0, 1, 0, 1)})
    mask = tmp_path / "i" / "masks" / "small.png"
    with pytest.raises(ValueError, match=re.escape(f"{mask}: mask of size (4, 5) differs from its image's size (4, 6)")):
        read_sample(tmp_path, "i")


def test_read_sample_unreadable_mask_names_it(tmp_path):
    (tmp_path / "i" / "images").mkdir(parents=True)
    (tmp_path / "i" / "images" / "i.png").write_bytes(png_bytes(np.zeros((4, 6), np.uint8)))
    (tmp_path / "i" / "masks").mkdir()
    (tmp_path / "i" / "masks" / "bad.png").write_text("not a png")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "i" / "masks" / "bad.png"))):
        read_sample(tmp_path, "i")


def test_read_sample_without_masks_has_no_labels(tmp_path):
    (tmp_path / "i" / "images").mkdir(parents=True)
    (tmp_path / "i" / "images" / "i.png").write_bytes(png_bytes(np.zeros((4, 6), np.uint8)))
    sample = read_sample(tmp_path, "i")
    assert sample.labels is None and sample.n_overlap == 0 and sample.image.shape == (4, 6, 3)


def test_read_sample_without_image_names_folder(tmp_path):
    (tmp_path / "i" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ": no image file for image id 'i'"):
        read_sample(tmp_path, "i")


def test_list_images_only_lists_the_layout(tmp_path):
    for name in ["b", "a"]:
        (tmp_path / name / "images").mkdir(parents=True)
        (tmp_path / name / "images" / f"{name}.png").write_bytes(b"")
    (tmp_path / "c" / "images").mkdir(parents=True)  # no image file
    (tmp_path / "d").mkdir()
    (tmp_path / "e.png").write_bytes(b"")
    assert list_images(tmp_path) == ["a", "b"]


def test_read_sample_on_embedded_sample(tmp_path):
    dest = download_dataset(str(SAMPLE_TEST), tmp_path / "s", sha256=sample_sha256())
    image_id = list_images(dest)[0]
    sample = read_sample(dest, image_id)
    n_masks = len(list((dest / image_id / "masks").iterdir()))
    assert sample.image.dtype == np.uint8 and sample.image.shape[2] == 3
    assert sample.labels.shape == sample.image.shape[:2]
    np.testing.assert_array_equal(np.unique(sample.labels), np.arange(n_masks + 1))


def test_source_files_are_what_the_download_job_watches(tmp_path):
    archive = tmp_path / "data.zip"
    archive.write_bytes(b"PK")
    folder = tmp_path / "plate"
    (folder / "well A").mkdir(parents=True)
    for name in ("well A/f1.tif", "f2.PNG", "notes.txt", ".hidden.png"):
        (folder / name).write_bytes(b"x")
    assert source_files(str(archive)) == [archive]
    assert source_files(str(archive), "images") == [archive]  # a zip of one's own images
    assert source_files(str(folder), "images") == [(folder / "f2.PNG").resolve(), (folder / "well A/f1.tif").resolve()]
    assert source_files(str(folder / "*" / "*.tif"), "images") == [(folder / "well A/f1.tif").resolve()]
    # a URL is guarded by its checksum or lock file; a missing path is named by the download job
    assert source_files("https://example.org/data.zip") == source_files(str(tmp_path / "nowhere.zip")) == source_files(None) == []


def test_a_run_until_download_does_not_print_an_earlier_summary(tmp_path):
    """Regression: `snakemake --until download` printed the summary.csv an earlier run had left
    as if it were its own."""
    (tmp_path / "results").mkdir()
    (tmp_path / "results/summary.csv").write_text("model,dataset,n_images,challenge_score\nold,earlier_config,3,0.123\n")
    result = snakemake(tmp_path, "--cores", "1", "--until", "download")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "results/datasets/sample_test").is_dir()
    assert "earlier_config" not in result.stdout + result.stderr and "Summary (" not in result.stdout + result.stderr
