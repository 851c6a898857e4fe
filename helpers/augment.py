"""Image distortions for training: flip, crop, scale and brightness, as TensorFlow ops on a batch.

These are the four distortions behind retrain.py's flags, with the same meaning
for each number:

- ``flip_left_right`` (``--flip_left_right``): mirror half of the images, chosen at random.
- ``random_crop`` (``--random_crop``, a percentage): the margin around the kept window.
  With 10, the image is first made 10% larger than the network's input, then an
  input-sized window is cut from a random place: about 9% of the width and of the
  height is cut away, split at random between the two edges.
- ``random_scale`` (``--random_scale``, a percentage): on top of that, the image is
  enlarged by a random factor between 1 and 1 + percent/100 before the cut, so objects
  appear at different sizes.
- ``random_brightness`` (``--random_brightness``, a percentage): every pixel is
  multiplied by one random factor between 1 - percent/100 and 1 + percent/100.

They are applied in retrain.py's order: crop and scale, then flip, then brightness.
One difference: retrain.py resized the image and then cut the window out of it; here
the window is cut and resized in one step (``tf.image.crop_and_resize``), which is the
same geometric transformation with a single resampling and works on a whole batch.
Brighter pixels are clipped to 1 (retrain.py left them above 1), because the
backbones expect images in [0, 1].

Why distortions bypass the bottleneck cache: a bottleneck is the network's answer
for one fixed image. A distorted image is a new image every time it is drawn, so its
bottleneck must be computed again through the whole network. On a CPU that is about
100 images per second, which is why :func:`distorted_features` computes a fixed,
small number of distorted copies per training image (timed, and cached under a key
that includes the seed) instead of retrain.py's fresh distortion of every image in
every training step.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

import helpers  # noqa: F401  (sets the TensorFlow environment switches first)
import tensorflow as tf

DEFAULT_SEED = 42


def should_distort_images(flip_left_right=False, random_crop=0, random_scale=0, random_brightness=0) -> bool:
    """True when any distortion is asked for (retrain.py's function of the same name).

    When it is False, training can use the cached bottlenecks; when True, every
    training image has to go through the network again.
    """
    return bool(flip_left_right) or random_crop != 0 or random_scale != 0 or random_brightness != 0


def _check_percent(name: str, value: float, upper: float | None = None) -> float:
    """Return ``value`` as a float, or raise a ValueError that names the flag."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number (a percentage), got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (upper is not None and value >= upper):
        limit = f" and below {upper:g}" if upper is not None else ""
        raise ValueError(f"{name} must be a percentage of 0 or more{limit}, got {value:g}")
    return value


def _rng(rng: tf.random.Generator | int | None) -> tf.random.Generator:
    """A ``tf.random.Generator``: the one given, or a new one seeded with the int (default 42)."""
    if isinstance(rng, tf.random.Generator):
        return rng
    return tf.random.Generator.from_seed(DEFAULT_SEED if rng is None else int(rng))


def _as_batch(images) -> tuple[tf.Tensor, bool]:
    """Images as a float32 batch ``[n, h, w, 3]``; also whether a single image was given."""
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        images = tf.image.convert_image_dtype(images, tf.float32)
    images = tf.cast(images, tf.float32)
    if images.shape.rank == 3:
        return images[tf.newaxis], True
    if images.shape.rank != 4:
        raise ValueError(f"expected an image [h, w, 3] or a batch [n, h, w, 3], got shape {images.shape}")
    return images, False


def _output_hw(images: tf.Tensor, output_size) -> tuple[int, int]:
    """The output (height, width): ``output_size`` (int or pair), or the input's own size."""
    if output_size is None:
        return int(images.shape[1]), int(images.shape[2])
    if isinstance(output_size, (int, np.integer)):
        return int(output_size), int(output_size)
    height, width = output_size
    return int(height), int(width)


def random_flip_left_right(images, rng=None) -> tf.Tensor:
    """Mirror each image left-right with probability 1/2 (``--flip_left_right``)."""
    images, single = _as_batch(images)
    flip = _rng(rng).uniform([tf.shape(images)[0]]) < 0.5
    out = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return out[0] if single else out


def random_crop_and_scale(images, output_size=None, random_crop=0, random_scale=0, rng=None) -> tf.Tensor:
    """Cut a random window out of each image and resize it to ``output_size`` (``--random_crop``, ``--random_scale``).

    retrain.py enlarges the image by ``(1 + crop/100) * u`` with ``u`` uniform in
    ``[1, 1 + scale/100]`` and cuts an output-sized window at a random place: the
    window covers ``1 / ((1 + crop/100) * u)`` of each side. With both at 0 this is a
    plain resize.
    """
    random_crop = _check_percent("random_crop", random_crop)
    random_scale = _check_percent("random_scale", random_scale)
    images, single = _as_batch(images)
    height, width = _output_hw(images, output_size)
    generator = _rng(rng)
    n = tf.shape(images)[0]
    scale = (1.0 + random_crop / 100.0) * generator.uniform([n], 1.0, 1.0 + random_scale / 100.0)
    side = 1.0 / scale  # fraction of the height and width that the window keeps
    top = generator.uniform([n]) * (1.0 - side)
    left = generator.uniform([n]) * (1.0 - side)
    boxes = tf.stack([top, left, top + side, left + side], axis=1)
    out = tf.image.crop_and_resize(images, boxes, tf.range(n), [height, width])
    return out[0] if single else out


def random_brighten(images, random_brightness=0, rng=None, clip=True) -> tf.Tensor:
    """Multiply each image by a random factor in ``[1 - p/100, 1 + p/100]`` (``--random_brightness``).

    ``clip`` keeps the result in [0, 1], the range the backbones expect.
    """
    percent = _check_percent("random_brightness", random_brightness, upper=100)
    images, single = _as_batch(images)
    factor = _rng(rng).uniform([tf.shape(images)[0]], 1.0 - percent / 100.0, 1.0 + percent / 100.0)
    out = images * factor[:, None, None, None]
    if clip:
        out = tf.clip_by_value(out, 0.0, 1.0)
    return out[0] if single else out


def distort_images(images, output_size=None, flip_left_right=False, random_crop=0, random_scale=0,
                   random_brightness=0, rng=None) -> tf.Tensor:
    """Apply retrain.py's distortions to a batch, in its order: crop and scale, flip, brightness.

    ``images`` is float32 ``[n, h, w, 3]`` in [0, 1] (uint8 is converted; a single
    ``[h, w, 3]`` image works too); the result is ``[n, *output_size, 3]`` (the input's
    size when ``output_size`` is None). ``rng`` is a ``tf.random.Generator`` or a seed:
    the same seed gives the same distortions.
    """
    generator = _rng(rng)
    out = random_crop_and_scale(images, output_size, random_crop, random_scale, rng=generator)
    if flip_left_right:
        out = random_flip_left_right(out, rng=generator)
    if random_brightness:
        out = random_brighten(out, random_brightness, rng=generator)
    return out


def one_at_a_time(images, output_size, random_crop=20, random_scale=20, random_brightness=30,
                  seed=DEFAULT_SEED) -> dict:
    """Each distortion alone, then all four together, on the same images: ``{name: batch}`` for a figure.

    Starts with ``"original"`` (only resized). The flip is random too: about half the
    images come out mirrored.
    """
    return {
        "original": distort_images(images, output_size),
        "flip (random)": distort_images(images, output_size, flip_left_right=True, rng=seed),
        f"crop {random_crop:g}%": distort_images(images, output_size, random_crop=random_crop, rng=seed),
        f"scale {random_scale:g}%": distort_images(images, output_size, random_scale=random_scale, rng=seed),
        f"brightness {random_brightness:g}%": distort_images(images, output_size,
                                                            random_brightness=random_brightness, rng=seed),
        "all four": distort_images(images, output_size, True, random_crop, random_scale, random_brightness,
                                   rng=seed),
    }


def load_size_for(input_size: int, random_crop=0, random_scale=0) -> int:
    """The size to decode images at, so that the largest enlargement is still downsampling.

    retrain.py resized the original photo to at most ``input * (1 + crop/100) * (1 + scale/100)``
    before cutting; decoding at that size keeps the window at full detail.
    """
    factor = (1.0 + _check_percent("random_crop", random_crop) / 100.0) * (
        1.0 + _check_percent("random_scale", random_scale) / 100.0)
    return int(math.ceil(input_size * factor))


@dataclass
class DistortedFeatures:
    """Bottlenecks of distorted copies of images, computed through the network.

    ``features`` is ``[n_images * copies, dim]``; ``index[i]`` says which of the given
    paths row ``i`` came from (so ``labels[index]`` are its labels); ``skipped`` lists
    files that could not be read; ``seconds`` is the time the network work took
    (measured when it was computed, also when the rows now come from the cache);
    ``from_cache`` says whether they did.
    """

    features: np.ndarray
    index: np.ndarray
    copies: int
    seconds: float
    skipped: list = field(default_factory=list)
    from_cache: bool = False

    @property
    def images_per_second(self) -> float:
        """How many distorted images per second went through the network."""
        return len(self.features) / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """One line: rows, copies, speed, and whether they were read from the cache."""
        where = "read from the cache (computed earlier" if self.from_cache else "computed ("
        return (f"{len(self.features)} distorted bottlenecks ({self.copies} per image): {where}"
                f" in {self.seconds:.1f} s, {self.images_per_second:.0f} images/s)"
                + (f"; {len(self.skipped)} files skipped" if self.skipped else ""))


def _cache_file(paths, backbone, copies, flags, batch_size, seed) -> Path:
    """Where a run's distorted bottlenecks are kept: keyed by everything that changes them."""
    import hashlib
    import json
    import re

    from helpers.bottlenecks import file_digest
    from helpers.settings import cache_dir

    digest = hashlib.sha1(json.dumps([str(backbone.id), copies, flags, batch_size, seed]).encode())
    for path in paths:
        digest.update(file_digest(path).encode() if path.is_file() else str(path).encode())
    folder = cache_dir("distorted", re.sub(r"[^A-Za-z0-9._-]+", "_", str(backbone.id)).strip("._") or "backbone")
    return folder / f"{digest.hexdigest()}.npz"


def distorted_features(paths: Sequence[Path], backbone, copies=1, flip_left_right=False, random_crop=0,
                       random_scale=0, random_brightness=0, batch_size=32, seed=DEFAULT_SEED,
                       progress=True, cache=True) -> DistortedFeatures:
    """Compute the bottlenecks of ``copies`` distorted versions of each image.

    Each image is decoded once (at :func:`load_size_for` size), then distorted
    ``copies`` times with :func:`distort_images` and passed through
    ``backbone.features``. Training on these rows is a bounded version of retrain.py's
    distortions: retrain.py draws a fresh distortion for every image of every step
    (4,000 steps x 100 images = 400,000 network passes); here it costs
    ``len(paths) * copies`` passes.

    The distortions are drawn from ``seed``, so the same call gives the same rows; with
    ``cache=True`` they are stored under ``cache_dir("distorted")`` (keyed by the
    backbone, the flags, the seed and the files' contents) and a repeated call reads them.
    """
    copies = int(copies)
    if copies < 1:
        raise ValueError(f"copies must be 1 or more, got {copies}")
    if not should_distort_images(flip_left_right, random_crop, random_scale, random_brightness):
        raise ValueError("no distortion asked for: use the cached bottlenecks instead "
                         "(set flip_left_right, random_crop, random_scale or random_brightness)")
    flags = [bool(flip_left_right), float(random_crop), float(random_scale), float(random_brightness)]
    paths = [Path(p) for p in paths]
    cache_file = _cache_file(paths, backbone, copies, flags, batch_size, seed) if cache else None
    if cache_file is not None and cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as stored:
                skipped = [(paths[i], "could not be read") for i in stored["skipped"]]
                return DistortedFeatures(stored["features"], stored["index"], copies, float(stored["seconds"]),
                                         skipped, from_cache=True)
        except Exception:  # a damaged entry is computed again
            cache_file.unlink(missing_ok=True)
    result = _compute_distorted(paths, backbone, copies, flags, batch_size, seed, progress)
    if cache_file is not None:
        skipped_index = [paths.index(p) for p, _ in result.skipped]
        temp = cache_file.with_suffix(".tmp.npz")
        np.savez(temp, features=result.features, index=result.index, seconds=result.seconds,
                 skipped=np.asarray(skipped_index, dtype=int))
        os.replace(temp, cache_file)
    return result


def _compute_distorted(paths, backbone, copies, flags, batch_size, seed, progress) -> DistortedFeatures:
    """The network work of :func:`distorted_features` (no cache)."""
    from helpers.bottlenecks import image_dataset

    flip_left_right, random_crop, random_scale, random_brightness = flags
    generator = _rng(seed)
    size = load_size_for(backbone.input_size, random_crop, random_scale)
    features, index, skipped = [], [], []
    start = time.perf_counter()
    batches = image_dataset(paths, size, batch_size=batch_size, central_crop=getattr(backbone, "central_crop", 1.0))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=math.ceil(len(paths) / batch_size),
                       desc=f"distorted x{copies}", unit="batch")
    for images, ok, idx in batches:
        ok = ok.numpy().astype(bool)
        skipped += [(paths[i], "could not be read") for i in idx.numpy()[~ok]]
        images, idx = tf.boolean_mask(images, ok), idx.numpy()[ok]
        if len(idx) == 0:
            continue
        for _ in range(copies):
            distorted = distort_images(images, backbone.input_size, flip_left_right, random_crop,
                                       random_scale, random_brightness, rng=generator)
            features.append(np.asarray(backbone.features(distorted), dtype=np.float32))
            index.append(idx)
    seconds = time.perf_counter() - start
    dim = getattr(backbone, "feature_dim", 0)
    return DistortedFeatures(
        features=np.concatenate(features) if features else np.zeros((0, dim), np.float32),
        index=np.concatenate(index).astype(int) if index else np.zeros(0, int),
        copies=copies, seconds=seconds, skipped=skipped)
