"""Where a model looks: Grad-CAM and occlusion maps for a retrained head.

The course's classifiers are a frozen backbone followed by one dense layer (the
head that ``helpers.retrain`` trains on the pooled 1280-d bottleneck features).
Two ways to ask which pixels drive the head's score for one class:

- ``gradcam``: Grad-CAM (Selvaraju et al., 2017). Take the backbone's last
  convolutional feature map ``A`` (``[h, w, k]``, 7x7x1280 for EfficientNet-Lite0
  at 224 px), weight each channel by the mean gradient of the class score with
  respect to it, sum, keep the positive part. One forward and one backward pass.
  With a linear head on average-pooled features this is exactly the class
  activation map ``relu(A @ head_weights[:, c])`` up to a constant.
- ``occlusion``: cover the image with a grey patch at each position and record how
  much the class probability drops. Slower (one forward pass per position) but
  model-agnostic: it needs only a function from images to probabilities.

Both return a heat map ``[height, width]`` in ``[0, 1]`` at the image's size.
A heat map shows where the score is sensitive, not *why*: it is a clue to check
(does the model look at the lungs or at a text marker in the corner?), never a
proof that the model reasons like a radiologist.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np

import helpers  # noqa: F401  (sets the TensorFlow environment switches first)

TARGETS = ("logit", "log_odds")
#: backbone -> {layer name: model giving (feature map, output)}; built once per backbone and layer.
_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _as_image(image) -> np.ndarray:
    """Check one float image ``[height, width, 3]`` in [0, 1] and return it as float32."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"expected one RGB image of shape [height, width, 3], got shape {array.shape}; "
            "load it with helpers.data.load_image(path, size)")
    if array.size and (array.min() < -1e-3 or array.max() > 1 + 1e-3):
        raise ValueError(
            f"expected pixel values in [0, 1], got [{array.min():.3g}, {array.max():.3g}]; "
            "divide 8-bit images by 255")
    return array


def _check_head(head_weights, head_bias, class_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Check the head's shapes and the class index; return them as float32 arrays."""
    weights = np.asarray(head_weights, dtype=np.float32)
    bias = np.asarray(head_bias, dtype=np.float32)
    if weights.ndim != 2 or bias.shape != (weights.shape[1],):
        raise ValueError(
            f"head_weights must be [features, classes] and head_bias [classes]; got "
            f"{weights.shape} and {bias.shape} (use FinalLayer.weights and FinalLayer.bias)")
    n_classes = weights.shape[1]
    if not 0 <= int(class_index) < n_classes:
        raise ValueError(f"class_index {class_index} is out of range for a head with {n_classes} classes")
    return weights, bias


def _normalise(heatmap: np.ndarray) -> np.ndarray:
    """Scale a non-negative map so that its maximum is 1 (an all-zero map stays zero)."""
    heatmap = np.maximum(np.nan_to_num(heatmap.astype(np.float32)), 0.0)
    peak = float(heatmap.max()) if heatmap.size else 0.0
    return heatmap / peak if peak > 0 else np.zeros_like(heatmap)


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a ``[h, w]`` or ``[h, w, c]`` array to ``size`` = (height, width)."""
    import tensorflow as tf

    squeeze = array.ndim == 2
    tensor = tf.convert_to_tensor(array[..., None] if squeeze else array, tf.float32)
    resized = tf.image.resize(tensor, size, method="bilinear").numpy()
    return resized[..., 0] if squeeze else resized


def last_conv_layer_name(model) -> str:
    """Name of the last layer of ``model`` whose output is a spatial map ``[n, h, w, k]``.

    For the bundled EfficientNet-Lite models this is the activation after the
    1x1 head convolution (1280 channels), the map that global pooling averages.
    """
    for layer in reversed(model.layers):
        output = layer.output
        shape = tuple(output.shape) if hasattr(output, "shape") else ()
        if len(shape) == 4 and (shape[1] or 2) > 1:
            return layer.name
    raise ValueError(f"model {model.name!r} has no layer with a 4-d (spatial) output to explain")


def _model_input_size(model) -> tuple[int, int] | None:
    """(height, width) the model expects, or None when it takes any size."""
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    height, width = shape[1], shape[2]
    return (height, width) if height and width else None


def _probe(keras_backbone, layer_name: str):
    """A model sharing the backbone's layers that returns (feature map of ``layer_name``, output)."""
    import tensorflow as tf

    probes = _PROBES.setdefault(keras_backbone, {})
    if layer_name not in probes:
        try:
            feature_map = keras_backbone.get_layer(layer_name).output
        except ValueError as error:
            raise ValueError(f"the backbone has no layer named {layer_name!r}") from error
        probes[layer_name] = tf.keras.Model(keras_backbone.inputs, [feature_map, keras_backbone.output])
    return probes[layer_name]


def gradcam(image, keras_backbone, head_weights, head_bias, class_index: int,
            layer_name: str | None = None, target: str = "logit") -> np.ndarray:
    """Grad-CAM heat map ``[height, width]`` in [0, 1] for one image and one class.

    ``image``: float ``[height, width, 3]`` in [0, 1] (resized to the backbone's
    input size inside; the map is resized back to the image's size).
    ``keras_backbone``: a ``tf.keras`` model from images to pooled features, e.g.
    ``helpers.efficientnet_lite.build_keras_model("efficientnet_lite0")``.
    ``head_weights [features, classes]``, ``head_bias [classes]``: the retrained
    head (``FinalLayer.weights``, ``FinalLayer.bias``).
    ``layer_name``: the feature map to explain; default the last spatial one.
    ``target``: ``"logit"`` explains the class's logit; ``"log_odds"`` explains
    the class's log-odds against the others (for two classes, the logit
    difference), which shows evidence *for this class rather than the other*.

    A map that is zero everywhere means no region raised the score.
    """
    import tensorflow as tf

    array = _as_image(image)
    weights, bias = _check_head(head_weights, head_bias, class_index)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    probe = _probe(keras_backbone, layer_name or last_conv_layer_name(keras_backbone))
    size = _model_input_size(keras_backbone)
    batch = tf.convert_to_tensor(array[None])
    if size is not None and tuple(array.shape[:2]) != size:
        batch = tf.image.resize(batch, size, method="bilinear")
    with tf.GradientTape() as tape:
        feature_map, features = probe(batch, training=False)
        if len(features.shape) == 4:  # a backbone without its pooling layer
            features = tf.reduce_mean(features, axis=[1, 2])
        if features.shape[-1] != weights.shape[0]:
            raise ValueError(
                f"the backbone gives {features.shape[-1]} features but the head expects {weights.shape[0]}: "
                "was the head trained on another backbone?")
        logits = tf.matmul(features, weights) + bias
        score = logits[:, class_index]
        if target == "log_odds":  # logit_c - logsumexp(other logits) = log(p_c / (1 - p_c))
            others = tf.where(tf.range(logits.shape[-1]) == class_index, -np.inf, logits)
            score = score - tf.reduce_logsumexp(others, axis=-1)
    gradients = tape.gradient(score, feature_map)[0]          # [h, w, k]
    channel_weights = tf.reduce_mean(gradients, axis=[0, 1])  # [k]
    cam = tf.nn.relu(tf.reduce_sum(feature_map[0] * channel_weights, axis=-1)).numpy()
    return _normalise(_resize(cam, array.shape[:2]))


def head_predictor(backbone, head_weights, head_bias) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``images [n, h, w, 3] -> probabilities [n, classes]`` for ``occlusion``.

    ``backbone`` is either a ``helpers.backbones.Backbone`` (its ``features``
    method is used) or a ``tf.keras`` model from images to pooled features.
    """
    weights, bias = _check_head(head_weights, head_bias, 0)

    def features_of(images):
        if hasattr(backbone, "features"):
            return np.asarray(backbone.features(images), dtype=np.float32)
        output = backbone(np.asarray(images, dtype=np.float32), training=False)
        output = np.asarray(output, dtype=np.float32)
        return output.mean(axis=(1, 2)) if output.ndim == 4 else output

    def predict_proba(images):
        logits = features_of(images) @ weights + bias
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    return predict_proba


def occlusion(image, predict_proba: Callable[[np.ndarray], np.ndarray], class_index: int,
              patch_size: int | None = None, stride: int | None = None, fill: float = 0.5,
              batch_size: int = 32) -> np.ndarray:
    """Occlusion heat map ``[height, width]`` in [0, 1]: how much hiding each region lowers the class probability.

    A square of grey (``fill``) of ``patch_size`` pixels (default: a seventh of the
    shorter side) slides over the image in steps of ``stride`` (default: half the
    patch). Each pixel gets the mean probability drop of the patches that cover it;
    drops below zero (hiding a region *raised* the score) count as zero.
    ``predict_proba`` maps images ``[n, h, w, 3]`` at this image's size to
    probabilities ``[n, classes]`` (see ``head_predictor``). Costs one forward pass
    per patch position (169 for a 224 px image with the defaults).
    """
    array = _as_image(image)
    height, width = array.shape[:2]
    patch_size = int(patch_size or max(1, min(height, width) // 7))
    stride = int(stride or max(1, patch_size // 2))
    if not 0 < patch_size <= min(height, width) or stride < 1:
        raise ValueError(f"patch_size must be in 1..{min(height, width)} and stride >= 1, "
                         f"got patch_size={patch_size}, stride={stride}")
    baseline = np.asarray(predict_proba(array[None]))
    if baseline.ndim != 2 or not 0 <= int(class_index) < baseline.shape[1]:
        raise ValueError(f"class_index {class_index} is out of range for probabilities of shape {baseline.shape}")
    base_score = float(baseline[0, class_index])

    tops = list(range(0, height - patch_size + 1, stride))
    lefts = list(range(0, width - patch_size + 1, stride))
    tops += [height - patch_size] if tops[-1] != height - patch_size else []
    lefts += [width - patch_size] if lefts[-1] != width - patch_size else []
    positions = [(top, left) for top in tops for left in lefts]

    drop_sum = np.zeros((height, width), np.float64)
    cover = np.zeros((height, width), np.float64)
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        batch = np.repeat(array[None], len(chunk), axis=0)
        for i, (top, left) in enumerate(chunk):
            batch[i, top:top + patch_size, left:left + patch_size] = fill
        scores = np.asarray(predict_proba(batch))[:, class_index]
        for (top, left), score in zip(chunk, scores):
            drop_sum[top:top + patch_size, left:left + patch_size] += base_score - float(score)
            cover[top:top + patch_size, left:left + patch_size] += 1
    return _normalise(drop_sum / np.maximum(cover, 1))


def overlay(image, heatmap, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """The image with the heat map blended on top, as float RGB ``[height, width, 3]`` in [0, 1]."""
    from matplotlib import colormaps

    array = _as_image(image)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != array.shape[:2]:
        heat = _resize(heat, array.shape[:2])
    coloured = colormaps[cmap](np.clip(heat, 0, 1))[..., :3].astype(np.float32)
    return np.clip((1 - alpha) * array + alpha * coloured, 0, 1)
