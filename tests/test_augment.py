"""helpers.augment: retrain.py's four distortions as batch ops, reproducible and checked."""
import numpy as np
import pytest

import helpers  # noqa: F401
import tensorflow as tf
from helpers import augment


@pytest.fixture
def batch():
    """Eight 40x40 images whose pixel values encode their position (so crops and flips can be traced)."""
    rows, cols = np.meshgrid(np.linspace(0, 1, 40), np.linspace(0, 1, 40), indexing="ij")
    image = np.stack([rows, cols, 0.5 * np.ones_like(rows)], axis=-1).astype(np.float32)
    return np.repeat(image[None], 8, axis=0)


def test_should_distort_images_matches_the_flags():
    assert not augment.should_distort_images()
    assert augment.should_distort_images(flip_left_right=True)
    assert augment.should_distort_images(random_crop=5)
    assert augment.should_distort_images(random_scale=5)
    assert augment.should_distort_images(random_brightness=5)


def test_no_distortion_is_the_identity(batch):
    out = augment.distort_images(batch)
    np.testing.assert_array_equal(out.numpy(), batch)


def test_same_seed_same_distortions_other_seed_other_ones(batch):
    flags = dict(output_size=32, flip_left_right=True, random_crop=10, random_scale=20, random_brightness=20)
    a = augment.distort_images(batch, rng=7, **flags).numpy()
    b = augment.distort_images(batch, rng=7, **flags).numpy()
    c = augment.distort_images(batch, rng=8, **flags).numpy()
    assert a.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_flip_mirrors_some_images_and_keeps_the_others(batch):
    out = augment.random_flip_left_right(batch, rng=0).numpy()
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, batch)]
    kept = [np.array_equal(o, i) for o, i in zip(out, batch)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < len(batch)


def test_crop_keeps_a_window_of_the_expected_size(batch):
    # random_crop=100 doubles the image before cutting: the window covers half of each side.
    out = augment.random_crop_and_scale(batch, 40, random_crop=100, rng=1).numpy()
    row_span = out[:, -1, 0, 0] - out[:, 0, 0, 0]
    col_span = out[:, 0, -1, 1] - out[:, 0, 0, 1]
    np.testing.assert_allclose(row_span, 0.5, atol=1e-5)
    np.testing.assert_allclose(col_span, 0.5, atol=1e-5)
    assert out[:, 0, 0, 0].min() >= 0 and out[:, -1, 0, 0].max() <= 1 + 1e-6


def test_scale_varies_the_window_between_the_bounds(batch):
    out = augment.random_crop_and_scale(batch, 40, random_scale=100, rng=2).numpy()
    span = out[:, -1, 0, 0] - out[:, 0, 0, 0]
    assert np.all(span >= 0.5 - 1e-5) and np.all(span <= 1 + 1e-5)
    assert span.std() > 0.01


def test_brightness_multiplies_by_a_factor_in_range_and_stays_in_0_1(batch):
    dim = batch * 0.5
    out = augment.random_brighten(dim, 30, rng=3).numpy()
    factor = out[:, 20, 20, 2] / dim[:, 20, 20, 2]
    assert np.all(factor >= 0.7 - 1e-6) and np.all(factor <= 1.3 + 1e-6)
    np.testing.assert_allclose(out, dim * factor[:, None, None, None], rtol=1e-5)
    assert augment.random_brighten(np.ones((2, 4, 4, 3), np.float32), 50, rng=0).numpy().max() <= 1.0


def test_a_single_image_and_uint8_work():
    image = (np.arange(10 * 10 * 3) % 256).astype(np.uint8).reshape(10, 10, 3)
    out = augment.distort_images(image, 6, flip_left_right=True, random_crop=10)
    assert out.shape == (6, 6, 3) and out.dtype == tf.float32
    assert float(tf.reduce_max(out)) <= 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(random_crop=-5), "random_crop must be a percentage of 0 or more"),
    (dict(random_scale="big"), "random_scale must be a number"),
    (dict(random_brightness=100), "below 100"),
])
def test_bad_flags_get_a_clear_message(batch, kwargs, message):
    with pytest.raises(ValueError, match=message):
        augment.distort_images(batch, **kwargs)


def test_bad_shape_gets_a_clear_message():
    with pytest.raises(ValueError, match="expected an image"):
        augment.distort_images(np.zeros((4, 4), np.float32))


def test_load_size_leaves_room_for_the_largest_window():
    assert augment.load_size_for(224) == 224
    assert augment.load_size_for(224, random_crop=10, random_scale=10) == 272


class _TinyBackbone:
    """Stands in for helpers.backbones.Backbone: 'features' are the mean colour per image."""

    id = "tiny-mean-colour"
    input_size = 16
    feature_dim = 3

    def features(self, images):
        return tf.reduce_mean(images, axis=[1, 2]).numpy()


def test_distorted_features_gives_copies_rows_per_readable_image(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        paths.append(tmp_path / f"img{i}.png")
        Image.new("RGB", (24, 20), colour).save(paths[-1])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    result = augment.distorted_features(paths + [broken], _TinyBackbone(), copies=3, random_brightness=20,
                                        batch_size=2, progress=False)
    assert result.features.shape == (9, 3)
    assert sorted(result.index.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [p for p, _ in result.skipped] == [broken]
    # brightness changes the mean colour but never the dominant channel
    assert np.array_equal(result.features.argmax(axis=1), result.index)
    assert result.images_per_second > 0 and not result.from_cache
    again = augment.distorted_features(paths + [broken], _TinyBackbone(), copies=3, random_brightness=20,
                                       batch_size=2, progress=False)
    assert again.from_cache and again.seconds == result.seconds
    np.testing.assert_array_equal(again.features, result.features)
    assert [p for p, _ in again.skipped] == [broken]
    other_seed = augment.distorted_features(paths, _TinyBackbone(), copies=3, random_brightness=20,
                                            batch_size=2, progress=False, seed=1)
    assert not other_seed.from_cache and not np.allclose(other_seed.features, result.features)


def test_distorted_features_refuses_no_distortion():
    with pytest.raises(ValueError, match="no distortion asked for"):
        augment.distorted_features([], _TinyBackbone(), copies=2)
