"""basics.py: the logic behind notebook 1 (neural-network basics) and the
feature-space measurements of notebook 2.

Notebook 1 builds a network up from its smallest piece, so this module goes in
the same order:

1. a neuron, a layer, a network's forward pass and a loss, in plain NumPy, small
   enough to check by hand;
2. gradient descent on a three-point line fit, one recorded step at a time;
3. a small tf.keras network trained on scikit-learn's handwritten digits
   (1,797 8x8 images that ship with scikit-learn, so no download);
4. the two-moons playground: a tiny network retrained in about a second;
5. convolution kernels applied to a photo, and layer/parameter counts.

Notebook 2 then asks how good the pretrained network's bottleneck features are
before any training: :func:`pixel_features`, :func:`knn_accuracy`,
:func:`embed_2d` and :func:`nearest_neighbours` come after those. Last, the
exercise checks of both notebooks (``check_*``): each prints a verdict for the
learner and returns True or False, so a solution cell can ``assert`` it.

Every random step takes a ``seed`` so a re-run gives the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

import helpers  # noqa: F401  (sets the TensorFlow environment switches first)

DEFAULT_SEED = 42

# ---------------------------------------------------------------------------
# 1. A neuron, a layer, a network, a loss
# ---------------------------------------------------------------------------


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


#: Activation functions by name: what a neuron does with its weighted sum.
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda z: z,
    "step": lambda z: (z > 0).astype(float),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
}


def activate(z, activation: str = "sigmoid") -> np.ndarray:
    """Apply the named activation function (a key of :data:`ACTIVATIONS`) to ``z``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[activation](np.asarray(z, dtype=float))


def neuron(inputs, weights, bias: float, activation: str = "sigmoid"):
    """One neuron: the weighted sum ``inputs . weights + bias`` passed through ``activation``.

    ``inputs`` may be one example ``[n_inputs]`` or a batch ``[n, n_inputs]``.
    """
    inputs, weights = np.asarray(inputs, dtype=float), np.asarray(weights, dtype=float)
    if inputs.shape[-1] != weights.shape[0]:
        raise ValueError(f"{inputs.shape[-1]} inputs but {weights.shape[0]} weights: they must match.")
    return activate(inputs @ weights + bias, activation)


def dense_layer(inputs, weights, biases, activation: str = "sigmoid") -> np.ndarray:
    """A layer: several neurons reading the same inputs, one column of ``weights`` each.

    ``weights`` has shape ``[n_inputs, n_units]`` and ``biases`` ``[n_units]``;
    the result has one value per unit (per example).
    """
    weights = np.asarray(weights, dtype=float)
    biases = np.asarray(biases, dtype=float)
    if weights.ndim != 2 or biases.shape != (weights.shape[1],):
        raise ValueError(
            f"weights must be [n_inputs, n_units] and biases [n_units]; got {weights.shape} and {biases.shape}."
        )
    inputs = np.asarray(inputs, dtype=float)
    if inputs.shape[-1] != weights.shape[0]:
        raise ValueError(f"{inputs.shape[-1]} inputs but weights for {weights.shape[0]}: they must match.")
    return activate(inputs @ weights + biases, activation)


def forward_pass(inputs, layers: Sequence[tuple]) -> list[np.ndarray]:
    """Run ``inputs`` through a network given as a list of ``(weights, biases, activation)``.

    Returns every layer's output, the input first and the network's output last,
    so you can look at what each layer computed.
    """
    outputs = [np.asarray(inputs, dtype=float)]
    for weights, biases, activation in layers:
        outputs.append(dense_layer(outputs[-1], weights, biases, activation))
    return outputs


def squared_error(predictions, targets) -> float:
    """Mean squared error: the average of ``(prediction - target)**2`` (the loss of a line fit)."""
    predictions, targets = np.asarray(predictions, dtype=float), np.asarray(targets, dtype=float)
    return float(np.mean((predictions - targets) ** 2))


def cross_entropy(probabilities, label: int) -> float:
    """Cross-entropy of one prediction: ``-log(probability given to the true label)``.

    The loss of a classifier: 0 when it is sure and right, large when it is sure and wrong.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    return float(-np.log(np.clip(probabilities[label], 1e-12, 1.0)))


def softmax(logits) -> np.ndarray:
    """Turn scores into probabilities that sum to 1 (the last layer of a classifier)."""
    logits = np.asarray(logits, dtype=float)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------
# 2. Gradient descent, one step at a time
# ---------------------------------------------------------------------------


@dataclass
class DescentStep:
    """One step of gradient descent on a line fit ``y = w * x + b``."""

    step: int
    w: float
    b: float
    loss: float
    grad_w: float
    grad_b: float


def line_fit_gradients(x, y, w: float, b: float) -> tuple[float, float, float]:
    """Loss and its gradients for the line ``w * x + b`` under mean squared error.

    loss = mean((w x + b - y)^2), so d loss/dw = mean(2 (w x + b - y) x) and
    d loss/db = mean(2 (w x + b - y)). Returns ``(loss, grad_w, grad_b)``.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    error = w * x + b - y
    return float(np.mean(error**2)), float(np.mean(2 * error * x)), float(np.mean(2 * error))


def gradient_descent(x, y, w: float = 0.0, b: float = 0.0, learning_rate: float = 0.1,
                     steps: int = 10) -> list[DescentStep]:
    """Fit ``y = w * x + b`` by gradient descent and record every step.

    Each step moves ``w`` and ``b`` a little against their gradient:
    ``w -= learning_rate * grad_w``. The list starts with the starting point
    (step 0) and has ``steps + 1`` entries; the loss of each entry is the loss
    *at* that entry's ``w`` and ``b``.
    """
    if steps < 0 or learning_rate <= 0:
        raise ValueError("steps must be >= 0 and learning_rate > 0.")
    history = []
    for step in range(steps + 1):
        loss, grad_w, grad_b = line_fit_gradients(x, y, w, b)
        history.append(DescentStep(step, w, b, loss, grad_w, grad_b))
        w, b = w - learning_rate * grad_w, b - learning_rate * grad_b
    return history


# ---------------------------------------------------------------------------
# 3. A small tf.keras network on the handwritten digits
# ---------------------------------------------------------------------------


@dataclass
class Split:
    """Train, validation and test arrays of one small dataset (inputs ``x``, integer labels ``y``)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def sizes(self) -> dict[str, int]:
        """Number of examples in each part."""
        return {"train": len(self.y_train), "validation": len(self.y_val), "test": len(self.y_test)}


def _three_way_split(x, y, validation_fraction, test_fraction, seed, stratify=True) -> Split:
    from sklearn.model_selection import train_test_split

    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError("validation_fraction and test_fraction must be in (0, 1) and sum to less than 1.")
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y if stratify else None)
    val_share = validation_fraction / (1 - test_fraction)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_share, random_state=seed, stratify=y_rest if stratify else None)
    return Split(x_train, y_train, x_val, y_val, x_test, y_test)


def load_digits_split(validation_fraction: float = 0.2, test_fraction: float = 0.2,
                      seed: int = DEFAULT_SEED) -> Split:
    """scikit-learn's 1,797 handwritten digits, scaled to [0, 1] and split three ways.

    ``x`` arrays are ``[n, 64]`` float32 (the 8x8 image flattened; reshape to
    ``[n, 8, 8]`` to look at it), ``y`` the digit 0-9. The split is stratified
    (every digit in the same proportion everywhere) and seeded.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    return _three_way_split(x, digits.target.astype("int64"), validation_fraction, test_fraction, seed)


def build_classifier(n_inputs: int, n_classes: int, hidden_units: Sequence[int] | int = (64,),
                     learning_rate: float = 1e-3, activation: str = "relu"):
    """A small fully connected tf.keras classifier: hidden Dense layers, then softmax.

    Compiled with Adam and sparse categorical cross-entropy (labels are integers),
    reporting accuracy.
    """
    import tensorflow as tf

    if isinstance(hidden_units, int):
        hidden_units = (hidden_units,)
    if any(units < 1 for units in hidden_units):
        raise ValueError(f"Every hidden layer needs at least one unit; got {list(hidden_units)}.")
    layers = [tf.keras.layers.Input(shape=(n_inputs,))]
    layers += [tf.keras.layers.Dense(units, activation=activation) for units in hidden_units]
    layers.append(tf.keras.layers.Dense(n_classes, activation="softmax"))
    model = tf.keras.Sequential(layers)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@dataclass
class TrainingResult:
    """A trained model with its learning curves and its score on held-out data."""

    model: object
    history: dict[str, list[float]]
    test_accuracy: float
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def best_epoch(self) -> int:
        """The epoch (1-based) with the lowest validation loss: after it, more training overfits."""
        return int(np.argmin(self.history["val_loss"])) + 1


def train_digits(hidden_units: Sequence[int] | int = (64,), epochs: int = 40, learning_rate: float = 1e-3,
                 batch_size: int = 32, train_size: int | None = None, data: Split | None = None,
                 seed: int = DEFAULT_SEED) -> TrainingResult:
    """Train :func:`build_classifier` on the digits and measure its test accuracy.

    ``history`` holds per-epoch ``loss``, ``accuracy``, ``val_loss`` and
    ``val_accuracy``. ``train_size`` keeps only the first that many training
    images (a small training set makes overfitting easy to see).
    """
    import time

    import tensorflow as tf

    data = data or load_digits_split(seed=seed)
    x_train, y_train = data.x_train, data.y_train
    if train_size is not None:
        if not 10 <= train_size <= len(y_train):
            raise ValueError(f"train_size must be between 10 and {len(y_train)}; got {train_size}.")
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    tf.keras.utils.set_random_seed(seed)
    model = build_classifier(x_train.shape[1], 10, hidden_units, learning_rate)
    start = time.perf_counter()
    fit = model.fit(x_train, y_train, validation_data=(data.x_val, data.y_val), epochs=epochs,
                    batch_size=batch_size, shuffle=True, verbose=0)
    _, test_accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    return TrainingResult(model, history, float(test_accuracy), time.perf_counter() - start,
                          {"train_size": len(y_train)})


def predict_labels(model, x) -> np.ndarray:
    """The class a trained classifier picks for each row of ``x`` (the most probable one)."""
    return np.argmax(model(np.asarray(x, dtype="float32"), training=False).numpy(), axis=-1)


# ---------------------------------------------------------------------------
# 4. The two-moons playground
# ---------------------------------------------------------------------------


def make_moons_split(n_samples: int = 300, noise: float = 0.25, seed: int = DEFAULT_SEED) -> Split:
    """scikit-learn's two interleaving half-moons in 2-D, split 60/20/20 (train/validation/test)."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n_samples, noise=noise, random_state=seed)
    return _three_way_split(x.astype("float32"), y.astype("int64"), 0.2, 0.2, seed)


def train_moons(hidden_units: int = 8, learning_rate: float = 0.03, epochs: int = 200,
                data: Split | None = None, seed: int = DEFAULT_SEED) -> TrainingResult:
    """Train a one-hidden-layer network on the two moons, fast enough for a slider.

    The whole training set is one batch, so an epoch is one gradient step (a
    small custom loop in one ``tf.function``) and a few hundred epochs take
    about a second. ``test_accuracy`` is measured on
    the held-out test points.
    """
    import time

    import tensorflow as tf

    if not 1 <= epochs <= 5000:
        raise ValueError(f"epochs must be between 1 and 5000; got {epochs}.")
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive; got {learning_rate}.")
    data = data or make_moons_split(seed=seed)
    tf.keras.utils.set_random_seed(seed)
    model = build_classifier(2, 2, (int(hidden_units),), learning_rate, activation="tanh")
    loss_fn, optimizer = model.loss, model.optimizer
    if isinstance(loss_fn, str):
        loss_fn = tf.keras.losses.get(loss_fn)
    x_train, y_train = tf.constant(data.x_train), tf.constant(data.y_train)
    x_val, y_val = tf.constant(data.x_val), tf.constant(data.y_val)

    @tf.function
    def epoch():  # one full-batch gradient step, plus the losses and accuracies to plot
        with tf.GradientTape() as tape:
            train_p = model(x_train, training=True)
            loss = tf.reduce_mean(loss_fn(y_train, train_p))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        val_p = model(x_val, training=False)
        return (loss, _accuracy(y_train, train_p), tf.reduce_mean(loss_fn(y_val, val_p)), _accuracy(y_val, val_p))

    start = time.perf_counter()
    rows = np.array([[float(v) for v in epoch()] for _ in range(int(epochs))])
    history = dict(zip(["loss", "accuracy", "val_loss", "val_accuracy"], rows.T.tolist()))
    test_accuracy = float(np.mean(predict_labels(model, data.x_test) == data.y_test))
    return TrainingResult(model, history, test_accuracy, time.perf_counter() - start)


def _accuracy(labels, probabilities):
    import tensorflow as tf

    predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
    return tf.reduce_mean(tf.cast(tf.equal(predicted, labels), tf.float32))


def decision_grid(model, x, resolution: int = 150, margin: float = 0.5):
    """Probability of class 1 on a grid covering the points ``x`` (for drawing a decision boundary).

    Returns ``(xx, yy, probability)``, each ``[resolution, resolution]``.
    """
    x = np.asarray(x)
    lo, hi = x.min(axis=0) - margin, x.max(axis=0) + margin
    xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution))
    grid = np.c_[xx.ravel(), yy.ravel()].astype("float32")
    probability = model(grid, training=False).numpy()[:, 1]
    return xx, yy, probability.reshape(xx.shape)


# ---------------------------------------------------------------------------
# 5. Convolutions, and how big image networks are
# ---------------------------------------------------------------------------

#: Classic 3x3 convolution kernels: each one looks at a pixel and its 8 neighbours.
KERNELS: dict[str, np.ndarray] = {
    "identity": np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=float),
    "blur": np.full((3, 3), 1 / 9.0),
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=float),
    "horizontal edges (Sobel)": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=float),
    "vertical edges (Sobel)": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=float),
    "all edges (Laplacian)": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=float),
}


def load_photo(name: str = "chelsea", grey: bool = True) -> np.ndarray:
    """A photo that ships with scikit-image (``chelsea`` the cat, ``coffee``, ``astronaut``...).

    Returns float values in [0, 1], ``[h, w]`` when ``grey`` else ``[h, w, 3]``.
    """
    import skimage.color
    import skimage.data
    import skimage.util

    loader = getattr(skimage.data, name, None)
    if loader is None or not callable(loader):
        raise ValueError(f"scikit-image has no photo called {name!r}; try 'chelsea', 'coffee' or 'astronaut'.")
    image = skimage.util.img_as_float(loader())
    if grey and image.ndim == 3:
        image = skimage.color.rgb2gray(image[..., :3])
    return image.astype("float32")


def convolve(image, kernel) -> np.ndarray:
    """Slide ``kernel`` over ``image`` (each output pixel = weighted sum of its neighbourhood).

    Works on a grey ``[h, w]`` image or on each channel of ``[h, w, c]``; the
    borders are handled by reflecting the image. The result is not clipped, so
    edge kernels give negative and positive responses.
    """
    from scipy import ndimage

    image, kernel = np.asarray(image, dtype="float32"), np.asarray(kernel, dtype="float32")
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be a 2-D array; got shape {kernel.shape}.")
    if image.ndim == 2:
        return ndimage.convolve(image, kernel, mode="reflect")
    if image.ndim == 3:
        return np.stack([ndimage.convolve(image[..., c], kernel, mode="reflect")
                         for c in range(image.shape[-1])], axis=-1)
    raise ValueError(f"image must be [h, w] or [h, w, channels]; got shape {image.shape}.")


@dataclass
class ModelSize:
    """How big a network is: its layers (all, and convolutions) and parameters."""

    layers: int
    conv_layers: int
    dense_layers: int
    parameters: int
    trainable_parameters: int

    def __str__(self) -> str:
        return (f"{self.layers} layers ({self.conv_layers} convolutions, {self.dense_layers} dense), "
                f"{self.parameters:,} parameters ({self.trainable_parameters:,} trainable)")


def _leaf_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _leaf_layers(layer)
        else:
            yield layer


def model_size(model) -> ModelSize:
    """Count a tf.keras model's layers (nested models opened up) and its parameters.

    Input layers are not counted: they hold no computation.
    """
    import tensorflow as tf

    layers = [layer for layer in _leaf_layers(model) if not isinstance(layer, tf.keras.layers.InputLayer)]
    conv_types = (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D, tf.keras.layers.SeparableConv2D)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    return ModelSize(
        layers=len(layers),
        conv_layers=sum(isinstance(layer, conv_types) for layer in layers),
        dense_layers=sum(isinstance(layer, tf.keras.layers.Dense) for layer in layers),
        parameters=int(model.count_params()),
        trainable_parameters=trainable,
    )


def dense_vs_conv_parameters(image_size: int = 224, channels: int = 3, units: int = 32,
                             kernel_size: int = 3) -> dict[str, int]:
    """Parameters of one layer with ``units`` outputs reading a whole image, dense versus convolutional.

    A dense layer connects every pixel to every unit; a convolution reuses one
    small kernel per output channel everywhere in the image. The counts come
    from real tf.keras layers.
    """
    import tensorflow as tf

    shape = (image_size, image_size, channels)
    dense = tf.keras.Sequential([tf.keras.layers.Input(shape), tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(units)])
    conv = tf.keras.Sequential([tf.keras.layers.Input(shape), tf.keras.layers.Conv2D(units, kernel_size)])
    return {"dense": int(dense.count_params()), "convolution": int(conv.count_params())}


def layer_table(model, last: int | None = None) -> list[tuple[str, str, str, int]]:
    """``(name, type, output shape, parameters)`` for each top-level layer of a tf.keras model.

    ``last`` keeps only the final few rows (where the bottleneck sits).
    """
    rows = []
    for layer in model.layers:
        try:
            shape = str(tuple(layer.output.shape))
        except (AttributeError, ValueError):
            shape = "?"
        rows.append((layer.name, type(layer).__name__, shape, int(layer.count_params())))
    return rows[-last:] if last else rows


def training_seconds_per_image(model, batch_size: int = 8, seed: int = DEFAULT_SEED) -> float:
    """Measure how long one training step (forward and backward pass) takes per image on this machine.

    Runs one warm-up step and one timed step on random images of the model's
    input size; multiply by a dataset size and a number of epochs to estimate
    what training from scratch would cost.
    """
    import time

    import tensorflow as tf

    size = model.input_shape[1:]
    if None in size:
        raise ValueError(f"the model needs a fixed input size to be timed; its input shape is {model.input_shape}.")
    images = tf.random.stateless_uniform((batch_size, *size), seed=(seed, 0))

    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(images, training=True))
        return tape.gradient(loss, model.trainable_variables)

    step()
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) / batch_size


# ---------------------------------------------------------------------------
# Notebook 2: how good are bottleneck features before any training?
# ---------------------------------------------------------------------------


def all_files(splits, split_names=("training", "validation", "testing")) -> tuple[list, np.ndarray]:
    """Every image path of an ``ImageSplits`` (the named splits, in order) with its integer label."""
    paths = [path for name in split_names for path in splits.files[name]]
    labels = np.concatenate([np.asarray(splits.labels[name], dtype=np.int64) for name in split_names])
    return paths, labels


def one_per_class(splits, split: str = "testing", per_class: int = 1) -> list:
    """The first ``per_class`` image paths of each class in one split (examples to look at)."""
    labels = np.asarray(splits.labels[split])
    picks = [np.flatnonzero(labels == index)[:per_class] for index in range(len(splits.classes))]
    return [splits.files[split][i] for chosen in picks for i in chosen]


def thumbnail_cells(points, cells: int = 12) -> list[tuple[int, float, float]]:
    """Pick one point per cell of a ``cells`` x ``cells`` grid over a 2-D map, for drawing thumbnails.

    Returns ``(index, x, y)`` for every non-empty cell: the point closest to the
    cell's centre and that centre. A map of thousands of points then shows a
    readable grid of images instead of a pile of overlapping ones.
    """
    points = np.asarray(points, dtype=float)
    lo, hi = points.min(axis=0), points.max(axis=0)
    step = (hi - lo) / cells
    cell = np.minimum(((points - lo) / np.where(step > 0, step, 1)).astype(int), cells - 1)
    chosen = []
    for cx, cy in sorted({tuple(c) for c in cell}):
        members = np.flatnonzero((cell[:, 0] == cx) & (cell[:, 1] == cy))
        centre = lo + (np.array([cx, cy]) + 0.5) * step
        best = members[np.argmin(np.linalg.norm(points[members] - centre, axis=1))]
        chosen.append((int(best), float(centre[0]), float(centre[1])))
    return chosen


def pixel_features(paths: Sequence, size: int = 32) -> np.ndarray:
    """Raw pixels as features: each image resized to ``size`` x ``size`` RGB and flattened.

    The baseline the bottleneck features are compared with; ``[n, size*size*3]`` float32 in [0, 1].
    """
    from helpers import data

    return np.stack([data.load_image(path, size).reshape(-1) for path in paths]).astype("float32")


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 5, metric: str = "euclidean") -> float:
    """Accuracy of a k-nearest-neighbour classifier (no training beyond storing the examples).

    A test image gets the majority label of its ``k`` closest training images,
    so the score says directly how well the feature space groups the classes.
    """
    from sklearn.neighbors import KNeighborsClassifier

    if len(train_x) < k:
        raise ValueError(f"k={k} needs at least {k} training examples; got {len(train_x)}.")
    classifier = KNeighborsClassifier(n_neighbors=k, metric=metric).fit(train_x, train_y)
    return float(classifier.score(test_x, test_y))


def embed_2d(features, method: str = "pca", seed: int = DEFAULT_SEED, pca_dims: int = 50) -> np.ndarray:
    """Project features to 2-D for a map: ``"pca"`` (linear, instant) or ``"tsne"`` (keeps neighbours close).

    t-SNE runs on the first ``pca_dims`` principal components, which keeps it
    well under a minute for a few thousand 1280-dimensional vectors.
    """
    from sklearn.decomposition import PCA

    features = np.asarray(features, dtype="float32")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if method != "tsne":
        raise ValueError(f"method must be 'pca' or 'tsne'; got {method!r}.")
    from sklearn.manifold import TSNE

    from threadpoolctl import threadpool_limits

    reduced = PCA(n_components=min(pca_dims, *features.shape), random_state=seed).fit_transform(features)
    perplexity = min(30.0, (len(features) - 1) / 3)
    # One thread: on a busy machine OpenMP's waiting threads made t-SNE ten times slower, not faster.
    with threadpool_limits(limits=1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


def nearest_neighbours(features, query_index: int, k: int = 5, metric: str = "cosine"):
    """The ``k`` images closest to image ``query_index`` in feature space (itself excluded).

    Returns ``(indices, distances)``, closest first.
    """
    from sklearn.neighbors import NearestNeighbors

    features = np.asarray(features)
    if not 0 <= query_index < len(features):
        raise IndexError(f"query_index must be between 0 and {len(features) - 1}; got {query_index}.")
    finder = NearestNeighbors(n_neighbors=min(k + 1, len(features)), metric=metric).fit(features)
    distances, indices = finder.kneighbors(features[query_index:query_index + 1])
    keep = indices[0] != query_index
    return indices[0][keep][:k], distances[0][keep][:k]


# ---------------------------------------------------------------------------
# Exercise checks: each prints a verdict for the learner and returns True/False
# (None means "not answered yet"); the solution cells assert them.
# ---------------------------------------------------------------------------


def _verdict(ok: bool, good: str, bad: str) -> bool:
    print(("✓ " + good) if ok else ("✗ " + bad))
    return ok


def check_diverging_learning_rate(learning_rate, x=(1, 2, 3), y=(3, 5, 7), steps: int = 10) -> bool:
    """Exercise: a learning rate so large that gradient descent overshoots and the loss grows."""
    if learning_rate is None:
        return _verdict(False, "", "Not answered yet: set my_learning_rate above.")
    history = gradient_descent(x, y, learning_rate=float(learning_rate), steps=steps)
    start, end = history[0].loss, history[-1].loss
    return _verdict(end > start, f"The loss grew from {start:.3g} to {end:.3g}: each step jumps past the minimum.",
                    f"The loss went from {start:.3g} down to {end:.3g}: this learning rate still works. Try larger.")


def check_small_digits_network(result, max_parameters: int = 2000, min_accuracy: float = 0.90) -> bool:
    """Exercise: a digits network with fewer than ``max_parameters`` weights and at least ``min_accuracy``."""
    if result is None:
        return _verdict(False, "", "Not answered yet: train a network into my_result above.")
    size = model_size(result.model)
    ok = size.parameters < max_parameters and result.test_accuracy >= min_accuracy
    return _verdict(ok, f"{size.parameters:,} parameters and {result.test_accuracy:.1%} test accuracy.",
                    f"{size.parameters:,} parameters (need < {max_parameters:,}) and {result.test_accuracy:.1%} "
                    f"test accuracy (need >= {min_accuracy:.0%}).")


def edge_test_images(size: int = 16) -> dict[str, np.ndarray]:
    """Small synthetic images to probe a kernel: flat, and a dark-to-bright step that is vertical, horizontal, diagonal."""
    rows, cols = np.mgrid[0:size, 0:size]
    return {
        "flat": np.full((size, size), 0.5),
        "vertical": (cols >= size // 2).astype(float),
        "horizontal": (rows >= size // 2).astype(float),
        "diagonal": (rows + cols >= size).astype(float),
    }


def kernel_responses(kernel, size: int = 16) -> dict[str, float]:
    """The strongest response (largest absolute output) of ``kernel`` on each of :func:`edge_test_images`."""
    return {name: float(np.abs(convolve(image, kernel)).max()) for name, image in edge_test_images(size).items()}


def check_diagonal_kernel(kernel) -> bool:
    """Exercise: a 3x3 kernel that ignores flat regions and answers diagonal edges more than straight ones."""
    if kernel is None:
        return _verdict(False, "", "Not answered yet: write my_kernel above.")
    kernel = np.asarray(kernel, dtype=float)
    if kernel.shape != (3, 3):
        return _verdict(False, "", f"The kernel must be 3x3; yours is {kernel.shape}.")
    r = kernel_responses(kernel)
    ok = r["flat"] < 1e-6 and r["diagonal"] > 1.2 * max(r["vertical"], r["horizontal"])
    summary = ", ".join(f"{name} {value:.2f}" for name, value in r.items())
    return _verdict(ok, f"Responses: {summary}.",
                    f"Responses: {summary}. Need 0 on flat and diagonal > 1.2 x the vertical and horizontal ones.")


def check_best_k(k, train, validation, candidates=range(1, 26)) -> bool:
    """Exercise (notebook 2): the k of a k-NN classifier with the best validation accuracy.

    ``train`` and ``validation`` have ``features`` and ``labels`` (e.g. ``Bottlenecks``).
    Ties count as right: any k reaching the best score is accepted.
    """
    if k is None:
        return _verdict(False, "", "Not answered yet: set my_k above.")
    if int(k) not in candidates:
        return _verdict(False, "", f"k must be between {min(candidates)} and {max(candidates)}; got {k}.")
    scores = {c: knn_accuracy(train.features, train.labels, validation.features, validation.labels, k=c)
              for c in candidates}
    best = max(scores.values())
    return _verdict(scores[int(k)] >= best, f"k = {k} reaches the best validation accuracy, {best:.1%}.",
                    f"k = {k} gives {scores[int(k)]:.1%} on validation; some k reaches {best:.1%}.")


def check_closest_classes(pair, features, labels, classes) -> bool:
    """Exercise (notebook 2): the two classes whose mean feature vectors are closest (Euclidean)."""
    if pair is None:
        return _verdict(False, "", "Not answered yet: set my_pair above.")
    pair = set(pair)
    if len(pair) != 2 or not pair <= set(classes):
        return _verdict(False, "", f"Give two different names from {list(classes)}; got {sorted(pair)}.")
    features, labels = np.asarray(features), np.asarray(labels)
    centres = np.stack([features[labels == i].mean(axis=0) for i in range(len(classes))])
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    distance[np.diag_indices(len(classes))] = np.inf
    a, b = np.unravel_index(np.argmin(distance), distance.shape)
    right = {classes[a], classes[b]}
    named = [classes.index(name) for name in pair]
    return _verdict(pair == right, f"{sorted(pair)} are the closest pair: centres {distance[a, b]:.2f} apart.",
                    f"The centres of {sorted(pair)} are {distance[named[0], named[1]]:.2f} apart; "
                    f"another pair is closer ({distance[a, b]:.2f}).")
