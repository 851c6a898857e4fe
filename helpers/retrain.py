"""Retrain the last layer of a pretrained network on your own image folders.

The library and the ``retrain`` command (``python -m helpers.retrain``) of the
course, after TensorFlow's ``retrain.py``: same flags, same defaults, same head
(one dense layer + softmax, plain SGD on batches drawn with replacement from the
cached bottlenecks), same printed lines. What is new: a tf.data pipeline and a
content-addressed cache for the bottlenecks, a compiled training step (4,000
steps take seconds), a fixed test folder with a patient-grouped validation
split, class weights, a seed, a SavedModel that takes image files, and a JSON
file of metrics with confidence intervals and medical two-class figures.

    retrain --image_dir ../shared/datasets/flower_photos --saved_model_dir /tmp/flowers_model

Notebooks call ``retrain(image_dir=..., ...)``, the same function the command runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import helpers  # noqa: F401  (TensorFlow switches first)
from helpers import data, evaluation
from helpers.unknown import DEFAULT_METHOD as DEFAULT_UNKNOWN_METHOD
from helpers.bottlenecks import BottleneckCache, Bottlenecks, bottlenecks_for_splits

__all__ = [
    "DEFAULT_SAVED_MODEL_DIR",
    "FinalLayer",
    "RetrainResult",
    "build_parser",
    "export_saved_model",
    "main",
    "retrain",
    "train_final_layer",
]

#: Where the command exports the model when --saved_model_dir is not given (retrain.py wrote to /tmp too).
DEFAULT_SAVED_MODEL_DIR = os.path.join(tempfile.gettempdir(), "retrain", "saved_model")
LABELS_FILE = "labels.txt"
UNKNOWN_RULE_FILE = "unknown_rule.json"
MODEL_INFO_FILE = "model_info.json"


# --------------------------------------------------------------------------- the head
@dataclass
class FinalLayer:
    """The retrained last layer: ``logits = x @ weights + bias``, softmax on top.

    ``history`` holds one entry per evaluation (every ``eval_step_interval``
    steps): step, train_accuracy, cross_entropy, validation_accuracy,
    validation_cross_entropy, validation_n.
    """

    weights: np.ndarray
    bias: np.ndarray
    history: dict = field(default_factory=dict)

    def logits(self, x) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) @ self.weights + self.bias

    def predict_proba(self, x) -> np.ndarray:
        from scipy.special import softmax

        return softmax(self.logits(x), axis=1)

    def predict(self, x) -> np.ndarray:
        return np.argmax(self.logits(x), axis=1)


def _head_metrics(tf, weights, bias, x, y, class_weights):
    """Accuracy, mean cross entropy and the (class-weighted) loss of the head on one batch."""
    logits = tf.matmul(x, weights) + bias
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    loss = tf.reduce_mean(tf.gather(class_weights, y) * cross_entropy)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), y), tf.float32))
    return accuracy, tf.reduce_mean(cross_entropy), loss


def train_final_layer(train_x, train_y, val_x, val_y, n_classes: int, how_many_training_steps: int = 4000,
                      learning_rate: float = 0.01, train_batch_size: int = 100, validation_batch_size: int = 100,
                      eval_step_interval: int = 10, class_weights=None, seed: int = 42, progress: bool = True,
                      on_eval=None, batch_source=None) -> FinalLayer:
    """Train retrain.py's final layer on bottlenecks and return it.

    One dense layer (weights drawn from a truncated normal with stddev 0.001,
    bias 0), softmax cross-entropy (weighted per class when ``class_weights``, a
    length-``n_classes`` sequence, is given), plain SGD. Each step draws
    ``train_batch_size`` rows *with replacement*. Every ``eval_step_interval``
    steps (and at the last) it measures accuracy and cross entropy on that
    training batch and accuracy on a random validation batch
    (``validation_batch_size`` drawn with replacement; -1, or a size at least that
    of the validation set, means all of it), stores them in ``history`` and
    calls ``on_eval(record)``. The step is a ``tf.function`` and every random
    draw comes from ``seed``, so a run is reproducible.

    ``batch_source`` (the distortion path) replaces sampling from ``train_x``: a
    callable ``(generator, batch_size) -> (features, labels)``.
    """
    import tensorflow as tf
    from tqdm.auto import tqdm

    if how_many_training_steps < 1 or eval_step_interval < 1 or train_batch_size < 1:
        raise ValueError("how_many_training_steps, eval_step_interval and train_batch_size must be at least 1.")
    tf.random.set_seed(seed)
    generator = tf.random.Generator.from_seed(seed)
    dim = int(np.shape(val_x)[1] if train_x is None else np.shape(train_x)[1])
    weights = tf.Variable(tf.random.stateless_truncated_normal([dim, n_classes], seed=[seed, 0], stddev=0.001),
                          name="final_weights")
    bias = tf.Variable(tf.zeros([n_classes]), name="final_biases")
    per_class = tf.constant(np.ones(n_classes) if class_weights is None else class_weights, tf.float32)
    val_x = tf.constant(np.asarray(val_x, np.float32).reshape(-1, dim))
    val_y = tf.constant(np.asarray(val_y, np.int32))
    if train_x is not None:
        train_x = tf.constant(np.asarray(train_x, np.float32))
        train_y = tf.constant(np.asarray(train_y, np.int32))
        if train_x.shape[0] == 0:
            raise ValueError("no training images: nothing to train on.")

    def sgd_step(x, y):
        with tf.GradientTape() as tape:
            _, _, loss = _head_metrics(tf, weights, bias, x, y, per_class)
        grad_w, grad_b = tape.gradient(loss, [weights, bias])
        weights.assign_sub(learning_rate * grad_w)
        bias.assign_sub(learning_rate * grad_b)

    def sample(x, y, size):
        index = generator.uniform([size], 0, tf.shape(x, out_type=tf.int64)[0], dtype=tf.int64)
        return tf.gather(x, index), tf.gather(y, index)

    n_val = int(val_x.shape[0])
    # A batch as large as the validation set is the whole set (retrain.py would repeat images to fill it).
    whole_validation = validation_batch_size < 0 or validation_batch_size >= n_val
    val_size = n_val if whole_validation else validation_batch_size

    def measure(x, y):
        """Accuracy and cross entropy on this training batch and on a random validation batch."""
        train_accuracy, cross_entropy, _ = _head_metrics(tf, weights, bias, x, y, per_class)
        if val_size == 0:
            nan = tf.constant(float("nan"))
            return train_accuracy, cross_entropy, nan, nan
        vx, vy = (val_x, val_y) if whole_validation else sample(val_x, val_y, val_size)
        val_accuracy, val_cross_entropy, _ = _head_metrics(tf, weights, bias, vx, vy, per_class)
        return train_accuracy, cross_entropy, val_accuracy, val_cross_entropy

    def sample_and_step():
        x, y = sample(train_x, train_y, train_batch_size)
        sgd_step(x, y)
        return x, y

    @tf.function
    def steps_then_measure(n):
        """``n`` SGD steps in one compiled loop, then ``measure`` on the last batch."""
        for _ in tf.range(n - 1):
            sample_and_step()
        return measure(*sample_and_step())

    @tf.function(reduce_retracing=True)
    def step_on(x, y):
        sgd_step(x, y)

    measure_on = tf.function(measure, reduce_retracing=True)

    def run_chunk(n):
        if batch_source is None:
            return steps_then_measure(tf.constant(n, tf.int32))
        for _ in range(n):  # the distortion path: the network runs in Python-driven steps
            x, y = batch_source(generator, train_batch_size)
            x, y = tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(y, tf.int32)
            step_on(x, y)
        return measure_on(x, y)

    history = {key: [] for key in ("step", "train_accuracy", "cross_entropy", "validation_accuracy",
                                   "validation_cross_entropy", "validation_n")}
    # Evaluate after steps 0, interval, 2*interval, ... and the last one, as retrain.py did.
    eval_steps = sorted({*range(0, how_many_training_steps, eval_step_interval), how_many_training_steps - 1})
    done = 0
    with tqdm(total=how_many_training_steps, desc="training", unit="step", disable=not progress,
              mininterval=0.5) as bar:
        for step in eval_steps:
            values = [float(v) for v in run_chunk(step + 1 - done)]
            bar.update(step + 1 - done)
            done = step + 1
            record = dict(zip(("train_accuracy", "cross_entropy", "validation_accuracy",
                               "validation_cross_entropy"), values), step=step, validation_n=val_size)
            for key in history:
                history[key].append(record[key])
            if on_eval is not None:
                on_eval(record)
    return FinalLayer(weights.numpy(), bias.numpy(), history)


# --------------------------------------------------------------------------- distortions
def _distorted_batches(paths, labels, backbone, flip_left_right, random_crop, random_scale, random_brightness):
    """``batch_source`` for the distortion path: distorted training images through the network, every step.

    retrain.py's distortions (:func:`helpers.augment.distort_images`): a random
    window of ``1 / ((1 + random_crop%) * uniform(1, 1 + random_scale%))`` of each
    side, resized to the network's input size, flipped left-right half of the
    time, its pixels multiplied by ``uniform(1 - random_brightness%, 1 + random_brightness%)``
    and clipped to [0, 1]. The images are decoded once (at the input size, with the
    backbone's ``central_crop``, kept as uint8 in memory); each step costs one
    network pass per image, which is why this path is slow.
    """
    import tensorflow as tf

    from helpers.augment import distort_images
    from helpers.bottlenecks import image_dataset

    size = backbone.input_size
    images, kept = [], []
    for batch, ok, index in image_dataset(paths, size, batch_size=64,
                                          central_crop=getattr(backbone, "central_crop", 1.0)):
        keep = ok.numpy()
        images.append(tf.image.convert_image_dtype(tf.boolean_mask(batch, keep), tf.uint8, saturate=True))
        kept.append(index.numpy()[keep])
    images = tf.concat(images, 0)
    labels = tf.constant(np.asarray(labels)[np.concatenate(kept)], tf.int32)

    @tf.function
    def distorted(generator, batch_size):
        index = generator.uniform([batch_size], 0, tf.shape(images, out_type=tf.int64)[0], dtype=tf.int64)
        batch = distort_images(tf.gather(images, index), size, flip_left_right, random_crop, random_scale,
                               random_brightness, rng=generator)
        return batch, tf.gather(labels, index)

    def batch_source(generator, batch_size):
        batch, y = distorted(generator, batch_size)
        return backbone.features(batch), y

    return batch_source


# --------------------------------------------------------------------------- export
def export_saved_model(backbone, final_layer: FinalLayer, labels, saved_model_dir, unknown_rule=None) -> Path:
    """Save backbone + final layer as one SavedModel that classifies image files.

    Signatures (both return ``probabilities`` ``[n, classes]``, ``logits`` and
    the top ``label``):

    - ``serving_default``: ``image_bytes``, a batch of encoded files (tf.string:
      JPEG, PNG, GIF, BMP), decoded with ``tf.io.decode_image``, cut to the
      backbone's ``central_crop`` (the central square, to whole pixels) and resized
      (bilinear, antialiased) to its input size. Unlike ``data.load_image`` it
      does not apply EXIF rotation.
    - ``classify_images``: ``images``, float32 ``[n, h, w, 3]`` in [0, 1]
      (resized when ``h, w`` differ from the input size).

    ``labels.txt`` (one class per line, in label order) is written beside it,
    and ``unknown_rule.json`` holds the rule for answering "unknown" (None until
    one is fitted), with ``model_info.json`` naming the backbone.
    """
    import tensorflow as tf

    saved_model_dir = Path(saved_model_dir)
    labels = [str(label) for label in labels]
    size = int(backbone.input_size)
    central_crop = float(getattr(backbone, "central_crop", 1.0))

    class Classifier(tf.Module):
        def __init__(self):
            super().__init__(name="retrained_classifier")
            self.backbone = backbone.layer
            self.final_weights = tf.Variable(final_layer.weights, trainable=False, name="final_weights")
            self.final_biases = tf.Variable(final_layer.bias, trainable=False, name="final_biases")
            self.labels = tf.Variable(labels, trainable=False, dtype=tf.string, name="labels")

        def _classify(self, images):
            features = self.backbone(images)
            logits = tf.matmul(features, self.final_weights) + self.final_biases
            label = tf.gather(self.labels, tf.argmax(logits, axis=1))
            return {"probabilities": tf.nn.softmax(logits), "logits": logits, "label": label,
                    "features": features}

        # Plain TensorFlow ops only, so autograph is not needed: without it the export no longer
        # re-reads this file's source, which failed in kernels that had an older copy imported.
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
        @tf.autograph.experimental.do_not_convert
        def classify_images(self, images):
            same = tf.reduce_all(tf.equal(tf.shape(images)[1:3], [size, size]))
            images = tf.cond(same, lambda: images, lambda: tf.image.resize(images, [size, size], antialias=True))
            return self._classify(tf.ensure_shape(images, [None, size, size, 3]))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        @tf.autograph.experimental.do_not_convert
        def classify_image_bytes(self, image_bytes):
            def decode(one):
                image = tf.io.decode_image(one, channels=3, expand_animations=False)
                image = tf.image.convert_image_dtype(image, tf.float32)
                if central_crop < 1.0:  # data.crop_box for a square output, rounded to whole pixels
                    height, width = tf.unstack(tf.shape(image)[:2])
                    side = tf.cast(tf.round(tf.cast(tf.minimum(height, width), tf.float32) * central_crop), tf.int32)
                    side = tf.maximum(side, 1)
                    image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
                return tf.image.resize(image, [size, size], antialias=True)

            images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
            return self._classify(images)

    module = Classifier()
    saved_model_dir.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(saved_model_dir), signatures={
        "serving_default": module.classify_image_bytes,
        "classify_images": module.classify_images,
    })
    (saved_model_dir / LABELS_FILE).write_text("\n".join(labels) + "\n")
    if unknown_rule is not None:  # a fitted helpers.unknown.UnknownDetector: unknown_rule.json + .npz
        unknown_rule.save(saved_model_dir)
    else:
        (saved_model_dir / UNKNOWN_RULE_FILE).write_text(json.dumps({"unknown_rule": None}, indent=2) + "\n")
    info = {"backbone": getattr(backbone, "name", None), "backbone_id": getattr(backbone, "id", None),
            "input_size": size, "central_crop": central_crop, "labels": labels}
    (saved_model_dir / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return saved_model_dir


# --------------------------------------------------------------------------- the whole job
@dataclass
class RetrainResult:
    """Everything a run produced: the splits, bottlenecks, trained layer, metrics, timings and file paths."""

    splits: data.ImageSplits
    bottlenecks: dict[str, Bottlenecks]
    final_layer: FinalLayer
    metrics: dict
    timings: dict
    paths: dict
    backbone: object = None

    @property
    def classes(self) -> list[str]:
        return self.splits.classes


def _echo(verbose: bool, text: str) -> None:
    if verbose:
        from tqdm.auto import tqdm

        tqdm.write(text)


def _resolve_image_dir(image_dir) -> Path:
    """A folder, or a registered dataset name (``flowers``) found by ``data.find_dataset``."""
    if image_dir is None or str(image_dir) == "":
        raise ValueError("Must set --image_dir (a folder with one subfolder of images per class).")
    return data.find_dataset(image_dir, download=False)


def _n_rows(b: Bottlenecks) -> int:
    return int(b.features.shape[0])


def _split_metrics(final_layer: FinalLayer, b: Bottlenecks) -> dict:
    predicted = final_layer.predict(b.features) if _n_rows(b) else np.zeros(0, int)
    accuracy, low, high, n = evaluation.accuracy_with_ci(b.labels, predicted)
    return {"accuracy": accuracy, "ci95": [low, high], "n": n}


def _check_binary_options(classes, positive_class, threshold_rule) -> None:
    """Fail before the long part of the run when --positive_class or --threshold_rule is wrong."""
    if positive_class is not None and positive_class not in classes:
        raise ValueError(f"--positive_class {positive_class!r} is not one of the classes {classes}.")
    try:
        evaluation.choose_threshold([0, 1], [0.2, 0.8], threshold_rule)
    except ValueError as error:
        raise ValueError(f"--threshold_rule: {error}") from None


def _binary_report(final_layer, bottlenecks, classes, positive_class, threshold_rule) -> dict:
    """Sensitivity, specificity and AUC for a named positive class; threshold chosen on validation."""
    positive_class = positive_class or classes[1]
    positive = classes.index(positive_class)
    scores = {split: final_layer.predict_proba(b.features)[:, positive] if _n_rows(b) else np.zeros(0)
              for split, b in bottlenecks.items()}
    truth = {split: (b.labels == positive).astype(int) for split, b in bottlenecks.items()}
    rule = threshold_rule
    try:
        threshold = evaluation.choose_threshold(truth["validation"], scores["validation"], rule)
        note = f"chosen on validation (N={len(truth['validation'])}) by {rule}"
    except ValueError as error:
        threshold, note = 0.5, f"0.5 kept: {error}"
    report = {
        "positive_class": positive_class,
        "negative_class": classes[1 - positive],
        "threshold_rule": rule,
        "threshold": float(threshold),
        "threshold_note": note,
        "validation_at_threshold": evaluation.binary_metrics(truth["validation"], scores["validation"], threshold),
        "test_at_0.5": evaluation.binary_metrics(truth["testing"], scores["testing"], 0.5),
        "test_at_threshold": evaluation.binary_metrics(truth["testing"], scores["testing"], threshold),
    }
    report["test_auc"] = report["test_at_0.5"]["auc"]
    return report


def _metrics(backbone, splits, bottlenecks, final_layer, positive_class, threshold_rule) -> dict:
    classes = splits.classes
    test = bottlenecks["testing"]
    predicted = final_layer.predict(test.features) if _n_rows(test) else np.zeros(0, int)
    metrics = {
        "backbone": {"name": getattr(backbone, "name", None), "id": getattr(backbone, "id", None),
                     "input_size": getattr(backbone, "input_size", None),
                     "feature_dim": int(final_layer.weights.shape[0])},
        "classes": classes,
        "splits": {split: _split_metrics(final_layer, b) for split, b in bottlenecks.items()},
        "per_class": evaluation.per_class_report(test.labels, predicted, classes),
        "confusion_matrix": evaluation.confusion(test.labels, predicted, len(classes)).tolist(),
        "skipped": [[str(p), reason] for b in bottlenecks.values() for p, reason in b.skipped],
    }
    if len(classes) == 2:
        metrics["binary"] = _binary_report(final_layer, bottlenecks, classes, positive_class, threshold_rule)
    return metrics


def _print_binary(report: dict, verbose: bool) -> None:
    if not report["test_at_0.5"]["n"]:
        return
    for key, title in (("test_at_0.5", "threshold 0.5"), ("test_at_threshold", "threshold %.3f" % report["threshold"])):
        m = report[key]
        _echo(verbose, f"Test at {title} (positive = {report['positive_class']}): "
                       f"sensitivity = {m['sensitivity']:.1%}, specificity = {m['specificity']:.1%}, "
                       f"accuracy = {m['accuracy']:.1%}, AUC = {m['auc']:.3f} (N={m['n']})")
    _echo(verbose, f"  (threshold {report['threshold_note']})")


def _summary_writers(summaries_dir):
    if not summaries_dir:
        return None
    import tensorflow as tf

    return {name: tf.summary.create_file_writer(str(Path(summaries_dir) / name)) for name in ("train", "validation")}


def _scalar(tf, tag: str, value: float, step: int) -> None:
    """``tf.summary.scalar`` without needing the tensorboard package installed (same event format)."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR)
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=metadata.SerializeToString())


def _write_summaries(writers, record) -> None:
    """TensorBoard scalars at each evaluation: accuracy and cross_entropy under train/ and validation/."""
    import tensorflow as tf

    with writers["train"].as_default():
        _scalar(tf, "accuracy", record["train_accuracy"], record["step"])
        _scalar(tf, "cross_entropy", record["cross_entropy"], record["step"])
    if record["validation_n"]:
        with writers["validation"].as_default():
            _scalar(tf, "accuracy", record["validation_accuracy"], record["step"])
            _scalar(tf, "cross_entropy", record["validation_cross_entropy"], record["step"])


def retrain(image_dir=None, tfhub_module: str = "efficientnet_lite0", bottleneck_dir=None,
            how_many_training_steps: int = 4000, learning_rate: float = 0.01, train_batch_size: int = 100,
            validation_batch_size: int = 100, testing_percentage: float = 10, validation_percentage: float = 10,
            eval_step_interval: int = 10, print_misclassified_test_images: bool = False, summaries_dir=None,
            saved_model_dir=None, output_labels=None, flip_left_right: bool = False, random_crop: int = 0,
            random_scale: int = 0, random_brightness: int = 0, test_image_dir=None, group_by: str = "basename",
            class_weights: str = "none", seed: int = 42, metrics_json=None, max_images_per_class=None,
            positive_class=None, threshold_rule="youden", unknown_method: str = DEFAULT_UNKNOWN_METHOD,
            unknown_accept_fraction: float = 0.95, backbone=None, verbose: bool = True,
            fine_tune_blocks: int = 0, tflite_output_file=None, quantize: str | None = None,
            central_crop: float | None = None) -> RetrainResult:
    """Retrain the last layer on ``image_dir`` and evaluate it: the ``retrain`` command as a function.

    Arguments are the command's flags (see ``python -m helpers.retrain --help``).
    ``saved_model_dir`` / ``output_labels`` / ``metrics_json`` / ``summaries_dir``
    are written only when given (the command gives a default SavedModel folder).
    ``backbone`` may be an already loaded ``Backbone`` (saves reloading it in a
    notebook). ``verbose`` prints retrain.py's lines and progress bars.
    ``central_crop`` (None: the backbone's own, 0.875 for EfficientNet-Lite0) is the
    share of each image file the network sees; 1 shows the whole image squashed, as
    retrain.py did (right for images that are already square, like the X-rays here).

    ``result.metrics`` (also written to ``metrics_json``) holds: ``backbone``;
    ``classes``; ``splits`` -> ``{training, validation, testing}`` each with
    ``accuracy``, Wilson ``ci95`` and ``n``; ``per_class`` (precision, recall,
    f1, support) and ``confusion_matrix`` (rows = true class) on the test split;
    ``skipped`` files; for two classes ``binary``: the ``positive_class``, the
    ``threshold`` chosen on validation by ``threshold_rule``, and
    ``test_at_0.5`` / ``test_at_threshold`` (sensitivity, specificity, PPV, NPV,
    accuracy, AUC); ``timings`` (extraction seconds and images/s, training
    seconds, total); ``run`` (the settings).

    ``fine_tune_blocks`` > 0 then fine-tunes the top blocks of the (bundled)
    backbone, starting from the trained last layer (:func:`helpers.finetune.fine_tune_splits`);
    the distortion flags then apply to the cached activations, not to the last layer.
    ``tflite_output_file`` also writes a TensorFlow Lite file (``quantize="int8"``:
    full-integer, calibrated on 100 training images; :func:`helpers.tflite.export_classifier`).
    """
    from helpers import backbones, settings

    from helpers import finetune, tflite

    started = time.perf_counter()
    settings.set_seeds(seed)
    fine_tune_blocks = finetune.check_fine_tune_options(fine_tune_blocks, getattr(backbone, "name", tfhub_module))
    quantize = tflite.check_output_options(tflite_output_file, quantize)
    image_dir = _resolve_image_dir(image_dir)
    test_dir = data.find_dataset(test_image_dir, download=False) if test_image_dir else None
    if group_by not in ("basename", "patient"):
        raise ValueError(f"--group_by must be 'basename' or 'patient', not {group_by!r}.")
    group_key = data.patient_id if group_by == "patient" else data.split_key
    splits = data.make_splits(image_dir, validation_percentage, testing_percentage, test_image_dir=test_dir,
                              group_key=group_key)
    if max_images_per_class:
        splits = splits.subset(int(max_images_per_class), seed)
    classes = splits.classes
    if len(classes) < 2:
        raise ValueError(f"Only one class folder of images found in {image_dir} - "
                         "multiple classes are needed for classification.")
    if len(classes) == 2:
        _check_binary_options(classes, positive_class, threshold_rule)
    sizes = {split: len(paths) for split, paths in splits.files.items()}
    _echo(verbose, f"{len(classes)} classes ({', '.join(classes)}) in {image_dir}: "
                   + ", ".join(f"{split} {n}" for split, n in sizes.items()))

    backbone = backbone or backbones.load_backbone(tfhub_module, central_crop=central_crop)
    _echo(verbose, f"Backbone {backbone.name} ({backbone.input_size} px, central crop "
                   f"{getattr(backbone, 'central_crop', 1.0):g}, id {backbone.id})")
    cache = BottleneckCache(backbone.id, root=bottleneck_dir)
    extraction_start = time.perf_counter()
    bottlenecks = bottlenecks_for_splits(splits, backbone, progress=verbose, cache=cache)
    extraction_seconds = time.perf_counter() - extraction_start

    train, val, test = bottlenecks["training"], bottlenecks["validation"], bottlenecks["testing"]
    weights = None
    if class_weights == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(train.labels)
        weights = np.ones(len(classes))
        weights[present] = compute_class_weight("balanced", classes=present, y=train.labels)
        _echo(verbose, "Class weights: " + ", ".join(f"{c} {w:.2f}" for c, w in zip(classes, weights)))
    elif class_weights not in (None, "none"):
        raise ValueError(f"--class_weights must be 'none' or 'balanced', not {class_weights!r}.")

    distort = (flip_left_right or random_crop or random_scale or random_brightness) and not fine_tune_blocks
    batch_source = None
    if distort:
        _echo(verbose, "Distortions on: every training step runs its batch through the network (slow).")
        batch_source = _distorted_batches(train.paths, train.labels, backbone, flip_left_right, random_crop,
                                          random_scale, random_brightness)

    writers = _summary_writers(summaries_dir)

    def on_eval(record):
        step = record["step"]
        _echo(verbose, f"Step {step}: Train accuracy = {record['train_accuracy'] * 100:.1f}%")
        _echo(verbose, f"Step {step}: Cross entropy = {record['cross_entropy']:f}")
        if record["validation_n"]:
            _echo(verbose, f"Step {step}: Validation accuracy = {record['validation_accuracy'] * 100:.1f}% "
                           f"(N={record['validation_n']})")
        if writers:
            _write_summaries(writers, record)

    training_start = time.perf_counter()
    final_layer = train_final_layer(
        None if distort else train.features, train.labels, val.features, val.labels, len(classes),
        how_many_training_steps, learning_rate, train_batch_size, validation_batch_size, eval_step_interval,
        class_weights=weights, seed=seed, progress=verbose, on_eval=on_eval, batch_source=batch_source)
    if fine_tune_blocks:
        _echo(verbose, f"Fine-tuning the top {fine_tune_blocks} blocks of {backbone.name} from this last layer "
                       "(BatchNorm frozen, early stopping on validation)")
        backbone, final_layer, bottlenecks, tuned = finetune.fine_tune_splits(
            splits, fine_tune_blocks, head=final_layer, class_weights=weights, flip_left_right=flip_left_right,
            random_crop=random_crop, random_scale=random_scale, random_brightness=random_brightness, seed=seed,
            progress=verbose, model_name=getattr(backbone, "name", tfhub_module),
            central_crop=getattr(backbone, "central_crop", 1.0))
        train, val, test = bottlenecks["training"], bottlenecks["validation"], bottlenecks["testing"]
        _echo(verbose, tuned.summary())
    training_seconds = time.perf_counter() - training_start
    if writers:
        for writer in writers.values():
            writer.flush()

    metrics = _metrics(backbone, splits, bottlenecks, final_layer, positive_class, threshold_rule)
    test_metrics = metrics["splits"]["testing"]
    if test_metrics["n"]:
        _echo(verbose, f"Final test accuracy = {test_metrics['accuracy'] * 100:.1f}% (N={test_metrics['n']}), "
                       f"95% CI {test_metrics['ci95'][0] * 100:.1f}-{test_metrics['ci95'][1] * 100:.1f}%")
    else:
        _echo(verbose, "Final test accuracy: no test images (N=0)")
    if "binary" in metrics:
        _print_binary(metrics["binary"], verbose)
    if print_misclassified_test_images and _n_rows(test):
        _echo(verbose, "=== MISCLASSIFIED TEST IMAGES ===")
        predicted = final_layer.predict(test.features)
        for path, truth, guess in zip(test.paths, test.labels, predicted):
            if truth != guess:
                _echo(verbose, f"{path!s:>70}  {classes[guess]} (true: {classes[truth]})")

    unknown_rule = _fit_unknown_rule(unknown_method, unknown_accept_fraction, final_layer, bottlenecks, verbose)
    if unknown_rule is not None:
        metrics["unknown"] = _unknown_report(unknown_rule, final_layer, bottlenecks)
    paths = {}
    if saved_model_dir:
        paths["saved_model_dir"] = str(export_saved_model(backbone, final_layer, classes, saved_model_dir,
                                                          unknown_rule=unknown_rule))
        _echo(verbose, f"Saved the model to {saved_model_dir} (labels in {Path(saved_model_dir) / LABELS_FILE})")
    if tflite_output_file:
        paths["tflite_output_file"] = str(tflite.export_classifier(
            backbone, final_layer, classes, tflite_output_file, quantize, representative_paths=train.paths,
            unknown_rule=unknown_rule, seed=seed))
        _echo(verbose, f"Saved the TensorFlow Lite model ({quantize or 'float'}) to {tflite_output_file} "
                       f"({Path(tflite_output_file).stat().st_size / 1e6:.1f} MB; labels beside it)")
    if output_labels:
        Path(output_labels).parent.mkdir(parents=True, exist_ok=True)
        Path(output_labels).write_text("\n".join(classes) + "\n")
        paths["output_labels"] = str(output_labels)
    if summaries_dir:
        paths["summaries_dir"] = str(summaries_dir)

    computed = sum(b.computed for b in bottlenecks.values())
    total_images = sum(len(b) + len(b.skipped) for b in bottlenecks.values())
    timings = {
        "extraction_seconds": extraction_seconds,
        "images": total_images,
        "images_computed": computed,
        "images_from_cache": sum(b.from_cache for b in bottlenecks.values()),
        "images_per_second": total_images / extraction_seconds if extraction_seconds > 0 else None,
        "computed_images_per_second": computed / extraction_seconds if computed and extraction_seconds > 0 else None,
        "training_seconds": training_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    metrics["timings"] = timings
    metrics["run"] = {"image_dir": str(image_dir), "test_image_dir": str(test_dir) if test_dir else None,
                      "group_by": group_by, "class_weights": class_weights, "seed": seed,
                      "how_many_training_steps": how_many_training_steps, "learning_rate": learning_rate,
                      "train_batch_size": train_batch_size, "max_images_per_class": max_images_per_class,
                      "central_crop": getattr(backbone, "central_crop", 1.0),
                      "distortions": bool(distort), "split_sizes": sizes, "fine_tune_blocks": fine_tune_blocks,
                      "tflite_output_file": str(tflite_output_file) if tflite_output_file else None,
                      "quantize": quantize}
    if metrics_json:
        Path(metrics_json).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_json).write_text(json.dumps(_jsonable(metrics), indent=2) + "\n")
        paths["metrics_json"] = str(metrics_json)
    return RetrainResult(splits, bottlenecks, final_layer, metrics, timings, paths, backbone)


def _fit_unknown_rule(method, accept_fraction, final_layer, bottlenecks, verbose):
    """The rule that lets the exported model answer "unknown" (helpers.unknown), fitted on validation."""
    from helpers import unknown

    if method in (None, "", "none"):
        return None
    train, val = bottlenecks["training"], bottlenecks["validation"]
    if not _n_rows(val):
        _echo(verbose, "No validation images: the model is exported without an unknown rule.")
        return None
    rule = unknown.UnknownDetector(method, accept_fraction).fit(
        train.features, train.labels, val.features, final_layer.logits(val.features))
    _echo(verbose, f"Unknown rule {rule.method}: threshold {rule.threshold_:.3f} chosen to accept at least "
                   f"{rule.accept_fraction:.0%} of known images (validation N={rule.n_validation_})")
    return rule


def _unknown_report(rule, final_layer, bottlenecks) -> dict:
    """The rule and the share of known images it accepts in each split."""
    accepted = {split: float(np.mean(rule.is_known(b.features, final_layer.logits(b.features))))
                for split, b in bottlenecks.items() if _n_rows(b)}
    return {"method": rule.method, "accept_fraction": rule.accept_fraction, "confidence": rule.confidence,
            "threshold": rule.threshold_, "known_accepted": accepted}


def _jsonable(value):
    """NaN -> None (JSON has no NaN), numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# --------------------------------------------------------------------------- the command
def build_parser() -> argparse.ArgumentParser:
    """retrain.py's flags with its defaults, plus the course's additions."""
    p = argparse.ArgumentParser(
        prog="retrain", description="Retrain the last layer of a pretrained network on folders of images "
        "(one subfolder per class), as TensorFlow's retrain.py did.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = p.add_argument
    add("--image_dir", required=True, help="Path to folders of labeled images (or a dataset name: flowers).")
    add("--tfhub_module", default="efficientnet_lite0",
        help="Backbone: a bundled name (efficientnet_lite0/1/2), a known TF Hub name, or a TF Hub handle.")
    add("--central_crop", type=float, default=None,
        help="Share of each image the network sees: 1 = the whole image squashed to a square (retrain.py); "
        "below 1 = the centre, as ImageNet networks are evaluated. Default: the backbone's own "
        "(0.875 for efficientnet_lite0, 1 for TF Hub modules).")
    add("--bottleneck_dir", default=None, help="Folder for the cached bottleneck vectors; None = the course cache.")
    add("--how_many_training_steps", type=int, default=4000, help="How many training steps to run before ending.")
    add("--learning_rate", type=float, default=0.01, help="How large a learning rate to use when training.")
    add("--train_batch_size", type=int, default=100, help="How many images to train on at a time.")
    add("--validation_batch_size", type=int, default=100,
        help="How many validation images per evaluation; -1 uses the whole validation set.")
    add("--testing_percentage", type=float, default=10, help="What percentage of images to use as a test set.")
    add("--validation_percentage", type=float, default=10,
        help="What percentage of images to use as a validation set.")
    add("--eval_step_interval", type=int, default=10, help="How often to evaluate the training results.")
    add("--print_misclassified_test_images", action="store_true",
        help="Print a list of all misclassified test images.")
    add("--summaries_dir", default=None, help="Where to write TensorBoard scalars; None = not written.")
    add("--saved_model_dir", default=DEFAULT_SAVED_MODEL_DIR, help="Where to export the SavedModel; '' = do not export.")
    add("--output_labels", default=None, help="Also write the labels file here (labels.txt is always "
        "written beside the SavedModel).")
    distort = p.add_argument_group(
        "distortions", "Random changes to training images, as in retrain.py. Any of them bypasses the bottleneck "
        "cache: each training step runs train_batch_size distorted images through the network (one network pass "
        "per distorted image: ~1 s per 100 images on a laptop CPU, so 4000 steps take about an hour).")
    distort.add_argument("--flip_left_right", action="store_true",
                         help="Randomly flip half of the training images horizontally.")
    distort.add_argument("--random_crop", type=int, default=0,
                         help="A percentage determining how much of a margin to randomly crop off.")
    distort.add_argument("--random_scale", type=int, default=0,
                         help="A percentage determining how much to randomly scale up the images by.")
    distort.add_argument("--random_brightness", type=int, default=0,
                         help="A percentage determining how much to randomly multiply the pixels up or down by.")
    extra = p.add_argument_group("beyond retrain.py")
    extra.add_argument("--test_image_dir", default=None,
                       help="Evaluate on this fixed folder (same class folders); validation is then carved out "
                       "of --image_dir.")
    extra.add_argument("--group_by", choices=["basename", "patient"], default="basename",
                       help="What must stay in one split: the file's base name, or the chest X-ray patient id.")
    extra.add_argument("--class_weights", choices=["none", "balanced"], default="none",
                       help="Weight the loss so that every class counts equally (for unbalanced data).")
    extra.add_argument("--seed", type=int, default=42, help="Seed for every random choice (reproducible runs).")
    extra.add_argument("--metrics_json", default=None,
                       help="Write accuracies with 95%% intervals, per-class metrics, confusion matrix, "
                       "two-class metrics and timings to this JSON file.")
    extra.add_argument("--positive_class", default=None,
                       help="Two classes: the positive class (default: the second in sorted order, e.g. PNEUMONIA).")
    extra.add_argument("--threshold_rule", default="youden",
                       help="Two classes: how the threshold is chosen on validation: 'youden' or "
                       "'sensitivity:0.95'.")
    extra.add_argument("--unknown_method", default=DEFAULT_UNKNOWN_METHOD,
                       help="Rule that lets the model answer 'unknown' (helpers.unknown): msp, energy, "
                       "mahalanobis, knn, several joined by '+', or 'none'.")
    extra.add_argument("--unknown_accept_fraction", type=float, default=0.95,
                       help="Fraction of known images the unknown rule must accept (threshold set on validation).")
    extra.add_argument("--max_images_per_class", type=int, default=None,
                       help="Use at most this many images per class and split (quick runs).")
    ship = p.add_argument_group("fine-tuning and TensorFlow Lite")
    ship.add_argument("--fine_tune_blocks", type=int, default=0,
                      help="After the last layer, fine-tune this many of the backbone's top blocks (bundled "
                      "EfficientNet-Lite only) on cached activations; 0 retrains the last layer only.")
    ship.add_argument("--tflite_output_file", default=None,
                      help="Also write the model as a TensorFlow Lite file (.tflite), labels beside it.")
    ship.add_argument("--quantize", choices=["none", "int8"], default="none",
                      help="int8: quantise the TensorFlow Lite model's weights and activations to 8 bits "
                      "(calibrated on 100 training images; float input and output).")
    return p


def main(argv=None) -> int:
    """Entry point of ``retrain`` / ``python -m helpers.retrain``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        retrain(**vars(args))
    except (data.DatasetError, ValueError, FileNotFoundError) as error:
        print(f"retrain: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("retrain: interrupted (the bottlenecks computed so far are cached; run again to resume).",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
