"""Evaluation helpers on inputs small enough to check by hand."""
import math

import numpy as np
import pytest

from helpers import evaluation


def test_wilson_interval_matches_hand_computed_values():
    # 8 of 10: Wilson 95% interval is (0.4902, 0.9433) (z = 1.95996).
    low, high = evaluation.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    # All correct: the upper end is 1 and the lower end is n / (n + z^2), not 1.
    low, high = evaluation.wilson_interval(20, 20)
    assert high == 1.0 and low == pytest.approx(20 / (20 + 1.959964**2), abs=1e-6)
    assert all(math.isnan(v) for v in evaluation.wilson_interval(0, 0))


def test_wilson_interval_agrees_with_scipy():
    from scipy.stats import binomtest

    ci = binomtest(37, 50).proportion_ci(confidence_level=0.9, method="wilson")
    assert evaluation.wilson_interval(37, 50, confidence=0.9) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_accuracy_with_ci():
    acc, low, high, n = evaluation.accuracy_with_ci([0, 1, 1, 2, 2], [0, 1, 2, 2, 2])
    assert (acc, n) == (0.8, 5)
    assert low < 0.8 < high
    acc, low, high, n = evaluation.accuracy_with_ci([], [])
    assert n == 0 and math.isnan(acc)


def test_empty_inputs_give_empty_reports_not_errors():
    assert evaluation.confusion([], [], 3).tolist() == [[0, 0, 0]] * 3
    assert evaluation.per_class_report([], [], ["a", "b"])["b"]["support"] == 0
    empty = evaluation.binary_metrics([], [])
    assert empty["n"] == 0 and math.isnan(empty["sensitivity"]) and empty["confusion_matrix"] == [[0, 0], [0, 0]]


def test_per_class_report_and_confusion():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 0, 1]
    report = evaluation.per_class_report(y_true, y_pred, ["a", "b", "c"])
    assert report["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert report["b"]["precision"] == pytest.approx(1 / 3) and report["b"]["recall"] == 0.5
    assert report["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    np.testing.assert_array_equal(evaluation.confusion(y_true, y_pred, 3), [[2, 1, 0], [1, 1, 0], [0, 1, 0]])
    # A class absent from both still gets its row and column.
    assert evaluation.confusion([0, 1], [0, 1], 4).shape == (4, 4)


def test_binary_metrics_by_hand():
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05]
    m = evaluation.binary_metrics(y, scores, threshold=0.5)
    # predicted positive: 0.9 0.8 0.6 (tp=3) and 0.7 (fp=1); fn=1 (0.3); tn=3
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert (m["sensitivity"], m["specificity"], m["ppv"], m["npv"], m["accuracy"]) == (0.75, 0.75, 0.75, 0.75, 0.75)
    # AUC: 14 of the 16 positive/negative pairs are ordered correctly (0.6 and 0.3 are below 0.7).
    assert m["auc"] == pytest.approx(14 / 16)
    strict = evaluation.binary_metrics(y, scores, threshold=0.75)
    assert strict["sensitivity"] == 0.5 and strict["specificity"] == 1.0
    one_class = evaluation.binary_metrics([1, 1], [0.2, 0.9])
    assert math.isnan(one_class["auc"]) and math.isnan(one_class["specificity"])


def test_choose_threshold_youden_and_sensitivity():
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05]
    # Youden's J: threshold 0.6 gives sens 0.75, spec 0.75 (J=0.5); 0.8 gives 0.5/1.0 (J=0.5); 0.3 gives 1.0/0.75 (J=0.75).
    assert evaluation.choose_threshold(y, scores) == pytest.approx(0.3)
    # Required sensitivity 0.5: the highest threshold reaching it is 0.8.
    assert evaluation.choose_threshold(y, scores, ("sensitivity", 0.5)) == pytest.approx(0.8)
    assert evaluation.choose_threshold(y, scores, "sensitivity:0.75") == pytest.approx(0.6)
    assert evaluation.choose_threshold(y, scores, ("sensitivity", 1.0)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="both classes"):
        evaluation.choose_threshold([1, 1], [0.3, 0.4])
    with pytest.raises(ValueError, match="unknown threshold rule"):
        evaluation.choose_threshold(y, scores, "best")
    with pytest.raises(ValueError, match="sensitivity:0.95"):
        evaluation.choose_threshold(y, scores, "sensitivity")
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        evaluation.choose_threshold(y, scores, ("sensitivity", 95))
