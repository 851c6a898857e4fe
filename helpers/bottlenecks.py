"""Bottlenecks: each image's feature vector from a frozen backbone, computed once and cached.

Retraining only the last layer means the expensive part -- running every image
through the pretrained network -- needs doing only once per image. This module
does it with a ``tf.data`` pipeline (files decoded and resized in parallel while
the network works on the previous batch) and keeps one small ``.npy`` file per
image, so the second run, and every notebook after the first, reads vectors
instead of recomputing them.

The cache is keyed by the backbone's ``id`` and the SHA-1 of the file's bytes:
an edited image or another backbone is recomputed, nothing else is. Entries are
written atomically (a temporary file in the same folder, then ``os.replace``),
so an interrupted run (Ctrl-C, a killed kernel) resumes where it stopped and
never leaves a half-written entry behind; a damaged entry is recomputed.
Files that cannot be decoded are skipped and reported, never a crash mid-run.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helpers import data
from helpers.settings import cache_dir

__all__ = [
    "BottleneckCache",
    "Bottlenecks",
    "bottlenecks_for_splits",
    "compute_bottlenecks",
    "file_digest",
    "image_dataset",
]

#: Name prefix of the temporary files an entry is written to before ``os.replace``.
TEMP_PREFIX = ".tmp-"
#: A temporary file older than this (seconds) is a leftover of a killed run, not a write in progress.
STALE_SECONDS = 60.0


def image_dataset(paths, size, batch_size: int = 32, errors: dict | None = None, central_crop: float = 1.0):
    """A ``tf.data.Dataset`` of batches ``(images, ok, index)`` decoded from ``paths``.

    Files are decoded, cropped (``central_crop``) and resized by ``data.load_image`` inside
    ``tf.numpy_function``, several at once (``num_parallel_calls=AUTOTUNE``) but
    delivered in order (``deterministic=True``); ``prefetch`` prepares the next
    batch while the network runs. ``images`` is float32 ``[n, h, w, 3]`` in
    [0, 1], ``index`` the position in ``paths``. A file that cannot be decoded
    gives ``ok=False`` and a zero image instead of an exception; its reason is
    stored in ``errors[index]`` when a dict is passed.
    """
    import tensorflow as tf

    height, width = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    central_crop = data.check_central_crop(central_crop)
    paths = [os.fspath(p) for p in paths]

    def load(path: bytes, index) -> tuple[np.ndarray, bool]:
        try:
            return data.load_image(path.decode("utf-8"), (height, width), central_crop).astype(np.float32), True
        except Exception as error:  # BadImageError, and anything else a strange file raises
            if errors is not None:
                errors[int(index)] = getattr(error, "reason", f"{type(error).__name__}: {error}")
            return np.zeros((height, width, 3), np.float32), False

    def load_tf(path, index):
        image, ok = tf.numpy_function(load, [path, index], [tf.float32, tf.bool], stateful=False)
        image.set_shape([height, width, 3])
        ok.set_shape([])
        return image, ok, index

    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string),
                                                  tf.range(len(paths), dtype=tf.int64)))
    dataset = dataset.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def file_digest(path) -> str:
    """SHA-1 (hex) of the file's bytes: the cache key, so a changed image gets a new entry."""
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_name(backbone_id: str) -> str:
    """A backbone id made safe as a folder name (a TF Hub URL contains slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(backbone_id)).strip("._") or "backbone"


class BottleneckCache:
    """One ``<sha1>.npy`` file per image under ``cache_dir("bottlenecks", backbone_id)``.

    ``root`` replaces ``cache_dir("bottlenecks")`` (the ``--bottleneck_dir`` flag).
    Opening the cache deletes temporary files that an interrupted run left.
    """

    def __init__(self, backbone_id: str, root=None):
        self.backbone_id = str(backbone_id)
        name = _folder_name(backbone_id)
        self.folder = Path(root) / name if root else cache_dir("bottlenecks", name)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.remove_temp_files()

    def __repr__(self) -> str:
        return f"BottleneckCache({self.backbone_id!r}, folder='{self.folder}')"

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.npy"

    def remove_temp_files(self, older_than: float = STALE_SECONDS) -> int:
        """Delete ``.tmp-*`` files a killed run left behind; return how many.

        Only files older than ``older_than`` seconds go: a younger one may be an
        entry that another process (a notebook running beside the command) is
        writing right now.
        """
        removed, now = 0, time.time()
        for stray in self.folder.glob(TEMP_PREFIX + "*"):
            try:
                if now - stray.stat().st_mtime >= older_than:
                    stray.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def get(self, digest: str, dim: int | None = None) -> np.ndarray | None:
        """The cached vector, or None when missing or damaged (an unreadable file is deleted)."""
        path = self.path(digest)
        try:
            vector = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (ValueError, EOFError, UnicodeError):  # truncated or garbage file: recompute it
            path.unlink(missing_ok=True)
            return None
        valid = (vector.ndim == 1 and vector.dtype == np.float32 and vector.size > 0
                 and (dim is None or vector.shape[0] == dim) and bool(np.all(np.isfinite(vector))))
        return vector if valid else None  # an invalid entry is overwritten when recomputed

    def put(self, digest: str, vector) -> None:
        """Store a vector atomically: readers see no entry or the whole file, never half of it."""
        handle, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".npy", dir=self.folder)
        try:
            with os.fdopen(handle, "wb") as file:
                np.save(file, np.asarray(vector, dtype=np.float32))
            os.replace(temp_name, self.path(digest))
        except FileNotFoundError:
            pass  # the temp file was cleaned away under us: the entry is simply recomputed next time
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*.npy"))


@dataclass
class Bottlenecks:
    """Feature vectors of the images that could be decoded, in input order.

    ``paths`` and ``features`` leave out the skipped files; ``indices`` are the
    kept images' positions in the input list (``labels[indices]`` aligns labels),
    and ``labels`` is filled by ``bottlenecks_for_splits``.
    """

    features: np.ndarray
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    computed: int = 0
    from_cache: int = 0
    seconds: float = 0.0
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def summary(self) -> str:
        """One line: how many images, from where, how fast, how many skipped."""
        rate = self.computed / self.seconds if self.seconds > 0 and self.computed else 0.0
        line = (f"{len(self.paths)} bottlenecks: {self.from_cache} from cache, {self.computed} computed"
                + (f" ({rate:.0f} images/s)" if rate else "") + f" in {self.seconds:.1f} s")
        if self.skipped:
            line += f"; {len(self.skipped)} skipped (e.g. {self.skipped[0][0].name}: {self.skipped[0][1]})"
        return line


def _cache_for(cache, backbone) -> BottleneckCache | None:
    if isinstance(cache, BottleneckCache):
        return cache
    return BottleneckCache(backbone.id) if cache else None


def compute_bottlenecks(paths, backbone, batch_size: int = 32, progress: bool = True,
                        cache=True, desc: str | None = None) -> Bottlenecks:
    """Feature vectors of ``paths`` through ``backbone``, from the cache where possible.

    Files are cut as ``backbone.central_crop`` says (1 when it has none).
    ``cache`` is True (the default cache for ``backbone.id``), False (compute
    everything, store nothing) or a ``BottleneckCache`` (e.g. another root).
    Only images missing from the cache go through the network; identical files
    are computed once. Every finished batch is stored at once, so an interrupted
    call loses at most one batch. Unreadable files are listed in ``skipped``
    and summed up in one printed line.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    paths = [Path(p) for p in paths]
    store = _cache_for(cache, backbone)
    dim = getattr(backbone, "feature_dim", None)
    vectors: dict[int, np.ndarray] = {}
    reasons: dict[int, str] = {}
    digests: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            digests[i] = file_digest(path)
        except OSError as error:
            reasons[i] = "file not found" if isinstance(error, FileNotFoundError) else f"cannot be read ({error})"
    from_cache = 0
    pending: dict[str, list[int]] = {}  # digest -> positions in ``paths`` needing it
    for i, digest in digests.items():
        cached = store.get(digest, dim) if store is not None else None
        if cached is not None:
            vectors[i] = cached
            from_cache += 1
        else:
            pending.setdefault(digest, []).append(i)

    todo = [positions[0] for positions in pending.values()]
    bar = tqdm(total=len(paths), initial=from_cache + len(reasons), unit="img", disable=not progress,
               desc=desc or f"bottlenecks ({getattr(backbone, 'name', 'backbone')})")
    computed = 0
    errors: dict[int, str] = {}
    crop = getattr(backbone, "central_crop", 1.0)
    batches = image_dataset([paths[i] for i in todo], backbone.input_size, batch_size, errors, crop) if todo else []
    try:
        for images, ok, index in batches:
            ok, index = ok.numpy(), index.numpy()
            features = np.asarray(backbone.features(images), dtype=np.float32) if ok.any() else None
            for row, (good, j) in enumerate(zip(ok, index)):
                positions = pending[digests[todo[j]]]
                if not good:
                    for i in positions:
                        reasons[i] = errors.get(int(j), "could not be decoded")
                    continue
                if store is not None:
                    store.put(digests[todo[j]], features[row])
                for i in positions:
                    vectors[i] = features[row]
                computed += 1
            bar.update(sum(len(pending[digests[todo[j]]]) for j in index))
    finally:
        bar.close()

    kept = np.asarray(sorted(vectors), dtype=np.int64)
    width = dim or (next(iter(vectors.values())).shape[0] if vectors else 0)
    result = Bottlenecks(
        features=np.stack([vectors[i] for i in kept]) if len(kept) else np.zeros((0, width), np.float32),
        paths=[paths[i] for i in kept],
        skipped=[(paths[i], reasons[i]) for i in sorted(reasons)],
        computed=computed,
        from_cache=from_cache,
        seconds=time.perf_counter() - start,
        indices=kept,
    )
    if progress or result.skipped:
        print(f"{desc or 'Bottlenecks'}: {result.summary()}")
    return result


def bottlenecks_for_splits(splits, backbone, batch_size: int = 32, progress: bool = True,
                           cache=True, split_names=None) -> dict[str, Bottlenecks]:
    """``compute_bottlenecks`` for every split of an ``ImageSplits``, with ``labels`` aligned.

    Returns ``{split: Bottlenecks}``; each has ``labels`` (the split's labels of
    the kept images) so that skipped files never shift a label.
    """
    store = _cache_for(cache, backbone)
    result = {}
    for split in split_names or splits.files:
        b = compute_bottlenecks(splits.files[split], backbone, batch_size, progress,
                                cache=store if store is not None else False, desc=split)
        b.labels = np.asarray(splits.labels[split])[b.indices]
        result[split] = b
    return result
