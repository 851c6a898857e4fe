"""Bottleneck cache: hits, misses, invalidation, resume after a crash, damaged entries, bad files.

A tiny random network stands in for the backbone (the real one is exercised by
the retrain command test), so these tests check the caching logic, not the model.
"""
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import helpers  # noqa: F401
from helpers import bottlenecks
from helpers.bottlenecks import BottleneckCache, compute_bottlenecks, file_digest, image_dataset


class TinyBackbone:
    """Backbone stand-in: a seeded conv net on 32x32 images giving 8 features, counting images seen."""

    def __init__(self, id="tiny-v1", seed=0):
        self.id, self.name, self.input_size, self.feature_dim = id, "tiny", 32, 8
        tf.keras.utils.set_random_seed(seed)
        self.layer = tf.keras.Sequential([
            tf.keras.Input((32, 32, 3)),
            tf.keras.layers.Conv2D(8, 3, activation="relu"),
            tf.keras.layers.GlobalAveragePooling2D(),
        ])
        self._run = tf.function(lambda x: self.layer(x, training=False))
        self.images_seen = 0

    def features(self, images):
        """Like ``Backbone.features``: float images in [0, 1] only."""
        images = tf.convert_to_tensor(images)
        if images.dtype != tf.float32 or float(tf.reduce_min(images)) < 0 or float(tf.reduce_max(images)) > 1:
            raise ValueError("expected float32 images in [0, 1]")
        self.images_seen += int(images.shape[0])
        return self._run(tf.convert_to_tensor(images)).numpy()


def write_images(folder: Path, n: int, seed=0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_image_dataset_yields_ordered_batches_and_flags_bad_files(tmp_path):
    paths = write_images(tmp_path / "imgs", 5)
    bad = tmp_path / "imgs" / "empty.jpg"
    bad.write_bytes(b"")
    errors = {}
    batches = list(image_dataset(paths + [bad], 32, batch_size=4, errors=errors))
    assert [b[0].shape[0] for b in batches] == [4, 2]
    index = np.concatenate([b[2].numpy() for b in batches])
    ok = np.concatenate([b[1].numpy() for b in batches])
    assert index.tolist() == [0, 1, 2, 3, 4, 5]
    assert ok.tolist() == [True] * 5 + [False]
    assert "empty" in errors[5]
    images = batches[0][0].numpy()
    assert images.shape == (4, 32, 32, 3) and 0 <= images.min() and images.max() <= 1


def test_cache_hit_miss_and_invalidation(tmp_path, cache_env):
    paths = write_images(tmp_path / "imgs", 6)
    net = TinyBackbone()
    first = compute_bottlenecks(paths, net, batch_size=4, progress=False)
    assert (first.computed, first.from_cache, net.images_seen) == (6, 0, 6)
    assert first.features.shape == (6, 8) and first.features.dtype == np.float32
    assert len(BottleneckCache(net.id)) == 6

    second = compute_bottlenecks(paths, net, batch_size=4, progress=False)
    assert (second.computed, second.from_cache) == (0, 6)
    assert net.images_seen == 6  # nothing went through the network
    np.testing.assert_array_equal(second.features, first.features)

    # Change one image's bytes: that image alone is recomputed.
    Image.fromarray(np.full((10, 10, 3), 200, np.uint8)).save(paths[2])
    third = compute_bottlenecks(paths, net, batch_size=4, progress=False)
    assert (third.computed, third.from_cache) == (1, 5)
    assert net.images_seen == 7
    assert not np.allclose(third.features[2], first.features[2])
    np.testing.assert_array_equal(np.delete(third.features, 2, 0), np.delete(first.features, 2, 0))

    # Another backbone id: everything is recomputed into its own folder.
    other = TinyBackbone(id="tiny-v2", seed=1)
    fourth = compute_bottlenecks(paths, other, batch_size=4, progress=False)
    assert (fourth.computed, fourth.from_cache, other.images_seen) == (6, 0, 6)
    assert BottleneckCache("tiny-v2").folder != BottleneckCache("tiny-v1").folder


def test_cached_values_equal_uncached_and_duplicates_computed_once(tmp_path, cache_env):
    paths = write_images(tmp_path / "imgs", 3)
    twin = tmp_path / "imgs" / "twin.png"
    twin.write_bytes(paths[0].read_bytes())
    net = TinyBackbone()
    cached = compute_bottlenecks(paths + [twin], net, batch_size=2, progress=False)
    assert cached.computed == 3 and net.images_seen == 3
    np.testing.assert_array_equal(cached.features[3], cached.features[0])
    uncached = compute_bottlenecks(paths + [twin], net, batch_size=2, progress=False, cache=False)
    np.testing.assert_allclose(uncached.features, cached.features, rtol=1e-6, atol=1e-7)


def test_resume_after_crash_and_stray_temp_file(tmp_path, cache_env, monkeypatch):
    paths = write_images(tmp_path / "imgs", 10)
    net = TinyBackbone()
    reference = compute_bottlenecks(paths, net, batch_size=4, progress=False, cache=False).features

    real_features, calls = net.features, {"n": 0}

    def crash_on_third_batch(images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of a run
        return real_features(images)

    monkeypatch.setattr(net, "features", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        compute_bottlenecks(paths, net, batch_size=4, progress=False)
    store = BottleneckCache(net.id)
    assert len(store) == 8  # two finished batches were kept
    # A run killed while writing leaves a temp file: it must be ignored and cleaned.
    stray = store.folder / (bottlenecks.TEMP_PREFIX + "abc.npy")
    stray.write_bytes(b"\x93NUMPY half-written")
    old = stray.stat().st_mtime - bottlenecks.STALE_SECONDS - 1
    os.utime(stray, (old, old))
    # A fresh temp file may be another process writing right now: it is left alone.
    in_progress = store.folder / (bottlenecks.TEMP_PREFIX + "other-process.npy")
    in_progress.write_bytes(b"\x93NUMPY")
    monkeypatch.setattr(net, "features", real_features)

    seen_before = net.images_seen
    resumed = compute_bottlenecks(paths, net, batch_size=4, progress=False)
    assert (resumed.computed, resumed.from_cache) == (2, 8)
    assert net.images_seen - seen_before == 2
    assert not stray.exists()
    assert list(store.folder.glob(bottlenecks.TEMP_PREFIX + "*")) == [in_progress]
    np.testing.assert_allclose(resumed.features, reference, rtol=1e-6, atol=1e-7)


def test_corrupt_entry_is_recomputed(tmp_path, cache_env):
    paths = write_images(tmp_path / "imgs", 4)
    net = TinyBackbone()
    first = compute_bottlenecks(paths, net, progress=False)
    store = BottleneckCache(net.id)
    entry = store.path(file_digest(paths[1]))
    entry.write_bytes(entry.read_bytes()[:40])  # truncated mid-file
    wrong_shape = store.path(file_digest(paths[3]))
    np.save(wrong_shape, np.ones(3, np.float32))
    again = compute_bottlenecks(paths, net, progress=False)
    assert (again.computed, again.from_cache) == (2, 2)
    np.testing.assert_allclose(again.features, first.features, rtol=1e-6, atol=1e-7)
    assert store.get(file_digest(paths[1]), dim=8).shape == (8,)


def test_bad_files_are_skipped_and_reported(tmp_path, cache_env, capsys):
    paths = write_images(tmp_path / "imgs", 4)
    empty = tmp_path / "imgs" / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "imgs" / "notes.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "imgs" / "cut.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:200])
    missing = tmp_path / "imgs" / "gone.jpg"
    inputs = [paths[0], empty, paths[1], text, truncated, missing, paths[2], paths[3]]
    labels = np.arange(len(inputs))

    result = compute_bottlenecks(inputs, TinyBackbone(), batch_size=3, progress=False)
    assert result.paths == paths
    assert result.features.shape == (4, 8)
    assert labels[result.indices].tolist() == [0, 2, 6, 7]
    skipped = dict(result.skipped)
    assert set(skipped) == {empty, text, truncated, missing}
    assert "empty" in skipped[empty] and "not found" in skipped[missing]
    out = capsys.readouterr().out
    assert "4 skipped" in out and out.count("\n") == 1  # one summary line, no traceback
    assert len(BottleneckCache("tiny-v1")) == 4  # nothing cached for bad files


def test_bottlenecks_for_splits_aligns_labels(tmp_path, cache_env):
    from helpers.data import ImageSplits

    paths = write_images(tmp_path / "imgs", 5)
    broken = tmp_path / "imgs" / "broken.png"
    broken.write_bytes(b"junk")
    splits = ImageSplits(["a", "b"], {"training": paths[:3] + [broken], "testing": paths[3:]},
                         {"training": np.array([0, 1, 0, 1]), "testing": np.array([1, 0])})
    result = bottlenecks.bottlenecks_for_splits(splits, TinyBackbone(), progress=False)
    assert result["training"].labels.tolist() == [0, 1, 0]
    assert result["testing"].labels.tolist() == [1, 0]
    assert [p for p, _ in result["training"].skipped] == [broken]
