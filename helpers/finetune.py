"""Beyond the last layer: fine-tune the top blocks of the backbone, fast enough for a laptop CPU.

Retraining only the last layer keeps every pretrained weight. Fine-tuning also
lets the last few blocks of the network adapt to your images. Done naively, each
training step runs every image through the whole network forwards *and*
backwards: on a 2-core CPU that is hours for one pass over the flowers.

The trick is the same one that makes last-layer retraining fast, moved deeper:
the blocks below the ones you unfreeze do not change, so their output for an
image never changes either. We compute it once per image (the activations that
enter block ``k``, e.g. ``7 x 7 x 192`` values for EfficientNet-Lite0's block 14)
and cache it like a bottleneck. Each epoch then runs only the top blocks, a small
part of the network.

What this trades away: augmentation *before* the cached layers. A random crop or
a colour change of the photo changes the cached activations, so it cannot be
drawn afresh in every epoch. Two ways to buy some of it back:
:func:`distorted_activations` caches a fixed number of distorted copies of each
training photo (one pass through the frozen part each, once), and
:func:`fine_tune` flips the cached ``7 x 7`` maps left-right at random, which is
free but only approximately the map of a flipped photo (the convolution
kernels below are not mirror-symmetric).

The same cached activations give the ordinary bottlenecks too: the pretrained
top blocks, frozen, turn them into the 1280-d vectors (:func:`frozen_bottlenecks`),
so last-layer retraining and fine-tuning start from one extraction.

Recipe (the usual Keras one): first fit the new last layer with the backbone
frozen (:func:`helpers.retrain.train_final_layer`), then unfreeze the top blocks
and train them together with it at a low learning rate (Adam, 1e-4), with
BatchNorm kept in inference mode (its statistics are ImageNet's; re-estimating
them from small batches of a few thousand images would damage them), and early
stopping on the validation loss that restores the best epoch. If no epoch beats
the frozen start on validation, the frozen start is kept.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

import helpers  # noqa: F401  (TensorFlow environment switches before TensorFlow)
from helpers import efficientnet_lite, evaluation
from helpers.bottlenecks import BottleneckCache, compute_bottlenecks

__all__ = [
    "DEFAULT_MODEL", "DEFAULT_FINE_TUNE_BLOCKS", "cut_block", "LowerNetwork", "Activations", "cached_activations",
    "distorted_activations", "frozen_features", "frozen_bottlenecks", "FineTunedModel", "fine_tune",
    "fine_tune_splits", "check_fine_tune_options", "balanced_class_weights", "scores", "evaluate_probabilities",
    "comparison_table", "activation_megabytes", "check_activation_memory", "check_fine_tuned",
]

DEFAULT_MODEL = "efficientnet_lite0"
#: How many of the last blocks the course unfreezes by default (blocks 14 and 15 of EfficientNet-Lite0).
DEFAULT_FINE_TUNE_BLOCKS = 2


def _check_blocks(fine_tune_blocks, n_blocks: int) -> int:
    try:
        blocks = int(fine_tune_blocks)
    except (TypeError, ValueError):
        raise ValueError(f"fine_tune_blocks must be a whole number, got {fine_tune_blocks!r}") from None
    if blocks != fine_tune_blocks or not 1 <= blocks < n_blocks:
        raise ValueError(f"fine_tune_blocks must be between 1 and {n_blocks - 1} (the network has {n_blocks} "
                         f"blocks; 0 means last-layer retraining, no fine-tuning), got {fine_tune_blocks!r}")
    return blocks


def cut_block(fine_tune_blocks: int, model_name: str = DEFAULT_MODEL) -> int:
    """Index ``k`` of the first unfrozen block: the network has 16 blocks, so 2 unfrozen blocks give ``k = 14``."""
    n_blocks = len(efficientnet_lite.block_specs(_state_dict(model_name)))
    return n_blocks - _check_blocks(fine_tune_blocks, n_blocks)


@lru_cache(maxsize=3)
def _state_dict(model_name: str) -> dict:
    """The pretrained weights of ``model_name`` (read once per process)."""
    return efficientnet_lite.load_state_dict(efficientnet_lite.weight_file(model_name))


def _fresh_model(model_name: str):
    """A new Keras copy of the pretrained backbone (fine-tuning changes its weights in place)."""
    return efficientnet_lite.build_keras_model(model_name, include_top=False,
                                               state_dict=_state_dict(model_name))


class LowerNetwork:
    """The frozen part of the backbone, below block ``k``, shaped like a ``Backbone`` for the cache.

    ``features(images)`` gives the activations that enter block ``k``, flattened to
    ``[n, h * w * c]`` so that :func:`helpers.bottlenecks.compute_bottlenecks` and its
    per-image cache store them exactly like bottlenecks. ``id`` is the backbone's
    cache id plus ``@block<k>``, so these never mix with the ordinary 1280-d bottlenecks.
    """

    def __init__(self, model_name: str = DEFAULT_MODEL, k: int = 14, central_crop: float | None = None):
        import tensorflow as tf

        from helpers import backbones

        model = _fresh_model(model_name)
        self.lower, _ = efficientnet_lite.split_at_block(model, k)
        self.name, self.k = f"{model_name} below block {k}", k
        self.central_crop = backbones.central_crop_for(model_name, central_crop)
        self.id = f"{backbones.bundled_id(model_name)}{backbones.crop_suffix(self.central_crop)}@block{k:02d}"
        self.input_size = efficientnet_lite.MODELS[model_name].input_size
        self.shape = tuple(int(d) for d in self.lower.output_shape[1:])
        self.feature_dim = int(np.prod(self.shape))
        self._run = tf.function(lambda x: self.lower(x, training=False), reduce_retracing=True)

    def features(self, images, batch_size: int = 32) -> np.ndarray:
        import tensorflow as tf

        images = tf.convert_to_tensor(images, tf.float32)
        chunks = [self._run(images[i:i + batch_size]).numpy() for i in range(0, int(images.shape[0]), batch_size)]
        out = np.concatenate(chunks) if chunks else np.zeros((0, *self.shape), np.float32)
        return out.reshape(len(out), -1).astype(np.float32, copy=False)


@dataclass
class Activations:
    """Cached activations entering block ``block`` for one split: ``x`` is float16 ``[n, h, w, c]``.

    float16 halves the memory (7 x 7 x 192 values = 18 KB per image) and loses
    nothing that matters: the activations are ReLU6-bounded and later BatchNorm'd.
    """

    x: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    block: int
    model_name: str
    skipped: list = field(default_factory=list)
    computed: int = 0
    from_cache: int = 0
    seconds: float = 0.0
    indices: np.ndarray | None = None  # positions of the kept images in the split's file list
    central_crop: float = 1.0  # how the image files were cut (helpers.data.load_image)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def megabytes(self) -> float:
        return self.x.nbytes / 1e6


def cached_activations(splits, fine_tune_blocks: int = DEFAULT_FINE_TUNE_BLOCKS, model_name: str = DEFAULT_MODEL,
                       batch_size: int = 32, progress: bool = True, cache=True, split_names=None,
                       central_crop: float | None = None) -> dict:
    """Activations below the top ``fine_tune_blocks`` blocks for each split of an ``ImageSplits``.

    Computed once through the frozen lower network and cached per image (one
    ``.npy`` per image under ``cache_dir("bottlenecks", "<backbone id>@block<k>")``);
    a second call reads them. Returns ``{split: Activations}`` with labels aligned
    (unreadable files are skipped and reported, as for bottlenecks). ``central_crop``
    (None: the model's own) is how image files are cut, as for ``load_backbone``.
    """
    k = cut_block(fine_tune_blocks, model_name)
    lower = LowerNetwork(model_name, k, central_crop)
    store = BottleneckCache(lower.id) if cache is True else cache  # one cache object for every split
    result = {}
    for split in split_names or splits.files:
        b = compute_bottlenecks(splits.files[split], lower, batch_size, progress, cache=store,
                                desc=f"{split} (below block {k})")
        x = b.features.astype(np.float16).reshape(len(b.features), *lower.shape)
        result[split] = Activations(x, np.asarray(splits.labels[split])[b.indices], b.paths, k, model_name,
                                    b.skipped, b.computed, b.from_cache, b.seconds, b.indices, lower.central_crop)
    return result


def distorted_activations(maps: Activations, copies: int = 1, flip_left_right: bool = True, random_crop: float = 10,
                          random_scale: float = 10, random_brightness: float = 10, seed: int = 42,
                          progress: bool = True) -> Activations:
    """Activations of ``copies`` distorted versions of each image of ``maps`` (usually the training split).

    This gives back part of what caching took away: the photo is distorted
    (retrain.py's crop, scale, flip and brightness, :func:`helpers.augment.distort_images`)
    *before* the frozen layers, a fixed number of times, and those activations are
    cached too (by :func:`helpers.augment.distorted_features`, keyed by the flags and
    the seed). Each copy costs one pass through the frozen part, once. The result's
    ``labels`` follow the copies; use it as ``fine_tune(..., distorted=...)`` or, pooled
    through the frozen top, as distorted bottlenecks for the last layer.
    """
    from helpers import augment

    lower = LowerNetwork(maps.model_name, maps.block, maps.central_crop)
    result = augment.distorted_features(maps.paths, lower, copies, flip_left_right, random_crop, random_scale,
                                        random_brightness, seed=seed, progress=progress)
    x = result.features.astype(np.float16).reshape(len(result.features), *lower.shape)
    paths = [maps.paths[i] for i in result.index]
    return Activations(x, np.asarray(maps.labels)[result.index], paths, maps.block, maps.model_name,
                       list(result.skipped), 0 if result.from_cache else len(x), len(x) if result.from_cache else 0,
                       result.seconds, np.asarray(result.index), maps.central_crop)


@lru_cache(maxsize=4)
def _frozen_top(model_name: str, block: int):
    """The pretrained blocks from ``block`` up, never trained (built once per process)."""
    return efficientnet_lite.split_at_block(_fresh_model(model_name), block)[1]


def frozen_features(maps: Activations, batch_size: int = 256) -> np.ndarray:
    """The pretrained network's 1280-d bottlenecks computed from cached activations (the frozen top).

    The same numbers (to float rounding) as ``Backbone.features`` of the images,
    at the cost of the top blocks only: how distorted activations also serve the
    last-layer-with-distortions option.
    """
    upper = _frozen_top(maps.model_name, maps.block)
    if len(maps) == 0:
        return np.zeros((0, int(upper.output_shape[-1])), np.float32)
    return upper.predict(np.asarray(maps.x, np.float32), batch_size=batch_size, verbose=0)


def frozen_bottlenecks(maps: dict) -> dict:
    """``{split: Bottlenecks}`` of the pretrained network, computed from cached activations by the frozen top.

    Saves a second pass through the whole network when the activations are cached
    anyway: last-layer retraining and fine-tuning then start from one extraction.
    """
    from helpers.bottlenecks import Bottlenecks

    result = {}
    for split, part in maps.items():
        b = Bottlenecks(frozen_features(part), list(part.paths), list(part.skipped), part.computed, part.from_cache,
                        part.seconds, part.indices)
        b.labels = part.labels
        result[split] = b
    return result


# --------------------------------------------------------------------------- the fine-tuned model
@dataclass
class FineTunedModel:
    """The fine-tuned top of the network, and how it got there.

    ``top`` maps cached activations to logits (trained blocks + head + new dense
    layer); ``backbone`` is the whole feature network sharing those trained blocks,
    so :meth:`keras_model` is the complete image-to-probabilities model to ship.
    ``history`` has Keras' per-epoch ``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy``; ``start`` the validation loss/accuracy of the frozen start.
    """

    top: object
    backbone: object
    dense: object
    classes: list[str]
    block: int
    model_name: str
    history: dict
    start: dict
    best_epoch: int
    seconds: float
    head_seconds: float = 0.0
    upper: object = None  # the trained top blocks + head, activations -> 1280 pooled features
    settings: dict = field(default_factory=dict)  # learning_rate, flip_left_right, distorted copies...
    central_crop: float = 1.0  # how image files are cut for this model (helpers.data.load_image)

    @property
    def fine_tune_blocks(self) -> int:
        return len(efficientnet_lite.block_names(self.backbone)) - self.block

    @property
    def input_size(self) -> int:
        return efficientnet_lite.MODELS[self.model_name].input_size

    def predict_proba(self, activations, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``[n, classes]`` from cached activations (an ``Activations`` or an array)."""
        import tensorflow as tf

        x = getattr(activations, "x", activations)
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        logits = self.top.predict(np.asarray(x, np.float32), batch_size=batch_size, verbose=0)
        return tf.nn.softmax(logits).numpy()

    def predict(self, activations) -> np.ndarray:
        return np.argmax(self.predict_proba(activations), axis=1)

    def features(self, activations, batch_size: int = 256) -> np.ndarray:
        """The fine-tuned network's 1280-d pooled features (the new bottlenecks) from cached activations."""
        x = getattr(activations, "x", activations)
        if len(x) == 0:
            return np.zeros((0, int(self.upper.output_shape[-1])), np.float32)
        return self.upper.predict(np.asarray(x, np.float32), batch_size=batch_size, verbose=0)

    def keras_model(self):
        """Images float32 ``[n, size, size, 3]`` in [0, 1] -> probabilities: the model to export or convert."""
        import tensorflow as tf

        images = tf.keras.Input((self.input_size, self.input_size, 3), name="images")
        features = self.backbone(images, training=False)
        probabilities = tf.keras.layers.Softmax(name="probabilities")(self.dense(features))
        return tf.keras.Model(images, probabilities, name=f"{self.model_name}_fine_tuned")

    def as_backbone_and_head(self):
        """``(backbone, final_layer)`` shaped like ``helpers.retrain``'s, for ``retrain.export_saved_model``.

        The backbone is the fine-tuned feature network (images -> 1280 features) and
        the head the new last layer, so the exported SavedModel has the same
        signatures, ``labels.txt`` and ``model_info.json`` as a last-layer model and
        ``label_image`` reads it unchanged.
        """
        from types import SimpleNamespace

        from helpers import backbones
        from helpers.retrain import FinalLayer

        kernel, bias = self.dense.get_weights()
        crop = backbones.crop_suffix(self.central_crop)
        backbone = SimpleNamespace(layer=self.backbone, input_size=self.input_size, feature_dim=kernel.shape[0],
                                   name=f"{self.model_name} (top {self.fine_tune_blocks} blocks fine-tuned)",
                                   id=f"{backbones.bundled_id(self.model_name)}{crop}-finetuned{self.fine_tune_blocks}",
                                   central_crop=self.central_crop)
        return backbone, FinalLayer(kernel, bias, dict(self.history))

    @property
    def validation_accuracy(self) -> float:
        """Validation accuracy of the kept weights (the best epoch, or the frozen start)."""
        if not self.best_epoch:
            return self.start["val_accuracy"]
        return self.history["val_accuracy"][self.best_epoch - 1]

    def summary(self) -> str:
        """One line: what was trained, for how long, and what validation said."""
        epochs = len(self.history.get("val_loss", []))
        kept = f"epoch {self.best_epoch}" if self.best_epoch else "the frozen start (no epoch beat it)"
        return (f"fine-tuned the top {self.fine_tune_blocks} blocks (from block {self.block}) for {epochs} epochs "
                f"in {self.seconds:.0f} s; kept {kept}: validation accuracy {self.validation_accuracy:.1%} "
                f"(frozen start {self.start['val_accuracy']:.1%})")


def balanced_class_weights(labels, n_classes: int) -> np.ndarray:
    """One weight per class so that every class counts equally in the loss (scikit-learn's "balanced").

    A class absent from ``labels`` gets weight 1.
    """
    from sklearn.utils.class_weight import compute_class_weight

    weights = np.ones(n_classes)
    present = np.unique(labels)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


def _training_dataset(x, y, batch_size: int, flip_left_right: bool, seed: int):
    """Endless shuffled batches of (float32 activations, labels), each map flipped left-right half of the time.

    The flip of the n-th map drawn is decided by a *stateless* random draw seeded
    with ``(seed, n)``: the maps are prepared on parallel threads, and a stateful
    random op would hand out its numbers in whatever order the threads arrive,
    so a re-run would flip other maps and end with other weights.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat().enumerate()

    def prepare(n, example):
        a, label = example
        a = tf.cast(a, tf.float32)
        if flip_left_right:
            a = tf.image.stateless_random_flip_left_right(a, seed=tf.stack([tf.constant(seed, tf.int64), n]))
        return a, label

    return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fine_tune(activations: dict, classes, learning_rate: float = 1e-4, epochs: int = 10, patience: int = 2,
              batch_size: int = 64, flip_left_right: bool = True, class_weights=None, dropout: float = 0.2,
              head_steps: int = 1000, distorted: Activations | None = None, head=None, seed: int = 42,
              progress: bool = True) -> FineTunedModel:
    """Fine-tune the top blocks of the backbone on cached activations (from :func:`cached_activations`).

    1. The new last layer is fitted first with everything else frozen (retrain.py's
       head, ``head_steps`` SGD steps on the pooled features), so that fine-tuning
       starts from a sensible classifier instead of random weights whose large
       gradients would wreck the pretrained blocks.
    2. The top blocks, the head convolution and the last layer then train together
       with Adam at ``learning_rate``, on shuffled batches of the cached maps
       (flipped left-right at random when ``flip_left_right``), with dropout before
       the last layer. BatchNorm stays in inference mode with its weights frozen.
    3. Early stopping watches the validation loss: training stops after ``patience``
       epochs without improvement and the best epoch's weights are restored; if no
       epoch beat the frozen start, the frozen start is kept.

    ``class_weights``: None, ``"balanced"`` (every class counts equally; for the
    unbalanced X-rays) or a sequence of one weight per class. ``distorted``
    (from :func:`distorted_activations`) adds distorted copies of the training
    images to the pool batches are drawn from; an epoch still draws as many maps
    as there are training images, so it costs the same time. ``head`` (a
    ``retrain.FinalLayer`` already trained on these images' bottlenecks) replaces step 1.
    """
    import tensorflow as tf

    from helpers.retrain import train_final_layer
    from helpers.settings import quiet_native_logs, set_seeds

    train, val = activations["training"], activations["validation"]
    if len(train) == 0 or len(val) == 0:
        raise ValueError("fine-tuning needs training and validation images; one of the splits is empty")
    if not 0 < learning_rate < 1:
        raise ValueError(f"learning_rate must be between 0 and 1 (typically 1e-4), got {learning_rate}")
    classes = list(classes)
    n_classes = len(classes)
    if class_weights == "balanced":
        class_weights = balanced_class_weights(train.labels, n_classes)
    elif class_weights is not None and len(class_weights) != n_classes:
        raise ValueError(f"class_weights needs one weight per class ({n_classes}), got {len(class_weights)}")
    set_seeds(seed)
    started = time.perf_counter()

    backbone = _fresh_model(train.model_name)
    _, upper = efficientnet_lite.split_at_block(backbone, train.block)
    for layer in backbone.layers:  # only the top blocks and the head learn; BatchNorm never does
        layer.trainable = (layer in upper.layers and not isinstance(layer, tf.keras.layers.BatchNormalization))
    if head is None:
        pooled = {name: upper.predict(np.asarray(a.x, np.float32), batch_size=256, verbose=0)
                  for name, a in (("training", train), ("validation", val))}
        head = train_final_layer(pooled["training"], train.labels, pooled["validation"], val.labels, n_classes,
                                 how_many_training_steps=head_steps, class_weights=class_weights, seed=seed,
                                 progress=False)
    elif np.shape(head.weights) != (int(upper.output_shape[-1]), n_classes):
        expected = (int(upper.output_shape[-1]), n_classes)
        raise ValueError(f"head weights are {np.shape(head.weights)}, expected {expected}")
    head_seconds = time.perf_counter() - started

    dense = tf.keras.layers.Dense(n_classes, name="retrained_logits")
    inputs = tf.keras.Input(train.x.shape[1:], name=f"block{train.block:02d}_inputs")
    features = upper(inputs, training=False)  # BatchNorm in inference mode
    logits = dense(tf.keras.layers.Dropout(dropout, seed=seed)(features))
    top = tf.keras.Model(inputs, logits, name="fine_tuned_top")
    dense.set_weights([head.weights, head.bias])
    top.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])

    val_x = np.asarray(val.x, np.float32)
    start_loss, start_accuracy = top.evaluate(val_x, val.labels, batch_size=256, verbose=0)
    start_weights = top.get_weights()
    stop = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    pool_x, pool_y = train.x, train.labels
    if distorted is not None and len(distorted):
        if distorted.x.shape[1:] != train.x.shape[1:]:
            raise ValueError(f"distorted activations are {distorted.x.shape[1:]}, "
                             f"the training ones {train.x.shape[1:]}")
        pool_x, pool_y = np.concatenate([train.x, distorted.x]), np.concatenate([train.labels, distorted.labels])
    with quiet_native_logs():  # oneDNN's "supports DT_HALF only on platforms with AVX-512" (float16 maps)
        fit = top.fit(_training_dataset(pool_x, pool_y, batch_size, flip_left_right, seed),
                      steps_per_epoch=int(np.ceil(len(train) / batch_size)),
                      validation_data=(val_x, val.labels), validation_batch_size=256, epochs=epochs,
                      class_weight=None if class_weights is None else dict(enumerate(map(float, class_weights))),
                      callbacks=[stop], verbose=2 if progress else 0)
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    if history["val_loss"][best_epoch - 1] >= start_loss:
        top.set_weights(start_weights)
        best_epoch = 0
    seconds = time.perf_counter() - started
    return FineTunedModel(top, backbone, dense, classes, train.block, train.model_name, history,
                          {"val_loss": float(start_loss), "val_accuracy": float(start_accuracy)},
                          best_epoch, seconds, head_seconds, upper,
                          {"learning_rate": learning_rate, "epochs": epochs, "patience": patience,
                           "batch_size": batch_size, "flip_left_right": bool(flip_left_right), "dropout": dropout,
                           "distorted": 0 if distorted is None else len(distorted),
                           "class_weights": None if class_weights is None else [float(w) for w in class_weights]},
                          getattr(train, "central_crop", 1.0))


def fine_tune_splits(splits, fine_tune_blocks: int, head=None, class_weights=None, flip_left_right: bool = False,
                     random_crop: float = 0, random_scale: float = 0, random_brightness: float = 0, copies: int = 2,
                     seed: int = 42, progress: bool = True, model_name: str = DEFAULT_MODEL,
                     central_crop: float | None = None, **options):
    """The ``retrain --fine_tune_blocks N`` step: cache activations, fine-tune, give retrain's objects back.

    ``head`` is the last layer the command has just trained (the frozen start).
    The distortion flags keep their meaning: ``flip_left_right`` flips the cached
    maps; ``random_crop`` / ``random_scale`` / ``random_brightness`` add ``copies``
    distorted copies of each training photo (:func:`distorted_activations`, with the flip too).
    Returns ``(backbone, final_layer, bottlenecks, tuned)``: a backbone-like object
    and a ``FinalLayer`` for ``retrain.export_saved_model`` / ``tflite.export_classifier``,
    ``{split: Bottlenecks}`` whose ``features`` are the fine-tuned network's pooled
    features (so retrain's metrics code applies unchanged), and the
    :class:`FineTunedModel`. ``options`` go to :func:`fine_tune` (``learning_rate``, ``epochs``...).
    """
    from helpers.bottlenecks import Bottlenecks

    activations = cached_activations(splits, fine_tune_blocks, model_name, progress=progress,
                                     central_crop=central_crop)
    distorted = None
    if random_crop or random_scale or random_brightness:
        distorted = distorted_activations(activations["training"], copies, flip_left_right, random_crop, random_scale,
                                          random_brightness, seed=seed, progress=progress)
    tuned = fine_tune(activations, splits.classes, class_weights=class_weights, flip_left_right=flip_left_right,
                      distorted=distorted, head=head, seed=seed, progress=progress, **options)
    bottlenecks = {}
    for split, part in activations.items():
        b = Bottlenecks(tuned.features(part), list(part.paths), list(part.skipped), part.computed, part.from_cache,
                        part.seconds, part.indices)
        b.labels = part.labels
        bottlenecks[split] = b
    backbone, final_layer = tuned.as_backbone_and_head()
    return backbone, final_layer, bottlenecks, tuned


def check_fine_tune_options(fine_tune_blocks, backbone_name: str) -> int:
    """The ``--fine_tune_blocks`` value as an int (0 = last layer only), or a ValueError saying what is wrong."""
    try:
        blocks = int(fine_tune_blocks or 0)
    except (TypeError, ValueError):
        raise ValueError(f"--fine_tune_blocks must be a whole number, got {fine_tune_blocks!r}") from None
    if blocks == 0:
        return 0
    if blocks < 0:
        raise ValueError(f"--fine_tune_blocks must be 0 (last layer only) or more, got {blocks}")
    if backbone_name not in efficientnet_lite.MODELS:
        raise ValueError(f"--fine_tune_blocks needs a bundled backbone ({', '.join(efficientnet_lite.MODELS)}): "
                         f"its blocks are named and can be split; {backbone_name!r} is not one of them")
    cut_block(blocks, backbone_name)  # raises for too many blocks
    return blocks


# --------------------------------------------------------------------------- comparing options
def evaluate_probabilities(name: str, probabilities: dict, labels: dict, classes, seconds: float | None = None,
                           positive_class: str | None = None, threshold_rule="youden", note: str = "") -> dict:
    """One row of the comparison: test accuracy with its 95% interval and N, and what training cost.

    ``probabilities`` and ``labels`` map split names to ``[n, classes]`` scores and
    ``[n]`` labels. With two classes, the decision threshold on the positive class
    (default: the second class, e.g. PNEUMONIA) is chosen on *validation*
    (``threshold_rule``, see :func:`helpers.evaluation.choose_threshold`) and test
    accuracy, sensitivity and specificity are measured at it. With more classes the
    prediction is the most probable class.
    """
    classes = list(classes)
    test_p, test_y = np.asarray(probabilities["testing"]), np.asarray(labels["testing"])
    row = {"name": name, "seconds": seconds, "note": note}
    val_p, val_y = probabilities.get("validation"), labels.get("validation")
    if val_p is not None and len(val_y):
        row["validation_accuracy"] = evaluation.accuracy_with_ci(val_y, np.argmax(val_p, axis=1))[0]
    if len(classes) == 2:
        positive = classes.index(positive_class or classes[1])
        truth = {"validation": (np.asarray(val_y) == positive).astype(int), "testing": (test_y == positive).astype(int)}
        threshold = evaluation.choose_threshold(truth["validation"], np.asarray(val_p)[:, positive], threshold_rule)
        metrics = evaluation.binary_metrics(truth["testing"], test_p[:, positive], threshold)
        predicted = (test_p[:, positive] >= threshold).astype(int)
        accuracy, low, high, n = evaluation.accuracy_with_ci(truth["testing"], predicted)
        row.update(threshold=threshold, sensitivity=metrics["sensitivity"], specificity=metrics["specificity"],
                   auc=metrics["auc"], positive_class=classes[positive])
    else:
        accuracy, low, high, n = evaluation.accuracy_with_ci(test_y, np.argmax(test_p, axis=1))
    row.update(accuracy=accuracy, ci95=(low, high), n=n)
    return row


def scores(model, by_split: dict) -> tuple[dict, dict]:
    """``({split: probabilities}, {split: labels})`` of ``model`` on each split, for :func:`evaluate_probabilities`.

    ``model`` has ``predict_proba``; each split is a ``Bottlenecks`` (``features``)
    or an ``Activations`` (``x``) with ``labels``, so a retrained last layer and a
    fine-tuned model are scored the same way.
    """
    probabilities, labels = {}, {}
    for split, part in by_split.items():
        inputs = part.x if isinstance(part, Activations) else part.features
        probabilities[split] = model.predict_proba(inputs) if len(inputs) else np.zeros((0, 0))
        labels[split] = np.asarray(part.labels)
    return probabilities, labels


def comparison_table(rows: list[dict], title: str = ""):
    """A Markdown table of rows from :func:`evaluate_probabilities` (Jupyter shows it as a table).

    Columns: option, test accuracy ``[95% interval]`` and N, sensitivity and
    specificity when the rows have them, and training seconds.
    """
    from IPython.display import Markdown

    binary = any("sensitivity" in row for row in rows)
    header = ["option", "test accuracy [95% CI]", "N"] + (["sensitivity", "specificity", "AUC"] if binary else [])
    header += ["training time", "notes"]
    lines = ([f"**{title}**", ""] if title else []) + ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        low, high = row["ci95"]
        cells = [row["name"], f"{row['accuracy']:.1%} [{low:.1%}, {high:.1%}]", str(row["n"])]
        if binary:
            cells += [f"{row['sensitivity']:.1%}", f"{row['specificity']:.1%}", f"{row['auc']:.3f}"]
        cells += ["" if row.get("seconds") is None else f"{row['seconds']:.0f} s", row.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return Markdown("\n".join(lines))


# --------------------------------------------------------------------------- exercises
def activation_megabytes(n_images: int, shape, bytes_per_value: int = 2) -> float:
    """Memory (MB) of cached activations: images x height x width x channels x bytes (2 for float16)."""
    return n_images * int(np.prod(shape)) * bytes_per_value / 1e6


def check_activation_memory(answer) -> bool:
    """Exercise: the memory of caching the stem's output (112 x 112 x 32, float16) for the 3,670 flowers, in MB."""
    expected = activation_megabytes(3670, (112, 112, 32))
    if answer is None:
        print("Set my_megabytes to your answer (a number of megabytes) and run this cell again.")
        return False
    if abs(float(answer) - expected) <= 0.02 * expected:
        print(f"Right: {expected:,.0f} MB, {expected / activation_megabytes(3670, (14, 14, 112)):.0f} times the "
              f"14 x 14 x 112 cache of the five-block cut, more memory than many laptops have to spare. "
              f"Fine-tuning the whole network does not cache: it runs every photo through everything in every "
              f"epoch, freshly distorted, which is what a GPU is for.")
        return True
    hint = (" (float16 takes 2 bytes per value)" if abs(float(answer) - 2 * expected) <= 0.02 * 2 * expected
            else " Count 112 x 112 positions x 32 channels per image, 2 bytes each.")
    print(f"Not quite: {float(answer):,.0f} MB is not it.{hint}")
    return False


def check_fine_tuned(model, blocks: int = DEFAULT_FINE_TUNE_BLOCKS, flip_left_right: bool | None = None) -> bool:
    """Exercise: is ``model`` a :class:`FineTunedModel` of ``blocks`` blocks (trained with or without map flips)?"""
    if model is None:
        print("Set my_tuned to the result of finetune.fine_tune(...) and run this cell again.")
        return False
    if not isinstance(model, FineTunedModel):
        print(f"my_tuned should be what finetune.fine_tune returns, not a {type(model).__name__}.")
        return False
    if model.fine_tune_blocks != blocks:
        print(f"This model fine-tuned {model.fine_tune_blocks} blocks, not {blocks}: use the activations of "
              f"finetune.cached_activations(splits, {blocks}).")
        return False
    if flip_left_right is not None and model.settings.get("flip_left_right") != flip_left_right:
        print(f"This model was trained with flip_left_right={model.settings.get('flip_left_right')}; "
              f"pass flip_left_right={flip_left_right} to finetune.fine_tune.")
        return False
    print(f"Right: the top {blocks} block(s) fine-tuned, validation accuracy {model.validation_accuracy:.1%} "
          f"(frozen start {model.start['val_accuracy']:.1%}).")
    return True
