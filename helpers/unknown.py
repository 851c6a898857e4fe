"""Letting a closed-set model answer "unknown": scores, a thresholded rule, calibration.

A classifier trained on five flowers has five possible answers. Shown a
daffodil or a chest X-ray it still picks one of them, often with a high
softmax probability. This module gives it a sixth answer. Every score here
follows one convention: **higher means "looks like what I was trained on"**.

Scores from the final layer's logits (they see only what the classifier sees):

- ``max_softmax`` / ``MaxSoftmaxScore`` -- the largest softmax probability
  (Hendrycks & Gimpel, 2017). Low when the classifier hesitates between
  classes, so it catches *near* unknowns that fall between classes; blind to
  an input far from everything that still lands deep inside one class's region.
- ``energy`` / ``EnergyScore`` -- ``T * logsumexp(logits / T)``, the negative
  free energy (Liu et al., 2020). Like the softmax score but it keeps the
  logits' magnitude, which the softmax normalises away.

Scores from the bottleneck features (they see where an image lies):

- ``MahalanobisScore`` -- minus the smallest Mahalanobis distance to a class
  mean, with one covariance shared by all classes (Lee et al., 2018); with
  1280 dimensions and a few thousand images the covariance is shrunk
  (Ledoit-Wolf) so that its inverse is stable.
- ``KNNScore`` -- minus the cosine distance to the k-th nearest training
  feature (Sun et al., 2022). No assumption about the shape of the classes.

Far unknowns (an X-ray for a flower model) sit far from every training
feature, so the feature-space scores catch them; near unknowns (a daffodil)
sit among the training flowers but between classes, where the classifier's
own hesitation is the better signal. ``UnknownDetector`` turns any score, or a
combination such as ``"knn+energy"`` (each part standardised on known validation
images; an image must pass every part), into a rule
whose threshold is chosen on known validation images only: it accepts
at least ``accept_fraction`` of known images (0.95 by default, guaranteed
with 90% confidence). It is saved beside the exported
model as ``unknown_rule.json`` + ``unknown_rule.npz``.

Also here: ``ood_metrics`` (ROC AUC and the false-positive rate at 95% true
positives, the field's two standard numbers), ``TemperatureScaler`` and
``expected_calibration_error`` / ``reliability_curve`` for calibration, and
``accuracy_vs_accepted`` for the accept/reject trade-off.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp, softmax
from scipy.stats import beta
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.neighbors import NearestNeighbors

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "RULE_FILES",
    "EnergyScore",
    "KNNScore",
    "MahalanobisScore",
    "MaxSoftmaxScore",
    "TemperatureScaler",
    "UnknownDetector",
    "acceptance_threshold",
    "accuracy_vs_accepted",
    "compare_methods",
    "energy",
    "expected_calibration_error",
    "leave_one_class_out",
    "load_detector",
    "max_softmax",
    "ood_metrics",
    "reliability_curve",
]

#: Names of the single scores ``UnknownDetector`` understands; join them with "+" to combine.
METHODS = ("msp", "energy", "mahalanobis", "knn")
#: The rule ``retrain`` stores unless told otherwise (see ``UnknownDetector``).
DEFAULT_METHOD = "knn+energy"
#: File names of a saved rule inside a model folder.
RULE_FILES = ("unknown_rule.json", "unknown_rule.npz")
FORMAT_VERSION = 1


# ---------------------------------------------------------------- input checks

def _as_matrix(values, name: str) -> np.ndarray:
    """``values`` as a finite float 2-D array, or a ValueError that says what is wrong."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n_images, n], got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty: no images to score")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _check_dim(array: np.ndarray, expected: int, name: str) -> None:
    if array.shape[1] != expected:
        raise ValueError(f"{name} has {array.shape[1]} columns but the score was fitted on {expected}")


def _l2_normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


# ---------------------------------------------------------------- logit scores

def max_softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Largest softmax probability of each row of ``logits`` ``[n, classes]`` -> ``[n]``."""
    logits = _as_matrix(logits, "logits")
    return softmax(logits / temperature, axis=1).max(axis=1)


def energy(logits, temperature: float = 1.0) -> np.ndarray:
    """Negative energy ``T * logsumexp(logits / T)`` of each row -> ``[n]`` (higher = more known).

    It needs the logits themselves: probabilities have lost the overall scale
    (``logsumexp(log p)`` is always 0).
    """
    logits = _as_matrix(logits, "logits")
    return temperature * logsumexp(logits / temperature, axis=1)


class MaxSoftmaxScore:
    """The maximum softmax probability as an estimator: ``fit`` learns nothing, ``score(logits)``."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def fit(self, logits=None, y=None) -> MaxSoftmaxScore:
        return self

    def score(self, logits) -> np.ndarray:
        return max_softmax(logits, self.temperature)


class EnergyScore(MaxSoftmaxScore):
    """The negative energy ``T * logsumexp(logits / T)`` as an estimator: ``score(logits)``."""

    def score(self, logits) -> np.ndarray:
        return energy(logits, self.temperature)


# ---------------------------------------------------------------- feature scores

class MahalanobisScore:
    """Minus the smallest Mahalanobis distance (squared) from a feature vector to a class mean.

    ``fit(X, y)`` computes one mean per class and one covariance of the
    features around their own class mean, shared by all classes.
    ``covariance`` chooses the estimator: ``"ledoit_wolf"`` (default, shrunk
    towards a scaled identity -- needed when the dimension, 1280, is not small
    next to the number of images), ``"empirical"`` (plain; unstable in high
    dimension) or ``"identity"`` (plain Euclidean distance, for comparison).
    ``normalize=True`` first scales every vector to unit length, which removes
    the overall brightness-like scale of the features and usually helps.
    """

    def __init__(self, covariance: str = "ledoit_wolf", normalize: bool = True):
        if covariance not in ("ledoit_wolf", "empirical", "identity"):
            raise ValueError(f"covariance must be 'ledoit_wolf', 'empirical' or 'identity', not {covariance!r}")
        self.covariance = covariance
        self.normalize = normalize

    def _prepare(self, features) -> np.ndarray:
        features = _as_matrix(features, "features")
        return _l2_normalise(features) if self.normalize else features

    def fit(self, X, y) -> MahalanobisScore:
        X = self._prepare(X)
        y = np.asarray(y)
        if y.shape != (len(X),):
            raise ValueError(f"labels must be a vector of {len(X)} class indices, got shape {y.shape}")
        self.classes_ = np.unique(y)
        self.means_ = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
        centred = X - self.means_[np.searchsorted(self.classes_, y)]
        if self.covariance == "identity":
            self.precision_ = np.eye(X.shape[1])
        else:
            estimator = LedoitWolf if self.covariance == "ledoit_wolf" else EmpiricalCovariance
            self.precision_ = estimator(assume_centered=True).fit(centred).get_precision()
        return self

    def distances(self, X) -> np.ndarray:
        """Squared Mahalanobis distance of each row to each class mean ``[n, classes]``."""
        X = self._prepare(X)
        _check_dim(X, self.means_.shape[1], "features")
        out = np.empty((len(X), len(self.means_)))
        for j, mean in enumerate(self.means_):
            diff = X - mean
            out[:, j] = np.einsum("ij,ij->i", diff @ self.precision_, diff)
        return out

    def score(self, X) -> np.ndarray:
        return -self.distances(X).min(axis=1)


class KNNScore:
    """Minus the cosine distance to the ``k``-th nearest training feature vector.

    ``fit(X)`` keeps the training features (L2-normalised) as a bank searched
    with scikit-learn's ``NearestNeighbors``. Taking the k-th neighbour rather
    than the first makes the score robust to a single near-duplicate. ``k`` is
    reduced to the bank's size when the bank is smaller.
    """

    def __init__(self, k: int = 10):
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = int(k)

    def fit(self, X, y=None) -> KNNScore:
        self.bank_ = _l2_normalise(_as_matrix(X, "features")).astype(np.float32)
        self.k_ = min(self.k, len(self.bank_))
        self.index_ = NearestNeighbors(n_neighbors=self.k_, metric="cosine", algorithm="brute")
        self.index_.fit(self.bank_)
        return self

    def score(self, X) -> np.ndarray:
        X = _l2_normalise(_as_matrix(X, "features")).astype(np.float32)
        _check_dim(X, self.bank_.shape[1], "features")
        distances, _ = self.index_.kneighbors(X, n_neighbors=self.k_)
        return -distances[:, -1].astype(np.float64)


# ---------------------------------------------------------------- the rule

def _parse_method(method: str) -> list[str]:
    parts = [p.strip().lower() for p in str(method).split("+") if p.strip()]
    bad = [p for p in parts if p not in METHODS]
    if not parts or bad or len(set(parts)) != len(parts):
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}, "
                         "or several joined with '+' (for example 'knn+msp')")
    return parts


def acceptance_threshold(val_scores, accept_fraction: float = 0.95, confidence: float | None = 0.9) -> float:
    """The score threshold that accepts ``accept_fraction`` of known images, from known validation scores.

    ``confidence=None``: the plain ``1 - accept_fraction`` quantile, so that
    ``accept_fraction`` of the *validation* images pass; a new set of known
    images then passes at about that rate, below it half of the time.
    ``confidence=0.9``: the highest validation score ``s`` such that, with
    probability 0.9, at least ``accept_fraction`` of *new* known images score
    ``>= s`` (a distribution-free bound: the share of new images above the
    r-th smallest of n scores follows Beta(n - r + 1, r) whatever the score).
    It accepts a little more than ``accept_fraction`` of the validation images.
    With too few validation images for that guarantee the lowest score is used,
    with a warning.
    """
    scores = np.sort(np.asarray(val_scores, dtype=float).ravel())
    if len(scores) == 0:
        raise ValueError("no validation scores: the threshold needs known validation images")
    if confidence is None:
        return float(np.quantile(scores, 1 - accept_fraction))
    n = len(scores)
    rank = np.arange(1, n + 1)  # accept scores >= the rank-th smallest
    guaranteed = beta.sf(accept_fraction, n - rank + 1, rank) >= confidence
    if not guaranteed.any():
        import warnings

        warnings.warn(f"{n} validation images are too few to guarantee accepting {accept_fraction:.0%} of "
                      f"known images with {confidence:.0%} confidence; using the lowest validation score",
                      stacklevel=2)
        return float(scores[0])
    return float(scores[rank[guaranteed].max() - 1])


def _tail_scale(scores: np.ndarray) -> float:
    """How far a score's lower tail reaches on known images: median minus the 5% quantile.

    Dividing by it puts every part's own 5% quantile at -1, so a score whose
    known values are squeezed against 1 (the softmax) and one spread widely
    (a distance) get the same say in a combination.
    """
    spread = float(np.median(scores) - np.quantile(scores, 0.05))
    return spread if spread > 1e-12 else float(np.std(scores)) or 1.0


class UnknownDetector:
    """A rule that answers "known" or "unknown" for each image, with its threshold.

    ``method`` is one of ``"msp"``, ``"energy"``, ``"mahalanobis"``, ``"knn"``,
    or several joined with ``"+"``. For a combination each part is
    standardised on the known validation images -- minus its median, divided
    by the distance from its median to its 5% quantile, so each part's 5%
    quantile sits at -1 -- and the combined score is the smallest of them
    (``combine="min"``): an image is accepted only when every part accepts
    it, so a confident softmax can never vouch for a feature vector unlike any
    training image. ``combine="mean"`` averages the parts instead: a little
    better on near unknowns (mean ROC AUC 0.81 against 0.79 on the left-out
    flower classes) but a confident softmax then offsets a distance, which on
    a small model (20 images per class) let 15% of chest X-rays through.

    The default, ``"knn+energy"``, pairs a feature-space distance (catches far
    unknowns: X-rays shown to a flower model) with the size of the classifier's
    evidence (catches near unknowns: a flower that fits no known class well).
    Its parts and ``k`` were chosen by the mean ROC AUC over the five "leave
    one flower class out" models -- known images only, one class playing the
    unknown -- never on daffodils or X-rays: with the full data and Lite0,
    knn+energy 0.789, knn+msp 0.786, knn alone 0.765, energy alone 0.744
    (``scripts/benchmark_unknown.py`` reports the figures and which rule the
    criterion picks). The two combined rules are close on that criterion;
    measured afterwards, knn+energy also accepted more of the X-ray model's
    official test films (98.2% against 93.9%), whose softmax hesitates more
    than on the validation films it was fitted on.

    ``fit`` chooses the threshold on known VALIDATION images only (see
    ``acceptance_threshold``): at least ``accept_fraction`` of new known
    images are accepted, with probability ``confidence``; no unknown image is
    ever needed. Training images cannot be used for this: the kNN score of a
    training image finds the image itself in the bank. ``k`` is the kNN
    score's neighbour (1: the nearest training image, which separated a
    left-out flower class best in the course's experiments).
    """

    def __init__(self, method: str = DEFAULT_METHOD, accept_fraction: float = 0.95, k: int = 1,
                 covariance: str = "ledoit_wolf", confidence: float | None = 0.9, combine: str = "min"):
        self.parts = _parse_method(method)
        self.method = "+".join(self.parts)
        if not 0 < float(accept_fraction) <= 1:
            raise ValueError(f"accept_fraction must be in (0, 1], got {accept_fraction}")
        self.accept_fraction = float(accept_fraction)
        if confidence is not None and not 0 < float(confidence) < 1:
            raise ValueError(f"confidence must be in (0, 1) or None, got {confidence}")
        self.confidence = None if confidence is None else float(confidence)
        if combine not in ("min", "mean"):
            raise ValueError(f"combine must be 'min' or 'mean', not {combine!r}")
        self.combine = combine
        self.k = int(k)
        self.covariance = covariance

    def __repr__(self) -> str:
        fitted = f", threshold={self.threshold_:.4g}" if hasattr(self, "threshold_") else ""
        return f"UnknownDetector(method={self.method!r}, accept_fraction={self.accept_fraction}{fitted})"

    @property
    def needs_logits(self) -> bool:
        """True when the rule uses the final layer's logits (msp, energy)."""
        return any(p in ("msp", "energy") for p in self.parts)

    def _make_scorer(self, part: str):
        if part == "msp":
            return MaxSoftmaxScore()
        if part == "energy":
            return EnergyScore()
        if part == "mahalanobis":
            return MahalanobisScore(covariance=self.covariance)
        return KNNScore(k=self.k)

    def fit(self, train_features, train_labels, val_features, val_logits=None) -> UnknownDetector:
        """Fit the feature-space scores on training images, standardise and threshold on validation.

        ``train_features`` ``[n, dim]`` and ``train_labels`` ``[n]`` (class
        indices) come from the training split; ``val_features`` ``[m, dim]`` and
        ``val_logits`` ``[m, classes]`` (needed by msp and energy) from the
        known validation split.
        """
        if self.needs_logits and val_logits is None:
            raise ValueError(f"method {self.method!r} needs val_logits (the final layer's logits "
                             "on the validation images)")
        self.scorers_ = {}
        for part in self.parts:
            scorer = self._make_scorer(part)
            self.scorers_[part] = scorer.fit(train_features, train_labels)
        raw = self._raw_scores(val_features, val_logits)
        self.centre_ = {p: float(np.median(s)) for p, s in raw.items()}
        self.scale_ = {p: _tail_scale(s) for p, s in raw.items()}
        val_scores = self._combine(raw)
        self.threshold_ = acceptance_threshold(val_scores, self.accept_fraction, self.confidence)
        self.n_validation_ = len(val_scores)
        return self

    def _raw_scores(self, features, logits) -> dict[str, np.ndarray]:
        if not hasattr(self, "scorers_"):
            raise RuntimeError("this UnknownDetector is not fitted yet: call fit(...) or load_detector(...)")
        if self.needs_logits and logits is None:
            raise ValueError(f"method {self.method!r} needs the final layer's logits, not only features")
        scores = {}
        for part, scorer in self.scorers_.items():
            inputs = logits if part in ("msp", "energy") else features
            scores[part] = scorer.score(inputs)
        lengths = {len(s) for s in scores.values()}
        if len(lengths) != 1:
            raise ValueError("features and logits describe different numbers of images")
        return scores

    def _combine(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        if len(self.parts) == 1:
            return raw[self.parts[0]]
        standardised = [self._standardise(p, s) for p, s in raw.items()]
        return np.min(standardised, axis=0) if self.combine == "min" else np.mean(standardised, axis=0)

    def _standardise(self, part: str, values: np.ndarray) -> np.ndarray:
        return (values - self.centre_[part]) / self.scale_[part]

    def score(self, features, logits=None) -> np.ndarray:
        """The rule's score for each image ``[n]``: higher = more like the known classes."""
        return self._combine(self._raw_scores(features, logits))

    def part_scores(self, features, logits=None) -> dict[str, np.ndarray]:
        """Each part's score, standardised on validation for a combination (says which part rejected)."""
        raw = self._raw_scores(features, logits)
        if len(self.parts) == 1:
            return raw
        return {p: self._standardise(p, s) for p, s in raw.items()}

    def is_known(self, features, logits=None) -> np.ndarray:
        """Boolean ``[n]``: True where the image is accepted as one of the known classes."""
        return self.score(features, logits) >= self.threshold_

    # ------------------------------------------------------------ storage

    def to_dict(self, bank_dtype: str = "float16") -> tuple[dict, dict[str, np.ndarray]]:
        """The fitted rule as ``(config, arrays)``: a JSON-ready dict and named NumPy arrays.

        The kNN bank (every training feature vector) is the large part: stored
        as float16 by default (half the size; the scores change by about 1e-3
        of their spread, see the tests) -- pass ``bank_dtype="float32"`` to keep it exact.
        """
        if not hasattr(self, "threshold_"):
            raise RuntimeError("fit the UnknownDetector before saving it")
        config = {
            "format_version": FORMAT_VERSION, "method": self.method,
            "accept_fraction": self.accept_fraction, "confidence": self.confidence, "k": self.k,
            "covariance": self.covariance, "combine": self.combine,
            "threshold": self.threshold_, "centre": self.centre_, "scale": self.scale_,
            "n_validation": self.n_validation_,
        }
        arrays = {}
        if "mahalanobis" in self.scorers_:
            scorer = self.scorers_["mahalanobis"]
            arrays.update(mahalanobis_means=scorer.means_.astype(np.float32),
                          mahalanobis_precision=scorer.precision_.astype(np.float32),
                          mahalanobis_classes=scorer.classes_)
            config["mahalanobis_normalize"] = scorer.normalize
        if "knn" in self.scorers_:
            arrays["knn_bank"] = self.scorers_["knn"].bank_.astype(bank_dtype)
        return config, arrays

    @classmethod
    def from_dict(cls, config: dict, arrays: dict) -> UnknownDetector:
        """Rebuild a fitted rule from ``to_dict``'s output (no refitting, same scores)."""
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unknown-rule format {config.get('format_version')!r} is not "
                             f"{FORMAT_VERSION}: re-run retrain to store the rule again")
        detector = cls(config["method"], config["accept_fraction"], config["k"], config["covariance"],
                       config["confidence"], config["combine"])
        detector.scorers_ = {}
        for part in detector.parts:
            scorer = detector._make_scorer(part)
            if part == "mahalanobis":
                scorer.normalize = bool(config["mahalanobis_normalize"])
                scorer.means_ = np.asarray(arrays["mahalanobis_means"], np.float64)
                scorer.precision_ = np.asarray(arrays["mahalanobis_precision"], np.float64)
                scorer.classes_ = np.asarray(arrays["mahalanobis_classes"])
            elif part == "knn":
                scorer.fit(np.asarray(arrays["knn_bank"], np.float32))
            detector.scorers_[part] = scorer
        detector.threshold_ = float(config["threshold"])
        detector.centre_ = {p: float(v) for p, v in config["centre"].items()}
        detector.scale_ = {p: float(v) for p, v in config["scale"].items()}
        detector.n_validation_ = int(config["n_validation"])
        return detector

    def save(self, directory, bank_dtype: str = "float16") -> list[Path]:
        """Write ``unknown_rule.json`` and ``unknown_rule.npz`` into ``directory``; returns the paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config, arrays = self.to_dict(bank_dtype)
        json_path, npz_path = (directory / name for name in RULE_FILES)
        json_path.write_text(json.dumps(config, indent=2, sort_keys=True))
        np.savez(npz_path, **arrays)
        return [json_path, npz_path]


def load_detector(directory) -> UnknownDetector | None:
    """The rule saved in ``directory`` by ``UnknownDetector.save``, or None when there is none.

    A model exported without a rule (``unknown_rule.json`` missing, or holding
    ``{"unknown_rule": null}``) gives None: that model answers only its classes.
    """
    json_path, npz_path = (Path(directory) / name for name in RULE_FILES)
    if not json_path.exists():
        return None
    config = json.loads(json_path.read_text())
    if config.get("unknown_rule", config) is None:
        return None
    if not npz_path.exists():
        raise FileNotFoundError(f"{json_path} names an unknown rule but {npz_path.name} is missing beside it")
    with np.load(npz_path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    return UnknownDetector.from_dict(config, arrays)


# ---------------------------------------------------------------- evaluation

def ood_metrics(known_scores, unknown_scores) -> dict[str, float]:
    """How well a score separates known from unknown images (higher score = known).

    ``auroc``: the probability that a random known image scores higher than a
    random unknown one (1 = perfect, 0.5 = chance). ``fpr_at_95_tpr``: the
    fraction of unknown images still accepted when the threshold accepts 95%
    of the known ones (0 = perfect).
    """
    known = np.asarray(known_scores, dtype=float).ravel()
    unknown = np.asarray(unknown_scores, dtype=float).ravel()
    if len(known) == 0 or len(unknown) == 0:
        raise ValueError("ood_metrics needs at least one known and one unknown score")
    y = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    scores = np.r_[known, unknown]
    fpr, tpr, _ = roc_curve(y, scores)
    return {"auroc": float(roc_auc_score(y, scores)),
            "fpr_at_95_tpr": float(fpr[np.argmax(tpr >= 0.95)])}


def compare_methods(methods, train_features, train_labels, val_features, val_logits, known, unknowns: dict,
                    **detector_options) -> dict[str, dict[str, dict[str, float]]]:
    """``ood_metrics`` of several rules on several kinds of unknown images: ``{method: {set: metrics}}``.

    Every rule is fitted the same way (training features, known validation
    features and logits); ``known`` is ``(features, logits)`` of known test
    images and ``unknowns`` maps a name to the ``(features, logits)`` of images
    from no known class. Each entry also holds ``rejected``: the fraction of
    that set the rule answers "unknown" at its threshold, and the
    ``known_accepted`` fraction of the known test images.
    """
    table = {}
    for method in methods:
        detector = UnknownDetector(method, **detector_options).fit(
            train_features, train_labels, val_features, val_logits)
        known_scores = detector.score(*known)
        accepted = float(np.mean(known_scores >= detector.threshold_))
        table[detector.method] = {}
        for name, (features, logits) in unknowns.items():
            unknown_scores = detector.score(features, logits)
            table[detector.method][name] = {
                **ood_metrics(known_scores, unknown_scores),
                "rejected": float(np.mean(unknown_scores < detector.threshold_)),
                "known_accepted": accepted,
            }
    return table


def leave_one_class_out(bottlenecks: dict, left_out: int, **train_options) -> dict:
    """A near-unknown experiment from known data only: retrain the head without one class.

    ``bottlenecks`` is ``retrain``'s ``{split: Bottlenecks}`` (features and
    labels). The head is trained (``retrain.train_final_layer``, options passed
    on, e.g. ``how_many_training_steps``) on the other classes, renumbered
    ``0..n-2``. Returns a dict: ``head``, ``kept`` (original class indices in
    the new order), ``train`` ``(features, labels)``, ``validation``
    ``(features, logits)``, ``known`` ``(features, logits)`` of the kept
    classes' test images, and ``unknown`` ``(features, logits)`` of every image
    of the left-out class, from all splits (the head never saw any of them).
    """
    from helpers.retrain import train_final_layer

    labels = {split: np.asarray(b.labels) for split, b in bottlenecks.items()}
    n_classes = int(max(y.max() for y in labels.values() if len(y))) + 1
    if not 0 <= left_out < n_classes or n_classes < 3:
        raise ValueError(f"left_out must be a class index in 0..{n_classes - 1}, and at least 3 classes are needed")
    kept = [c for c in range(n_classes) if c != left_out]
    keep = {split: y != left_out for split, y in labels.items()}
    x = {split: b.features[keep[split]] for split, b in bottlenecks.items()}
    y = {split: np.searchsorted(kept, labels[split][keep[split]]) for split in bottlenecks}
    train_options.setdefault("progress", False)
    head = train_final_layer(x["training"], y["training"], x["validation"], y["validation"], len(kept),
                             **train_options)
    unknown_x = np.concatenate([b.features[~keep[split]] for split, b in bottlenecks.items()])
    return {"head": head, "kept": kept, "train": (x["training"], y["training"]),
            "validation": (x["validation"], head.logits(x["validation"])),
            "known": (x["testing"], head.logits(x["testing"])), "unknown": (unknown_x, head.logits(unknown_x))}


def accuracy_vs_accepted(scores, correct) -> tuple[np.ndarray, np.ndarray]:
    """The accept/reject trade-off on known images: ``(fraction_accepted, accuracy_on_accepted)``.

    Images are accepted from the highest score down; point ``i`` is what you
    get when the ``i + 1`` most typical images are accepted and the rest
    answered "unknown". ``correct`` is True where the classifier's answer is right.
    """
    scores = np.asarray(scores, dtype=float).ravel()
    correct = np.asarray(correct, dtype=float).ravel()
    if len(scores) != len(correct) or len(scores) == 0:
        raise ValueError("scores and correct must be non-empty and of the same length")
    order = np.argsort(-scores, kind="stable")
    accepted = np.arange(1, len(scores) + 1)
    return accepted / len(scores), np.cumsum(correct[order]) / accepted


# ---------------------------------------------------------------- calibration

class TemperatureScaler:
    """Temperature scaling (Guo et al., 2017): one number T that divides the logits.

    ``fit(logits, y)`` picks the T that minimises the negative log-likelihood
    on (validation) images; T > 1 softens an over-confident model. The
    predicted class never changes, only how sure the model says it is.
    """

    def __init__(self, bounds: tuple[float, float] = (0.05, 20.0)):
        self.bounds = bounds

    def fit(self, logits, y) -> TemperatureScaler:
        logits = _as_matrix(logits, "logits")
        y = np.asarray(y, dtype=int)
        if y.shape != (len(logits),):
            raise ValueError(f"y must be a vector of {len(logits)} class indices, got shape {y.shape}")

        def nll(log_t):
            return -log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean()

        low, high = np.log(self.bounds)
        result = minimize_scalar(nll, bounds=(low, high), method="bounded")
        self.temperature_ = float(np.exp(result.x))
        return self

    def transform(self, logits) -> np.ndarray:
        return _as_matrix(logits, "logits") / self.temperature_

    def predict_proba(self, logits) -> np.ndarray:
        return softmax(self.transform(logits), axis=1)


def reliability_curve(y_true, probabilities, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Confidence vs accuracy in ``n_bins`` equal-width bins of the top probability.

    Returns ``confidence`` (mean top probability), ``accuracy`` (fraction
    right) and ``count`` per non-empty bin, plus the ``edges``. A calibrated
    model has accuracy equal to confidence in every bin.
    """
    probabilities = _as_matrix(probabilities, "probabilities")
    y_true = np.asarray(y_true, dtype=int)
    if y_true.shape != (len(probabilities),):
        raise ValueError(f"y_true must be a vector of {len(probabilities)} class indices")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    keep = count > 0
    mean_conf = np.bincount(bins, confidence, n_bins)[keep] / count[keep]
    accuracy = np.bincount(bins, correct, n_bins)[keep] / count[keep]
    return {"confidence": mean_conf, "accuracy": accuracy, "count": count[keep], "edges": edges}


def expected_calibration_error(y_true, probabilities, n_bins: int = 15) -> float:
    """ECE: the gap |accuracy - confidence| averaged over bins, weighted by how many images each holds."""
    curve = reliability_curve(y_true, probabilities, n_bins)
    weights = curve["count"] / curve["count"].sum()
    return float(np.sum(weights * np.abs(curve["accuracy"] - curve["confidence"])))
