"""helpers.prepare: the workshop preparation command, on a tiny data folder and a fresh cache."""
import re

import numpy as np
import pytest
from PIL import Image

import helpers  # noqa: F401  (TensorFlow switches first)
from helpers import data, prepare


def write_images(folder, n, seed):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"img{i}.jpg")


@pytest.fixture
def tiny_course(tmp_path, monkeypatch):
    """Three data sets in their real layouts (13 images, one of them broken) and an empty cache."""
    data = tmp_path / "data"
    write_images(data / "flower_photos" / "daisy", 3, seed=1)
    write_images(data / "flower_photos" / "roses", 2, seed=2)
    (data / "flower_photos" / "roses" / "broken.jpg").write_bytes(b"not a jpeg")
    write_images(data / "chest_xray" / "train" / "NORMAL", 2, seed=3)
    write_images(data / "chest_xray" / "train" / "PNEUMONIA", 2, seed=4)
    write_images(data / "chest_xray" / "test" / "PNEUMONIA", 1, seed=5)
    write_images(data / "daffodils", 2, seed=6)
    monkeypatch.setenv("COURSE_DATA_DIR", str(data))
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    return tmp_path


def row(output, kind, item):
    """The printed line of one step, split into its columns (what, result, images, computed, from cache, skipped)."""
    pattern = rf"^{kind}\s+{re.escape(item)}\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+[\d.]+"
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"no line for {kind} {item} in:\n{output}"
    return match.groups()


ARGS = ["--backbones", "efficientnet_lite0", "--no-hub", "--no-download", "--no-progress"]


@pytest.mark.slow
def test_prepare_builds_finds_computes_then_computes_nothing(tiny_course, capsys):
    assert prepare.main(ARGS) == 0
    first = capsys.readouterr().out
    assert row(first, "backbone", "efficientnet_lite0") == ("built", "-", "-", "-", "-")
    assert row(first, "backbone", "efficientnet_lite0 (classifier)")[0] == "built"
    assert row(first, "dataset", "flowers") == ("found", "6", "-", "-", "-")
    assert row(first, "dataset", "chest_xray") == ("found", "5", "-", "-", "-")
    # Each data set with the crops its notebooks use: flowers as the flower model and as the X-ray
    # model see them (central crop, whole image), X-rays both ways too, daffodils as flowers.
    assert row(first, "bottlenecks", "flowers / efficientnet_lite0 (crop 0.875)") == ("computed", "6", "5", "0", "1")
    assert row(first, "bottlenecks", "flowers / efficientnet_lite0 (crop 1)") == ("computed", "6", "5", "0", "1")
    assert row(first, "bottlenecks", "chest_xray / efficientnet_lite0 (crop 1)") == ("computed", "5", "5", "0", "0")
    assert row(first, "bottlenecks", "chest_xray / efficientnet_lite0 (crop 0.875)") == ("computed", "5", "5", "0", "0")
    assert row(first, "bottlenecks", "daffodils / efficientnet_lite0 (crop 0.875)") == ("computed", "2", "2", "0", "0")
    assert "daffodils / efficientnet_lite0 (crop 1)" not in first
    assert "efficientnet_lite2" not in first  # only the backbones asked for
    assert "Prepared what was asked for; run without --datasets/--backbones" in first
    size = re.search(r"Disk: the cache .* uses ([\d.]+) MB \(\+([\d.]+) MB in this run\)", first)
    assert size and float(size.group(1)) == float(size.group(2)) > 5  # a SavedModel is ~15 MB
    assert len(list((tiny_course / "cache" / "bottlenecks").rglob("*.npy"))) == 22  # 5 + 5 + 5 + 5 + 2

    assert prepare.main(ARGS) == 0
    second = capsys.readouterr().out
    assert row(second, "backbone", "efficientnet_lite0")[0] == "found"
    assert row(second, "bottlenecks", "flowers / efficientnet_lite0 (crop 0.875)") == ("cached", "6", "0", "5", "1")
    assert row(second, "bottlenecks", "chest_xray / efficientnet_lite0 (crop 1)") == ("cached", "5", "0", "5", "0")
    assert "(+0 B in this run)" in second


def test_a_missing_dataset_is_reported_and_fails_the_command(tiny_course, capsys, monkeypatch):
    monkeypatch.setattr(data, "SHARED_DATASETS_DIR", tiny_course / "nowhere")  # hide ../shared/datasets
    for image in (tiny_course / "data" / "daffodils").iterdir():
        image.unlink()
    assert prepare.main(["--datasets", "daffodils", "flowers", "--backbones", "--no-hub", "--no-download"]) == 1
    out = capsys.readouterr().out
    assert row(out, "dataset", "daffodils")[0] == "missing"
    assert "dataset 'daffodils' was not found" in out
    assert row(out, "dataset", "flowers") == ("found", "6", "-", "-", "-")
    assert not re.search(r"^(backbone|bottlenecks) ", out, re.MULTILINE)  # no backbone asked for, none built
    assert "NOT READY: daffodils missing" in out


def test_human_bytes_and_disk_usage(tmp_path):
    assert [prepare.human_bytes(n) for n in (0, 1023, 1536, 5 * 1024**2, 3 * 1024**3)] == \
        ["0 B", "1023 B", "1.5 KB", "5.0 MB", "3.0 GB"]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"0" * 1000)
    (tmp_path / "y.bin").write_bytes(b"0" * 24)
    assert prepare.disk_usage(tmp_path) == 1024
    assert prepare.disk_usage(tmp_path / "missing") == 0


def test_the_summary_says_ready_only_for_a_complete_preparation(tmp_path):
    (tmp_path / "bottlenecks").mkdir()
    (tmp_path / "bottlenecks" / "a.npy").write_bytes(b"0" * 2048)
    done = prepare.Report(cache=tmp_path, steps=[prepare.Step("dataset", "flowers", "found", images=3)],
                          bytes_before=0, bytes_after=2048, seconds=3.2)
    lines = prepare.format_summary(done)
    assert lines[0] == f"Disk: the cache {tmp_path} uses 2.0 KB (+2.0 KB in this run): bottlenecks 2.0 KB"
    assert lines[-1] == "Ready: the course can now run with no network."
    done.complete = False
    assert prepare.format_summary(done)[-1].startswith("Prepared what was asked for")
    done.steps.append(prepare.Step("dataset", "daffodils", "missing", detail="dataset 'daffodils' was not found."))
    assert prepare.format_summary(done)[-2:] == [
        "dataset 'daffodils' was not found.",
        ("NOT READY: daffodils missing (see the messages above); the notebooks that use them will stop with the "
         "same message.")]
