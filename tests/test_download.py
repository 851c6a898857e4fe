"""Tests of the dataset download path (issue 8) against a local HTTP server.

The archives are built at test time in tmp_path from a few real images of
../shared/datasets; the server is the standard library's ThreadingHTTPServer on
127.0.0.1. Nothing goes to the internet and nothing is written outside tmp_path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import helpers  # noqa: F401
from helpers import data

SHARED = data.SHARED_DATASETS_DIR
pytestmark = pytest.mark.skipif(not (SHARED / "flower_photos").is_dir(), reason="needs ../shared/datasets")


class FakeServer:
    """Serves ``files[path] = bytes``; ``drops`` more requests are cut off half-way."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.drops = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drops > 0:  # promise the whole body, send half, hang up
                    server.drops -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    fake = FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Empty data roots: a tmp cache, no $COURSE_DATA_DIR, no shared folder; no retry waits."""
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "SHARED_DATASETS_DIR", tmp_path / "no_shared_data")
    monkeypatch.setattr(data, "RETRY_WAIT_SECONDS", 0.0)
    return tmp_path


def _real_images(folder: Path, n: int) -> list[Path]:
    return sorted(folder.iterdir())[:n]


def _tgz(tmp_path: Path, layout: dict[str, list[Path]], top: str) -> bytes:
    """A .tgz whose members are ``top/<class>/<file>`` copied from real images."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for rel, files in layout.items():
            for file in files:
                tar.add(file, arcname=f"{top}/{rel}/{file.name}")
        tar.add(__file__, arcname=f"{top}/LICENSE.txt")
    return buffer.getvalue()


FLOWER_LAYOUT = {"daisy": 3, "roses": 2}


@pytest.fixture
def flowers(sandbox, server, monkeypatch):
    """Registry entry 'flowers' pointed at the local server, with a 5-image archive."""
    layout = {c: _real_images(SHARED / "flower_photos" / c, n) for c, n in FLOWER_LAYOUT.items()}
    archive = _tgz(sandbox, layout, "flower_photos")
    server.files["/flower_photos.tgz"] = archive
    info = dataclasses.replace(data.DATASETS["flowers"], url=server.url("/flower_photos.tgz"),
                               classes=tuple(FLOWER_LAYOUT), expected_counts=dict(FLOWER_LAYOUT))
    monkeypatch.setitem(data.DATASETS, "flowers", info)
    return archive


def _datasets_dir(sandbox: Path) -> Path:
    return sandbox / "cache" / "datasets"


def _leftovers(sandbox: Path) -> list[str]:
    """Everything under the cache's datasets folder (folders and files)."""
    root = _datasets_dir(sandbox)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_good_archive_is_unpacked_verified_and_found(flowers, sandbox, server):
    folder = data.find_dataset("flowers")
    assert folder == _datasets_dir(sandbox) / "flower_photos"
    assert {c: len(p) for c, p in data.list_images(folder).items()} == FLOWER_LAYOUT
    assert (folder / "LICENSE.txt").is_file()
    assert server.requests == ["/flower_photos.tgz"]
    # Only the data is left: no archive, no temporary folder.
    assert [p for p in _leftovers(sandbox) if not p.startswith("flower_photos")] == ["downloads"]
    # A second run finds the cache and downloads nothing.
    assert data.find_dataset("flowers") == folder
    assert data.download_dataset("flowers") == folder
    assert len(server.requests) == 1


def test_truncated_archive_leaves_nothing_and_retry_works(flowers, sandbox, server):
    server.files["/flower_photos.tgz"] = flowers[: len(flowers) // 2]
    with pytest.raises(data.DownloadError, match="archive") as info:
        data.download_dataset("flowers", progress=False)
    assert "damaged or incomplete" in str(info.value) or "not a zip or tar" in str(info.value)
    assert _leftovers(sandbox) == ["downloads"]
    with pytest.raises(data.DatasetNotFoundError, match="download=False"):
        data.find_dataset("flowers", download=False)

    server.files["/flower_photos.tgz"] = flowers  # the server is fixed
    folder = data.find_dataset("flowers")
    assert {c: len(p) for c, p in data.list_images(folder).items()} == FLOWER_LAYOUT
    assert len(server.requests) == 2


def test_wrong_checksum_is_rejected(flowers, sandbox, server):
    good = "sha256:" + hashlib.sha256(flowers).hexdigest()
    with pytest.raises(data.DownloadError, match="not the expected one"):
        data.download_dataset("flowers", known_hash="sha256:" + "0" * 64, progress=False)
    assert _leftovers(sandbox) == ["downloads"]
    folder = data.download_dataset("flowers", known_hash=good, progress=False)
    assert {c: len(p) for c, p in data.list_images(folder).items()} == FLOWER_LAYOUT


def test_wrong_counts_are_rejected(flowers, sandbox, server, monkeypatch):
    info = dataclasses.replace(data.DATASETS["flowers"], expected_counts={"daisy": 10, "roses": 2})
    monkeypatch.setitem(data.DATASETS, "flowers", info)
    with pytest.raises(data.DownloadError, match=r"daisy: 3 images, expected 10"):
        data.download_dataset("flowers", progress=False)
    assert _leftovers(sandbox) == ["downloads"]
    # Within the tolerance passes: 3 images where 3.05 are expected (2 %) ...
    monkeypatch.setitem(data.DATASETS, "flowers", dataclasses.replace(info, expected_counts={"daisy": 3, "roses": 2}))
    assert data.download_dataset("flowers", progress=False).is_dir()


def test_missing_class_folder_is_reported(flowers, sandbox, monkeypatch):
    info = dataclasses.replace(data.DATASETS["flowers"], expected_counts={"daisy": 3, "tulips": 2})
    monkeypatch.setitem(data.DATASETS, "flowers", info)
    with pytest.raises(data.DownloadError, match="expected folders"):
        data.download_dataset("flowers", progress=False)
    assert _leftovers(sandbox) == ["downloads"]


def test_dropped_connection_is_retried(flowers, sandbox, server):
    server.drops = 1
    folder = data.download_dataset("flowers", progress=False, retries=2)
    assert {c: len(p) for c, p in data.list_images(folder).items()} == FLOWER_LAYOUT
    assert len(server.requests) == 2


def test_dropped_connection_every_time_is_reported(flowers, sandbox, server):
    server.drops = 10
    with pytest.raises(data.DownloadError, match="after 2 attempts") as info:
        data.download_dataset("flowers", progress=False, retries=1)
    assert server.url("/flower_photos.tgz") in str(info.value)
    assert len(server.requests) == 2
    assert _leftovers(sandbox) == ["downloads"]


def test_stale_partial_folder_is_never_data_and_is_cleaned(flowers, sandbox, server):
    stale = _datasets_dir(sandbox) / ".partial-flower_photos-interrupted"
    shutil.copytree(SHARED / "flower_photos" / "daisy", stale / "flower_photos" / "daisy",
                    ignore=lambda d, names: names[3:])
    half_download = _datasets_dir(sandbox) / "downloads" / "tmp1a2b3c"  # pooch's temp file, process killed
    half_download.parent.mkdir(parents=True)
    half_download.write_bytes(flowers[:1000])
    with pytest.raises(data.DatasetNotFoundError):
        data.find_dataset("flowers", download=False)
    data.find_dataset("flowers")
    assert not stale.exists() and not half_download.exists()
    assert [p for p in _leftovers(sandbox) if not p.startswith("flower_photos")] == ["downloads"]


def test_incomplete_folder_in_cache_is_replaced(flowers, sandbox, server):
    broken = _datasets_dir(sandbox) / "flower_photos" / "daisy"
    broken.mkdir(parents=True)
    shutil.copy(next((SHARED / "flower_photos" / "daisy").iterdir()), broken)
    folder = data.download_dataset("flowers", progress=False)
    assert {c: len(p) for c, p in data.list_images(folder).items()} == FLOWER_LAYOUT
    assert len(server.requests) == 1


def test_chest_xray_zip_layout_is_mapped(sandbox, server, monkeypatch):
    counts = {"train/NORMAL": 2, "train/PNEUMONIA": 3, "test/NORMAL": 1, "test/PNEUMONIA": 1}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for rel, n in counts.items():
            for file in _real_images(SHARED / "chest_xray" / rel, n):
                zf.write(file, f"chest_xray/{rel}/{file.name}")
                zf.writestr(f"__MACOSX/chest_xray/{rel}/._{file.name}", b"resource fork")
        zf.writestr("chest_xray/.DS_Store", b"junk")
    server.files["/file_downloaded"] = buffer.getvalue()
    info = dataclasses.replace(data.DATASETS["chest_xray"], url=server.url("/file_downloaded"),
                               expected_counts=counts)
    monkeypatch.setitem(data.DATASETS, "chest_xray", info)

    folder = data.find_dataset("chest_xray")
    assert folder == _datasets_dir(sandbox) / "chest_xray"
    assert not (_datasets_dir(sandbox) / "__MACOSX").exists()
    splits = data.make_splits(folder / "train", 0, 0, test_image_dir=folder / "test", group_key=data.patient_id)
    assert splits.counts() == {"NORMAL": {"training": 2, "validation": 0, "testing": 1},
                               "PNEUMONIA": {"training": 3, "validation": 0, "testing": 1}}
    assert data.load_image(splits.files["testing"][0], 64).shape == (64, 64, 3)


def test_kaggle_layout_placed_by_hand_is_accepted(sandbox, monkeypatch):
    root = sandbox / "my_data"
    kaggle = root / "chest_xray" / "chest_xray"  # Kaggle's zip nests the folder twice
    for split, source, picked in [("train", "train", slice(0, 2)), ("val", "train", slice(2, 3)),
                                  ("test", "test", slice(0, 1))]:
        for cls in ("NORMAL", "PNEUMONIA"):
            (kaggle / split / cls).mkdir(parents=True)
            for file in _real_images(SHARED / "chest_xray" / source / cls, 3)[picked]:
                shutil.copy(file, kaggle / split / cls)
    clash = kaggle / "val" / "NORMAL" / "clash.jpeg"  # a name already taken in train/ stays in val/
    shutil.copy(next((kaggle / "val" / "PNEUMONIA").iterdir()), clash)
    shutil.copy(clash, kaggle / "train" / "NORMAL" / "clash.jpeg")
    monkeypatch.setenv("COURSE_DATA_DIR", str(root))
    folder = data.find_dataset("chest_xray")
    assert folder == kaggle
    assert {c: len(p) for c, p in data.list_images(folder / "train").items()} == {"NORMAL": 4, "PNEUMONIA": 3}
    assert [p.name for p in (kaggle / "val").rglob("*.jpeg")] == ["clash.jpeg"]  # nothing lost
    (kaggle / "val" / "NORMAL" / "clash.jpeg").unlink()
    data.find_dataset("chest_xray")
    assert not (kaggle / "val").exists()  # all its images moved into train/


def test_data_dir_and_paths_are_found_first(sandbox, monkeypatch, tmp_path):
    own = tmp_path / "mine" / "flower_photos" / "daisy"
    own.mkdir(parents=True)
    shutil.copy(next((SHARED / "flower_photos" / "daisy").iterdir()), own)
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "mine"))
    assert data.find_dataset("flowers", download=False) == own.parent
    assert data.find_dataset("flower_photos", download=False) == own.parent
    assert data.find_dataset(own.parent) == own.parent
    with pytest.raises(data.DatasetNotFoundError, match="does not exist"):
        data.find_dataset(tmp_path / "nowhere")


def test_offline_and_missing_gives_one_clear_message(sandbox, monkeypatch):
    closed = dataclasses.replace(data.DATASETS["flowers"], url="http://127.0.0.1:9/flower_photos.tgz")
    monkeypatch.setitem(data.DATASETS, "flowers", closed)  # port 9 (discard): connection refused
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.find_dataset("flowers")
    message = str(info.value)
    assert message.startswith("dataset 'flowers' was not found. The download failed: could not download")
    assert "Where to get it:" in message and "flower_photos.tgz" in message
    assert "Where to put it: a folder named 'flower_photos'" in message
    assert str(_datasets_dir(sandbox) / "flower_photos") in message and "COURSE_DATA_DIR" in message
    lines = info.value._render_traceback_()
    assert lines[0].startswith("DatasetNotFoundError: dataset 'flowers' was not found.")
    assert len(lines) == len(message.splitlines()) and not any("Traceback" in line for line in lines)
    assert info.value.exit_code == 2
    assert _leftovers(sandbox) == ["downloads"]


def test_daffodils_say_there_is_no_archive(sandbox):
    with pytest.raises(data.DatasetNotFoundError, match="no download of its own") as info:
        data.find_dataset("daffodils")
    assert "Oxford 102" in str(info.value)
    with pytest.raises(data.DatasetNotFoundError, match="not a registered dataset"):
        data.find_dataset("no_such_set")
