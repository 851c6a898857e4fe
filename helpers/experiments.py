"""Compare ways of training the final layer, fairly: a better-regularised head and a results table.

Notebook 3 asks "can we beat the article's 92.3%?" and tries several options
(another backbone, distortions, another head). To keep the comparison honest:

- every choice (here: the regularisation strength ``C``) is made on the
  validation split; the test split is looked at once, for the table;
- every test accuracy is reported with its N and a 95% Wilson interval
  (:func:`helpers.evaluation.accuracy_with_ci`), because two figures whose intervals
  overlap widely are not shown to differ by a test set of a few hundred images;
- options that do worse are reported too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from helpers.evaluation import accuracy_with_ci

#: The article's flowers result (last-layer retraining of Inception-V3, retrain.py's defaults).
#: Its train and validation figures were measured on one batch of 100 images.
ARTICLE_FLOWERS = {
    "training": (0.970, 100),
    "validation": (0.910, 100),
    "testing": (0.923, 362),
}

#: Regularisation strengths tried by :class:`RegularisedHead` (smaller C = stronger L2 penalty).
DEFAULT_CS = (0.03, 0.1, 0.3, 1.0)


class RegularisedHead:
    """A softmax final layer with an L2 penalty whose strength is chosen on the validation split.

    retrain.py's head is plain softmax regression trained by SGD for a fixed number
    of steps, with no penalty. This is the same model (one dense layer + softmax)
    fitted to convergence by scikit-learn's ``LogisticRegression``, trying each ``C``
    in ``Cs`` on the training split and keeping the one with the best validation
    accuracy (ties go to the stronger penalty). The test split plays no part.

    After ``fit``: ``C_``, ``validation_accuracies_`` (``{C: accuracy}``), ``model_``
    (the fitted estimator), ``seconds_``.
    """

    def __init__(self, Cs=DEFAULT_CS, max_iter: int = 2000, seed: int = 42):
        self.Cs = tuple(Cs)
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, train_x, train_y, val_x, val_y) -> "RegularisedHead":
        """Fit one model per ``C`` on training, keep the best on validation. Returns self.

        The ``C`` values are tried from the strongest penalty up, each fit starting from
        the previous solution (``warm_start``), which saves most of the iterations.
        """
        import copy

        from sklearn.linear_model import LogisticRegression

        train_x, val_x = np.asarray(train_x, np.float32), np.asarray(val_x, np.float32)
        train_y, val_y = np.asarray(train_y), np.asarray(val_y)
        if not self.Cs:
            raise ValueError("Cs is empty: give at least one regularisation strength to try")
        if len(train_x) != len(train_y) or len(val_x) != len(val_y):
            raise ValueError(f"features and labels differ in length: training {len(train_x)} vs {len(train_y)}, "
                             f"validation {len(val_x)} vs {len(val_y)}")
        if len(val_y) == 0:
            raise ValueError("the validation split is empty: C is chosen on it, so it needs images")
        if len(np.unique(train_y)) < 2:
            raise ValueError("the training split needs at least two classes")
        start = time.perf_counter()
        estimator = LogisticRegression(max_iter=self.max_iter, random_state=self.seed, warm_start=True)
        self.validation_accuracies_ = {}
        for C in sorted(self.Cs):
            estimator.set_params(C=C).fit(train_x, train_y)
            self.validation_accuracies_[C] = float(np.mean(estimator.predict(val_x) == val_y))
            if self.validation_accuracies_[C] > max(list(self.validation_accuracies_.values())[:-1], default=-1):
                self.C_, self.model_ = C, copy.deepcopy(estimator)  # ties keep the stronger penalty
        self.seconds_ = time.perf_counter() - start
        return self

    def predict_proba(self, x) -> np.ndarray:
        """Class probabilities ``[n, n_classes]``."""
        return self.model_.predict_proba(np.asarray(x, np.float32))

    def predict(self, x) -> np.ndarray:
        """The most probable class index for each row."""
        return self.model_.predict(np.asarray(x, np.float32))

    @property
    def weights(self) -> np.ndarray:
        """``[dim, n_classes]``, laid out like ``FinalLayer.weights`` (so it can be exported the same way)."""
        return self.model_.coef_.T.astype(np.float32)

    @property
    def bias(self) -> np.ndarray:
        """``[n_classes]``."""
        return self.model_.intercept_.astype(np.float32)


@dataclass
class Result:
    """One row of a results table: accuracy with interval per split, and what it cost.

    ``accuracy[split] = (accuracy, low, high, n)``; ``seconds`` maps a cost name
    (e.g. ``"features"``, ``"training"``) to seconds; ``note`` says what was done.
    """

    name: str
    accuracy: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    note: str = ""

    @property
    def test_accuracy(self) -> float:
        return self.accuracy["testing"][0] if "testing" in self.accuracy else float("nan")


def evaluate(name: str, model, features: dict, labels: dict, seconds: dict | None = None, note: str = "") -> Result:
    """Score ``model`` (anything with ``predict(x)``) on each split of ``features``/``labels``."""
    missing = set(features) ^ set(labels)
    if missing:
        raise ValueError(f"features and labels must name the same splits; only one has {sorted(missing)}")
    accuracy = {split: accuracy_with_ci(labels[split], model.predict(features[split]))
                for split in features if len(labels[split])}
    return Result(name, accuracy, dict(seconds or {}), note)


def _cell(value) -> str:
    """``92.3% [89.1, 94.7] N=362`` from ``(acc, low, high, n)`` or ``(acc, n)``."""
    if value is None:
        return ""
    if len(value) == 2:
        accuracy, n = value
        low, high = accuracy_with_ci_bounds(accuracy, n)
    else:
        accuracy, low, high, n = value
    return f"{100 * accuracy:.1f}% [{100 * low:.1f}, {100 * high:.1f}] N={n}"


def accuracy_with_ci_bounds(accuracy: float, n: int) -> tuple[float, float]:
    """The Wilson 95% interval of a published accuracy measured on ``n`` images."""
    from helpers.evaluation import wilson_interval

    return wilson_interval(int(round(accuracy * n)), n)


def results_table(results: list[Result], reference: dict | None = ARTICLE_FLOWERS,
                  reference_name: str = "article (Inception-V3)", splits=("training", "validation", "testing")):
    """A Markdown table (shown as a table in Jupyter): one row per result, the article's first.

    Each cell is ``accuracy [95% interval] N=...``; a ``seconds`` column lists the costs.
    Returns an ``IPython.display.Markdown`` (its ``.data`` is the text).
    """
    from IPython.display import Markdown

    header = ["option", *splits, "seconds", "what was done"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if reference:
        lines.append("| " + " | ".join([reference_name, *(_cell(reference.get(s)) for s in splits),
                                         "", "published figures; intervals computed here"]) + " |")
    for result in results:
        cost = ", ".join(f"{name} {value:.1f}" for name, value in result.seconds.items())
        cells = [result.name, *(_cell(result.accuracy.get(s)) for s in splits), cost, result.note]
        lines.append("| " + " | ".join(cells) + " |")
    return Markdown("\n".join(lines))


def side_by_side(*features: dict) -> dict:
    """Concatenate the feature vectors of several backbones, split by split: ``{split: [n, dim1 + dim2 + ...]}``.

    The rows must be the same images in the same order (bottlenecks of one ``ImageSplits``).
    """
    splits = list(features[0])
    for f in features[1:]:
        if list(f) != splits or any(len(f[s]) != len(features[0][s]) for s in splits):
            raise ValueError("side_by_side needs the same splits with the same number of rows from every backbone")
    return {s: np.hstack([np.asarray(f[s], np.float32) for f in features]) for s in splits}


class CombinedBackbone:
    """Several backbones used as one: each sees the image at its own size, their vectors are concatenated.

    Has what ``helpers.retrain.export_saved_model`` needs from a ``Backbone``
    (``name``, ``id``, ``input_size`` -- the largest --, ``central_crop`` -- that one's --, ``feature_dim``, ``layer``),
    so a head trained on :func:`side_by_side` features exports like any other.
    """

    def __init__(self, *backbones):
        if len(backbones) < 2:
            raise ValueError("CombinedBackbone needs at least two backbones")
        self.backbones = backbones
        self.name = "+".join(b.name for b in backbones)
        self.id = "+".join(str(b.id) for b in backbones)
        self.input_size = max(int(b.input_size) for b in backbones)
        # Files are decoded once, at the largest size with that backbone's crop; the others resize from it.
        self.central_crop = float(getattr(max(backbones, key=lambda b: int(b.input_size)), "central_crop", 1.0))
        self.feature_dim = sum(int(b.feature_dim) for b in backbones)
        self.layer = _ConcatenatedLayers([b.layer for b in backbones], [int(b.input_size) for b in backbones])

    def features(self, images) -> np.ndarray:
        """``[n, feature_dim]``: each backbone's ``features`` (at its own input size), side by side."""
        import tensorflow as tf

        images = tf.convert_to_tensor(images, tf.float32)
        parts = [b.features(images if images.shape[1] == b.input_size
                            else tf.image.resize(images, [b.input_size] * 2, antialias=True))
                 for b in self.backbones]
        return np.hstack(parts)


def _ConcatenatedLayers(layers, sizes):
    """A ``tf.Module`` calling each layer on the images resized to its size, outputs concatenated."""
    import tensorflow as tf

    class ConcatenatedLayers(tf.Module):
        def __init__(self):
            super().__init__(name="concatenated_backbones")
            self.layers = list(layers)

        def __call__(self, images, training=False):
            outputs = []
            for layer, size in zip(self.layers, sizes):
                resized = images if images.shape[1] == size else tf.image.resize(images, [size, size], antialias=True)
                outputs.append(layer(resized, training=training))
            return tf.concat(outputs, axis=1)

    return ConcatenatedLayers()


def extraction_speed(backbone, paths) -> float:
    """Images per second through ``backbone`` (decoding included), measured on ``paths`` without the cache.

    The bottleneck cache makes a second run fast, so its timings say nothing about
    a first run; this measures the real cost on a few images (the first batch also
    pays for tracing the network, so use 64 or more).
    """
    from helpers.bottlenecks import compute_bottlenecks

    paths = list(paths)
    if not paths:
        raise ValueError("give at least one image path to time")
    compute_bottlenecks(paths[:8], backbone, progress=False, cache=False)  # warm-up: tracing, thread pools
    start = time.perf_counter()
    computed = compute_bottlenecks(paths, backbone, progress=False, cache=False)
    return len(computed) / (time.perf_counter() - start)


def random_split_files(paths, validation_percentage: float = 10, testing_percentage: float = 10,
                       seed: int = 42) -> dict:
    """The usual alternative to the hash rule: shuffle the list with a seed and cut it into three parts.

    Shown for contrast: add one file and the shuffle changes, so many files change split.
    """
    paths = list(paths)
    order = np.random.default_rng(seed).permutation(len(paths))
    n_val = int(round(len(paths) * validation_percentage / 100))
    n_test = int(round(len(paths) * testing_percentage / 100))
    parts = {"validation": order[:n_val], "testing": order[n_val:n_val + n_test],
             "training": order[n_val + n_test:]}
    return {split: [paths[i] for i in sorted(index)] for split, index in parts.items()}


def split_moves(before: dict, after: dict) -> int:
    """How many files present in ``before`` sit in another split in ``after`` (``{split: [paths]}`` each)."""
    where_before = {str(p): split for split, paths in before.items() for p in paths}
    where_after = {str(p): split for split, paths in after.items() for p in paths}
    return sum(where_after.get(p, split) != split for p, split in where_before.items())


def with_distorted(train_x, train_y, distorted) -> tuple[np.ndarray, np.ndarray]:
    """The cached training rows plus the distorted copies (``helpers.augment.DistortedFeatures``) of them.

    ``distorted.index`` points into the same training paths, so its labels are ``train_y[index]``.
    """
    train_y = np.asarray(train_y)
    return (np.concatenate([np.asarray(train_x, np.float32), distorted.features]),
            np.concatenate([train_y, train_y[distorted.index]]))


def per_class_table(report: dict):
    """``helpers.evaluation.per_class_report`` as a Markdown table: precision, recall, F1, support per class."""
    from IPython.display import Markdown

    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, m in report.items():
        lines.append(f"| {name} | {m['precision']:.1%} | {m['recall']:.1%} | {m['f1']:.1%} | {m['support']} |")
    return Markdown("\n".join(lines))


def best_on_validation(results: list[Result]) -> Result:
    """The option with the highest validation accuracy (the first on a tie): chosen without the test split."""
    return max(results, key=lambda r: r.accuracy["validation"][0])


# --------------------------------------------------------------------------- exercise checks
def _verdict(ok: bool, good: str, bad: str) -> bool:
    print(("Correct: " + good) if ok else ("Not yet: " + bad))
    return ok


def images_needed_for(accuracy: float, half_width: float, confidence: float = 0.95) -> int:
    """The smallest number of test images whose Wilson interval around ``accuracy`` is at most ``± half_width``."""
    from helpers.evaluation import wilson_interval

    n = 1
    while True:
        low, high = wilson_interval(int(round(accuracy * n)), n, confidence)
        if (high - low) / 2 <= half_width:
            return n
        n += 1 if n < 100 else max(1, n // 200)


def check_test_size(my_n, accuracy: float = 0.92, half_width: float = 0.01) -> bool:
    """Exercise check: is ``my_n`` (about) the number of test images that pins ``accuracy`` to ``± half_width``?"""
    if my_n is None:
        return _verdict(False, "", "set my_n to a number of test images.")
    needed = images_needed_for(accuracy, half_width)
    return _verdict(abs(int(my_n) - needed) <= 0.02 * needed,
                    f"about {needed:,} test images give a 95% interval of ±{half_width:.0%} around {accuracy:.0%}.",
                    f"{int(my_n):,} is off; try wilson_interval(round({accuracy} * n), n) for growing n.")


def check_lowest_recall(my_class, y_true, y_pred, classes) -> bool:
    """Exercise check: is ``my_class`` the class with the lowest recall on the given (validation) labels?"""
    from helpers.evaluation import per_class_report

    report = per_class_report(y_true, y_pred, classes)
    lowest = min(report, key=lambda name: report[name]["recall"])
    if my_class not in report:
        return _verdict(False, "", f"my_class must be one of {list(report)}.")
    return _verdict(report[my_class]["recall"] == report[lowest]["recall"],
                    f"{my_class} has the lowest validation recall ({report[my_class]['recall']:.1%}).",
                    f"{my_class} has recall {report[my_class]['recall']:.1%}; one class has less.")


def markdown_table(rows: list[dict]):
    """A list of dicts (same keys) as a Markdown table; floats below 1 shown as percentages."""
    from IPython.display import Markdown

    if not rows:
        return Markdown("(no rows)")
    keys = list(rows[0])

    def show(value):
        if isinstance(value, float):
            return f"{value:.1%}" if 0 <= value <= 1 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(show(row.get(k, "")) for k in keys) + " |" for row in rows]
    return Markdown("\n".join(lines))
