"""How good is the model, and how sure are we? Accuracy with an interval, per-class and medical metrics.

Every number here comes from scikit-learn's metrics; this module only adds
what the course needs around them:

- a Wilson 95% interval for an accuracy measured on ``n`` images, so that
  "92.3% (N=362)" is read as "somewhere between 89% and 95%";
- the two-class view used with chest X-rays: sensitivity, specificity, PPV,
  NPV and ROC AUC for a named positive class;
- a decision threshold chosen on the validation split (never on the test split),
  either by Youden's J or to reach a required sensitivity.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n``.

    Unlike the textbook ``p ± 1.96 sqrt(p(1-p)/n)`` it stays inside [0, 1] and
    is honest for small ``n`` and for proportions near 0 or 1. ``n == 0`` gives (nan, nan).
    """
    if n == 0:
        return float("nan"), float("nan")
    z = norm.ppf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def accuracy_with_ci(y_true, y_pred, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Accuracy and its Wilson interval: ``(accuracy, low, high, n)``.

    An empty input gives ``(nan, nan, nan, 0)`` rather than an error, so that a
    run with an empty split still reports the other splits.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(y_true)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    accuracy = float(accuracy_score(y_true, y_pred))
    low, high = wilson_interval(int(np.sum(y_true == y_pred)), n, confidence)
    return accuracy, low, high, n


def confusion(y_true, y_pred, n: int) -> np.ndarray:
    """Confusion matrix ``[n, n]``: row = true class, column = predicted class (all classes kept)."""
    if len(y_true) == 0:
        return np.zeros((n, n), dtype=np.int64)
    return confusion_matrix(y_true, y_pred, labels=list(range(n)))


def per_class_report(y_true, y_pred, classes: list[str]) -> dict:
    """Precision, recall, F1 and support per class name (a class never predicted gets precision 0)."""
    if len(y_true) == 0:
        precision = recall = f1 = support = np.zeros(len(classes))
    else:
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=list(range(len(classes))), zero_division=0
        )
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }


def _safe_ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def binary_metrics(y_true, positive_scores, threshold: float = 0.5) -> dict:
    """Two-class metrics when "positive" means ``positive_scores >= threshold``.

    ``y_true`` is 1 for the positive class (e.g. PNEUMONIA) and 0 otherwise;
    ``positive_scores`` is the model's probability of the positive class.
    Returns accuracy, sensitivity (recall of positives), specificity (recall
    of negatives), PPV, NPV, ROC AUC (threshold-free; nan when one class is
    absent), the threshold and the confusion matrix ``[[tn, fp], [fn, tp]]``.
    """
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(positive_scores, dtype=float)
    y_pred = (scores >= threshold).astype(int)
    (tn, fp), (fn, tp) = confusion(y_true, y_pred, 2)
    both_present = len(np.unique(y_true)) == 2
    return {
        "threshold": float(threshold),
        "n": len(y_true),
        "accuracy": _safe_ratio(tp + tn, len(y_true)),
        "sensitivity": _safe_ratio(tp, tp + fn),
        "specificity": _safe_ratio(tn, tn + fp),
        "ppv": _safe_ratio(tp, tp + fp),
        "npv": _safe_ratio(tn, tn + fn),
        "auc": float(roc_auc_score(y_true, scores)) if both_present else float("nan"),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def choose_threshold(y_true, positive_scores, rule="youden") -> float:
    """Pick the decision threshold on the VALIDATION split (choosing it on test would flatter it).

    ``rule="youden"`` maximises Youden's J = sensitivity + specificity - 1 over
    the ROC curve's thresholds. ``rule=("sensitivity", 0.95)`` returns the
    highest threshold whose sensitivity reaches 0.95 (so specificity is as high
    as that allows). A rule given as the string ``"sensitivity:0.95"`` works too.
    Needs both classes in ``y_true``.
    """
    y_true = np.asarray(y_true).astype(int)
    if len(np.unique(y_true)) < 2:
        raise ValueError("choose_threshold needs both classes in y_true (here fewer than two are present)")
    fpr, tpr, thresholds = roc_curve(
        y_true, np.asarray(positive_scores, dtype=float), drop_intermediate=False
    )
    thresholds = np.minimum(thresholds, 1.0)  # roc_curve's first threshold is +inf
    if isinstance(rule, str) and rule.startswith("sensitivity"):
        try:
            rule = ("sensitivity", float(rule.partition(":")[2]))
        except ValueError:
            raise ValueError(f"threshold rule {rule!r}: write it as 'sensitivity:0.95'") from None
    if isinstance(rule, tuple) and not 0 < rule[1] <= 1:
        raise ValueError(f"the required sensitivity must be in (0, 1], not {rule[1]}")
    if rule == "youden":
        return float(thresholds[np.argmax(tpr - fpr)])
    if isinstance(rule, tuple) and rule[0] == "sensitivity":
        reaching = np.flatnonzero(tpr >= rule[1])  # tpr grows as the threshold falls
        return float(thresholds[reaching[0]])
    raise ValueError(f"unknown threshold rule {rule!r}: use 'youden' or ('sensitivity', 0.95)")
