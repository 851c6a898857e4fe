"""A model you can ship: convert the retrained classifier to TensorFlow Lite, float or int8.

TensorFlow Lite is the format phones, Raspberry Pis and microcontrollers run: one
flat file with the graph and the weights, run by a small interpreter. Two versions:

- ``float``: the weights as float32, the same numbers as the SavedModel.
- ``int8``: full-integer quantisation. Weights *and* activations become 8-bit
  integers with a scale per tensor (per channel for convolution weights): about a
  quarter of the size and faster integer arithmetic. To choose the activation
  scales the converter runs a *representative data set* (about 100 training images)
  through the model and records each tensor's range. The model's input and output
  stay float32 (a quantise step at the input, a dequantise step at the output), so
  you feed it the same [0, 1] images and get probabilities back.
  EfficientNet-Lite was designed for this (ReLU6 instead of swish, no
  squeeze-and-excitation), so it loses little accuracy.

A model exported from ``retrain`` outputs the ``logits`` and the 1280-d
``features`` (the probabilities are the softmax of the logits), so that
``label_image`` can apply the same "unknown" rule as with the SavedModel. Each
``.tflite`` file gets small files beside it: ``<name>.labels.txt`` (one class per
line, in output order, as TensorFlow Lite's examples expect), ``<name>.json``
(labels, input size, quantisation) and, when the model has one, the unknown rule
(``<name>.unknown_rule.json`` / ``.npz``, :mod:`helpers.unknown`).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

import helpers  # noqa: F401  (TensorFlow environment switches before TensorFlow)

__all__ = [
    "QUANTIZE_CHOICES", "convert", "classifier_model", "export_classifier", "check_output_options",
    "representative_images", "load_images", "TFLiteModel", "load_tflite", "write_sidecar", "read_sidecar",
    "load_for_label_image", "images_per_second", "export_saved_model", "SavedModelRunner", "compare_formats",
    "format_comparison", "check_int8_file",
]

#: ``None`` keeps float32 weights; ``"int8"`` quantises weights and activations to 8 bits.
QUANTIZE_CHOICES = (None, "int8")


def _keras_input_size(keras_model) -> int:
    shape = keras_model.input_shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ValueError(f"expected a model taking square RGB images [batch, size, size, 3], got input {shape}")
    return int(shape[1])


def convert(keras_model, output_file, quantize: str | None = None, representative=None) -> Path:
    """Convert a Keras model taking images in [0, 1] to a ``.tflite`` file; return its path.

    The model's outputs are kept: probabilities, or ``[logits, features]`` as
    :func:`classifier_model` builds it.

    ``quantize=None`` writes float32 weights. ``quantize="int8"`` writes a
    full-integer model (int8 weights and activations, float32 input and output)
    and needs ``representative``: float32 images ``[n, size, size, 3]`` in [0, 1]
    (about 100 training images; see :func:`representative_images`) from which the
    converter measures every activation's range. The file is written atomically.
    """
    import tensorflow as tf

    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    size = _keras_input_size(keras_model)
    spec = tf.TensorSpec([None, size, size, 3], tf.float32, name="images")
    function = tf.function(lambda images: keras_model(images, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], keras_model)
    if quantize == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 quantisation needs representative images (about 100 training images): "
                             "pass representative=representative_images(paths, size)")
        representative = np.asarray(representative, np.float32)
        if representative.shape[1:] != (size, size, 3):
            raise ValueError(f"representative images must be [n, {size}, {size}, 3], got {representative.shape}")

        def samples():
            for image in representative:
                yield [image[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    from helpers.settings import quiet_native_logs

    with quiet_native_logs():  # the converter's "fully_quantize: 0, inference_type: 6, ..." debug line
        flatbuffer = converter.convert()
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    temp = output_file.with_name(f".{output_file.name}.tmp")
    temp.write_bytes(flatbuffer)
    os.replace(temp, output_file)
    return output_file


def load_images(paths, size: int, batch_size: int = 32, central_crop: float = 1.0) -> tuple[np.ndarray, list[int], dict]:
    """Decode image files to float32 ``[n, size, size, 3]`` in [0, 1], as the bottlenecks do
    (``central_crop``: the backbone's, see ``helpers.data.load_image``).

    Returns ``(images, kept, errors)``: ``kept`` are the positions in ``paths`` of the
    images that could be decoded, ``errors`` maps the others' positions to a reason.
    """
    from helpers.bottlenecks import image_dataset

    errors: dict = {}
    images, kept = [], []
    for batch, ok, index in image_dataset(list(paths), size, batch_size, errors, central_crop):
        ok = ok.numpy().astype(bool)
        images.append(batch.numpy()[ok])
        kept += [int(i) for i in index.numpy()[ok]]
    array = np.concatenate(images) if images else np.zeros((0, size, size, 3), np.float32)
    return array, kept, errors


def representative_images(paths, size: int, n: int = 100, seed: int = 42, central_crop: float = 1.0) -> np.ndarray:
    """``n`` training images chosen at random (with ``seed``), decoded for int8 calibration."""
    paths = list(paths)
    if not paths:
        raise ValueError("no images to choose representative images from")
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.choice(len(paths), min(n, len(paths)), replace=False))]
    return load_images(chosen, size, central_crop=central_crop)[0]


def _interpreter_class():
    """TensorFlow Lite's interpreter: LiteRT's when installed, else TensorFlow's built-in one."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import warnings

        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Interpreter = tf.lite.Interpreter
    return Interpreter


class TFLiteModel:
    """A ``.tflite`` image classifier run by the TensorFlow Lite interpreter.

    ``predict_proba(images)`` takes float32 images ``[n, size, size, 3]`` in [0, 1]
    and returns ``[n, classes]``; it runs batches of ``batch_size`` (the last one
    padded), so the interpreter's tensors are allocated once.
    """

    def __init__(self, path, batch_size: int = 16, num_threads: int | None = None):
        import warnings

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no TensorFlow Lite model at {self.path}")
        self.batch_size = int(batch_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.interpreter = _interpreter_class()(model_path=str(self.path), num_threads=num_threads)
            except ValueError as error:
                raise ValueError(f"{self.path} is not a valid TensorFlow Lite model ({error})") from None
        self._input = self.interpreter.get_input_details()[0]
        outputs = sorted(self.interpreter.get_output_details(), key=lambda d: int(d["shape_signature"][-1]))
        if len(outputs) not in (1, 2) or (len(outputs) == 2 and outputs[0]["shape_signature"][-1]
                                          == outputs[1]["shape_signature"][-1]):
            raise ValueError(f"{self.path} should output probabilities, or logits and features "
                             f"(got {len(outputs)} outputs)")
        self._output = outputs[0]  # probabilities, or the logits when there are two outputs
        self._features = outputs[1] if len(outputs) == 2 else None
        shape = self._input["shape_signature"]
        if len(shape) != 4 or shape[3] != 3:
            raise ValueError(f"{self.path} does not take RGB images (input shape {list(shape)})")
        self.input_size = int(shape[1])
        self.interpreter.resize_tensor_input(self._input["index"], [self.batch_size, self.input_size,
                                                                    self.input_size, 3])
        self.interpreter.allocate_tensors()
        self.n_classes = int(self._output["shape_signature"][-1])

    def __repr__(self) -> str:
        return f"TFLiteModel('{self.path.name}', {self.size_bytes / 1e6:.1f} MB, input {self.input_size} px)"

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    @property
    def quantized(self) -> bool:
        """True when the model computes in integers (its tensors include int8 ones)."""
        return any(d["dtype"] == np.int8 for d in self.interpreter.get_tensor_details())

    @property
    def outputs_logits(self) -> bool:
        """True when the model outputs logits and features (a ``retrain`` export), False for probabilities."""
        return self._features is not None

    def run(self, images) -> dict:
        """``{"probabilities", "logits", "features"}`` for float32 images ``[n, size, size, 3]`` in [0, 1].

        ``logits`` and ``features`` are there when the model outputs them.
        """
        from scipy.special import softmax

        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"expected images [n, {self.input_size}, {self.input_size}, 3], got {images.shape}")
        wanted = [self._output] + ([self._features] if self._features is not None else [])
        out = [[] for _ in wanted]
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, *batch.shape[1:]), np.float32)
            padded[:len(batch)] = batch
            self.interpreter.set_tensor(self._input["index"], padded)
            self.interpreter.invoke()
            for values, detail in zip(out, wanted):
                values.append(self.interpreter.get_tensor(detail["index"])[:len(batch)].astype(np.float32))
        arrays = [np.concatenate(v) if v else np.zeros((0, int(d["shape_signature"][-1])), np.float32)
                  for v, d in zip(out, wanted)]
        if self._features is None:
            return {"probabilities": arrays[0]}
        return {"probabilities": softmax(arrays[0], axis=1).astype(np.float32), "logits": arrays[0],
                "features": arrays[1]}

    def predict_proba(self, images) -> np.ndarray:
        return self.run(images)["probabilities"]

    def predict(self, images) -> np.ndarray:
        return np.argmax(self.predict_proba(images), axis=1)


def load_tflite(path, batch_size: int = 16, num_threads: int | None = None) -> TFLiteModel:
    """Open a ``.tflite`` classifier (see :class:`TFLiteModel`)."""
    return TFLiteModel(path, batch_size, num_threads)


# --------------------------------------------------------------------------- labels beside the file
def _sidecar_paths(tflite_file) -> tuple[Path, Path]:
    path = Path(tflite_file)
    return path.with_suffix(".labels.txt"), path.with_suffix(".json")


def _rule_paths(tflite_file) -> tuple[Path, Path]:
    path = Path(tflite_file)
    return path.with_suffix(".unknown_rule.json"), path.with_suffix(".unknown_rule.npz")


def write_sidecar(tflite_file, labels, input_size: int, quantize: str | None = None, unknown_rule=None,
                  extra: dict | None = None) -> Path:
    """Write ``<name>.labels.txt``, ``<name>.json`` and the unknown rule beside a ``.tflite`` file.

    ``unknown_rule`` is a fitted ``helpers.unknown.UnknownDetector`` (or None); it is
    stored as ``<name>.unknown_rule.json`` / ``.npz``. Returns the ``.json`` path.
    """
    labels_file, info_file = _sidecar_paths(tflite_file)
    labels = [str(label) for label in labels]
    labels_file.write_text("\n".join(labels) + "\n")
    rule_json, rule_npz = _rule_paths(tflite_file)
    rule_json.unlink(missing_ok=True)
    rule_npz.unlink(missing_ok=True)
    if unknown_rule is not None:
        config, arrays = unknown_rule.to_dict()
        rule_json.write_text(json.dumps(config, indent=2, sort_keys=True))
        np.savez(rule_npz, **arrays)
    info = {"labels": labels, "input_size": int(input_size), "quantize": quantize or "none",
            "input": "float32 RGB [batch, size, size, 3] in [0, 1]",
            "unknown_rule": None if unknown_rule is None else unknown_rule.method, **(extra or {})}
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    return info_file


def read_sidecar(tflite_file) -> dict:
    """The labels, settings and unknown rule stored beside a ``.tflite`` file (``labels.txt`` alone is enough).

    ``info["unknown_rule"]`` is the ``helpers.unknown.UnknownDetector`` or None.
    """
    from helpers.unknown import UnknownDetector

    labels_file, info_file = _sidecar_paths(tflite_file)
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if "labels" not in info:
        if not labels_file.is_file():
            raise FileNotFoundError(f"no labels for {tflite_file}: expected {labels_file.name} or {info_file.name} "
                                    f"beside it (retrain --tflite_output_file writes both)")
        info["labels"] = labels_file.read_text().splitlines()
    rule_json, rule_npz = _rule_paths(tflite_file)
    info["unknown_rule"] = None
    if rule_json.is_file():
        if not rule_npz.is_file():
            raise FileNotFoundError(f"{rule_json.name} names an unknown rule but {rule_npz.name} is missing beside it")
        with np.load(rule_npz, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        info["unknown_rule"] = UnknownDetector.from_dict(json.loads(rule_json.read_text()), arrays)
    return info


# --------------------------------------------------------------------------- speed
def images_per_second(predict, images, warmup: int = 1, min_seconds: float = 0.0) -> float:
    """How many images per second ``predict(images)`` classifies (after ``warmup`` untimed calls).

    It repeats the call until ``min_seconds`` have passed (at least once), so a
    fast model is not timed on one noisy call.
    """
    images = np.asarray(images, np.float32)
    if len(images) == 0:
        raise ValueError("need at least one image to time")
    for _ in range(warmup):
        predict(images)
    done, start = 0, time.perf_counter()
    while True:
        predict(images)
        done += len(images)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


# --------------------------------------------------------------------------- the SavedModel, for comparison
def export_saved_model(keras_model, folder) -> Path:
    """Save a Keras model (images in [0, 1] -> probabilities) as a SavedModel with a ``classify_images`` signature.

    The plain TensorFlow format, to compare with the ``.tflite`` files made from the
    same model; :class:`SavedModelRunner` runs it. (``retrain`` exports with
    ``helpers.retrain.export_saved_model``, which adds image-file input and labels.)
    """
    import tensorflow as tf

    size = _keras_input_size(keras_model)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
    def classify_images(images):
        return {"probabilities": keras_model(images, training=False)}

    module = tf.Module()
    module.model = keras_model
    module.classify_images = classify_images
    folder = Path(folder)
    tf.saved_model.save(module, str(folder), signatures={"classify_images": classify_images})
    (folder / "model_info.json").write_text(json.dumps({"input_size": size}, indent=2) + "\n")
    return folder


class SavedModelRunner:
    """A SavedModel with a ``classify_images`` signature (images -> ``probabilities``), as a classifier.

    Works with :func:`export_saved_model`'s folders and with ``retrain``'s.

    Same interface as :class:`TFLiteModel` (``predict_proba``, ``predict``,
    ``size_bytes``, ``input_size``), so the two formats can be compared side by side.
    """

    def __init__(self, folder, batch_size: int = 16):
        import tensorflow as tf

        self.path = Path(folder)
        if not (self.path / "saved_model.pb").is_file():
            raise FileNotFoundError(f"no SavedModel in {self.path} (no saved_model.pb)")
        self._loaded = tf.saved_model.load(str(self.path))
        self._classify = self._loaded.signatures["classify_images"]
        info_file = self.path / "model_info.json"
        self.input_size = int(json.loads(info_file.read_text())["input_size"]) if info_file.is_file() else 224
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return f"SavedModelRunner('{self.path.name}', {self.size_bytes / 1e6:.1f} MB)"

    @property
    def size_bytes(self) -> int:
        """Bytes of every file in the SavedModel folder (graph + variables)."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def predict_proba(self, images) -> np.ndarray:
        import tensorflow as tf

        images = np.asarray(images, np.float32)
        out = [self._classify(images=tf.constant(images[i:i + self.batch_size]))["probabilities"].numpy()
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def predict(self, images) -> np.ndarray:
        return np.argmax(self.predict_proba(images), axis=1)


def compare_formats(models: dict, images, labels, min_seconds: float = 2.0) -> dict:
    """File size, test accuracy (with 95% interval and N) and speed of each model on the same images.

    ``models`` maps a name to a :class:`TFLiteModel` or :class:`SavedModelRunner`.
    Returns ``{name: {"megabytes", "accuracy", "ci95", "n", "images_per_second"}}``;
    speed is measured on (at most) the first 32 images, each model timed for at
    least ``min_seconds``.
    """
    from helpers.evaluation import accuracy_with_ci

    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    rows = {}
    for name, model in models.items():
        accuracy, low, high, n = accuracy_with_ci(labels, model.predict(images))
        rows[name] = {"megabytes": model.size_bytes / 1e6, "accuracy": accuracy, "ci95": (low, high), "n": n,
                      "images_per_second": images_per_second(model.predict_proba, images[:32],
                                                             min_seconds=min_seconds)}
    return rows


def format_comparison(rows: dict):
    """A Markdown table of :func:`compare_formats`' rows (Jupyter shows it as a table)."""
    from IPython.display import Markdown

    lines = ["| model | file size | test accuracy [95% CI] | N | images per second |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        low, high = row["ci95"]
        lines.append(f"| {name} | {row['megabytes']:.1f} MB | {row['accuracy']:.1%} [{low:.1%}, {high:.1%}] "
                     f"| {row['n']} | {row['images_per_second']:.0f} |")
    return Markdown("\n".join(lines))


# --------------------------------------------------------------------------- from the retrain command
def classifier_model(backbone, final_layer):
    """One Keras model, images in [0, 1] -> ``[logits, features]``, from a backbone and a retrained last layer.

    The probabilities are the softmax of the logits; the features let
    ``label_image`` apply the model's "unknown" rule.

    ``backbone`` is a ``helpers.backbones.Backbone`` (or anything with ``layer``
    mapping images to features and ``input_size``); ``final_layer`` has ``weights``
    ``[dim, classes]`` and ``bias`` (``helpers.retrain.FinalLayer``).
    """
    import tensorflow as tf

    size = int(backbone.input_size)
    weights, bias = np.asarray(final_layer.weights, np.float32), np.asarray(final_layer.bias, np.float32)
    images = tf.keras.Input((size, size, 3), name="images")
    features = backbone.layer(images, training=False)
    dense = tf.keras.layers.Dense(weights.shape[1], name="logits")
    logits = dense(features)
    dense.set_weights([weights, bias])
    return tf.keras.Model(images, [logits, features], name="classifier")


def check_output_options(tflite_output_file, quantize) -> str | None:
    """``--tflite_output_file`` / ``--quantize`` checked together; returns ``None`` (float) or ``"int8"``."""
    quantize = None if quantize in (None, "", "none", "float") else quantize
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"--quantize must be 'none' or 'int8', got {quantize!r}")
    if quantize and not tflite_output_file:
        raise ValueError("--quantize int8 needs --tflite_output_file (the .tflite file to write)")
    if tflite_output_file and Path(tflite_output_file).suffix != ".tflite":
        raise ValueError(f"--tflite_output_file must end in .tflite, got {Path(tflite_output_file).name!r}")
    return quantize


def export_classifier(backbone, final_layer, labels, output_file, quantize: str | None = None,
                      representative_paths=None, n_representative: int = 100, unknown_rule=None,
                      seed: int = 42) -> Path:
    """Convert backbone + last layer to ``output_file`` (``.tflite``) with its labels beside it.

    ``quantize="int8"`` calibrates on ``n_representative`` images drawn from
    ``representative_paths`` (training images). Returns the ``.tflite`` path.
    """
    output_file = Path(output_file)
    if output_file.suffix != ".tflite":
        raise ValueError(f"the TensorFlow Lite file name must end in .tflite, got {output_file.name!r}")
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    representative = None
    central_crop = float(getattr(backbone, "central_crop", 1.0))
    if quantize == "int8":
        if not representative_paths:
            raise ValueError("int8 quantisation needs representative training images")
        representative = representative_images(representative_paths, int(backbone.input_size), n_representative, seed,
                                               central_crop)
    convert(classifier_model(backbone, final_layer), output_file, quantize, representative)
    write_sidecar(output_file, labels, int(backbone.input_size), quantize, unknown_rule,
                  extra={"backbone": getattr(backbone, "name", None), "backbone_id": getattr(backbone, "id", None),
                         "central_crop": central_crop})
    return output_file


# --------------------------------------------------------------------------- exercises
def check_int8_file(path, image_paths, labels) -> bool:
    """Exercise: is ``path`` an int8 ``.tflite`` classifier that runs on these images?"""
    if path is None:
        print("Set my_xray_file to the path tflite.convert returned and run this cell again.")
        return False
    try:
        model = load_tflite(path)
    except (FileNotFoundError, ValueError) as error:
        print(f"Not yet: {error}")
        return False
    if not model.quantized:
        print(f"{Path(path).name} is a float model: pass quantize='int8' and representative images to tflite.convert.")
        return False
    info_file = _sidecar_paths(path)[1]  # retrain's export writes one; a bare convert() does not (whole image)
    crop = json.loads(info_file.read_text()).get("central_crop", 1.0) if info_file.is_file() else 1.0
    images, kept, _ = load_images(image_paths, model.input_size, central_crop=crop)
    predicted = model.predict(images)
    right = int(np.sum(predicted == np.asarray(labels)[kept]))
    print(f"Right: {Path(path).name} is int8 ({model.size_bytes / 1e6:.1f} MB) and classifies {right} of "
          f"{len(kept)} of these images correctly.")
    return True


# --------------------------------------------------------------------------- for label_image
class _ClassifyImagesSignature:
    """``signatures["classify_images"]`` of a SavedModel, played by a TensorFlow Lite interpreter."""

    def __init__(self, model: TFLiteModel):
        self.model = model

    def __call__(self, images):
        import tensorflow as tf

        images = np.asarray(images, np.float32)
        size = self.model.input_size
        if images.shape[1:3] != (size, size):
            images = tf.image.resize(images, [size, size], antialias=True).numpy()
        return {name: tf.constant(values) for name, values in self.model.run(images).items()}


def load_for_label_image(tflite_file):
    """``(model, labels, info)`` like ``label_image.load_model`` gives for a SavedModel folder.

    ``model.signatures["classify_images"](images=...)`` returns ``{"probabilities": ...}``
    computed by the TensorFlow Lite interpreter, so ``label_image`` classifies with a
    ``.tflite`` file exactly as with a SavedModel: same output, same "unknown" rule
    (read from ``<name>.json``).
    """
    from types import SimpleNamespace

    model = load_tflite(tflite_file)
    info = read_sidecar(tflite_file)
    labels = [str(label) for label in info["labels"]]
    if len(labels) != model.n_classes:
        raise ValueError(f"{Path(tflite_file).name} has {model.n_classes} outputs but its labels file lists "
                         f"{len(labels)} classes")
    if info["unknown_rule"] is not None and not model.outputs_logits:
        raise ValueError(f"{Path(tflite_file).name} has an unknown rule but does not output logits and features")
    info = {**info, "input_size": model.input_size, "central_crop": info.get("central_crop", 1.0)}
    return SimpleNamespace(signatures={"classify_images": _ClassifyImagesSignature(model)}, tflite=model), labels, info
