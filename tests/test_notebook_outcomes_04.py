"""Notebook 4 (chest X-rays) in its quick setting reaches what its subset honestly can.

The notebook is executed headless (``COURSE_QUICK=1``: 40 images per class and
split, 1,000 training steps), then one extra cell reads its variables. The
bottleneck cache is shared with the nbval run of the same notebook, so the
second execution mostly reads cached vectors.

Levels asserted (measured on the subset: leaky and honest AUC about 0.9-1.0,
accuracies 80-95%) leave room for the subset's noise (N=80 test images: a 95%
interval is about +-8 points) while still failing for a broken pipeline: a
model that always says PNEUMONIA scores 50% on the balanced subset and AUC 0.5.
"""
import pytest

from tests.notebook_support import run_and_read_outcomes

NOTEBOOK = "04_chest_xrays.ipynb"

READ_OUTCOMES = '''
import json
_m = lambda d: {k: d[k] for k in ("accuracy", "sensitivity", "specificity", "auc", "n", "threshold")}
print("OUTCOMES" + json.dumps({
    "quick": QUICK,
    "counts": splits.counts(),
    "article_split_test": len(article_test),
    "shared_with_training": len(shared),
    "leaky": _m(leaky.metrics["binary"]["test_at_0.5"]),
    "plain_validation_auc": evaluation.binary_metrics(
        plain.bottlenecks["validation"].labels,
        plain.final_layer.predict_proba(plain.bottlenecks["validation"].features)[:, 1])["auc"],
    "binary_keys": sorted(binary),
    "threshold": threshold,
    "threshold_note": binary["threshold_note"],
    "test_at_0.5": _m(binary["test_at_0.5"]),
    "test_at_threshold": _m(binary["test_at_threshold"]),
    "metrics_json": json.loads(open(weighted.paths["metrics_json"]).read())["binary"]["threshold"],
    "patients_in_training_and_validation": len(train_ids & val_ids),
    "keras_gap": float(gap),
    "map_shapes": [list(m.shape) for m in maps],
    "map_ranges": [[float(m.min()), float(m.max())] for m in maps],
    "occlusion_shape": list(hidden.shape),
    "occlusion_max": float(hidden.max()),
    "exercise_threshold": my_threshold,
    "exercise_leaks": len({patient(p) for p in my_splits["testing"]} & {patient(p) for p in my_splits["training"]}),
}))
'''


@pytest.fixture(scope="module")
def outcomes():
    return run_and_read_outcomes(NOTEBOOK, READ_OUTCOMES)


pytestmark = pytest.mark.slow


def test_runs_in_the_quick_setting(outcomes):
    assert outcomes["quick"] is True
    counts = outcomes["counts"]  # the full lists, shown even in the quick setting
    assert counts["NORMAL"]["training"] + counts["NORMAL"]["validation"] == 1341
    assert counts["PNEUMONIA"]["training"] + counts["PNEUMONIA"]["validation"] == 3875
    assert (counts["NORMAL"]["testing"], counts["PNEUMONIA"]["testing"]) == (234, 390)


def test_the_random_file_split_shares_patients_between_training_and_test(outcomes):
    # The article's split of all 5,856 files: about 10% in test, and many of those have a sibling in training.
    assert 450 <= outcomes["article_split_test"] <= 720
    assert 0.2 * outcomes["article_split_test"] <= outcomes["shared_with_training"] < outcomes["article_split_test"]


def test_the_honest_split_keeps_patients_apart(outcomes):
    assert outcomes["patients_in_training_and_validation"] == 0
    assert outcomes["exercise_leaks"] == 0


def test_leaky_and_honest_models_beat_the_majority_rule_on_the_subset(outcomes):
    leaky, honest = outcomes["leaky"], outcomes["test_at_0.5"]
    assert leaky["n"] == 80 and honest["n"] == 80           # 40 per class: always-PNEUMONIA scores 50%
    assert leaky["auc"] >= 0.90 and leaky["accuracy"] >= 0.80
    assert honest["auc"] >= 0.85 and honest["accuracy"] >= 0.72
    assert outcomes["plain_validation_auc"] >= 0.85
    for m in (leaky, honest, outcomes["test_at_threshold"]):
        assert m["sensitivity"] >= 0.5 and m["specificity"] >= 0.4, m


def test_retrain_reports_the_validation_threshold_and_test_metrics_at_both(outcomes):
    assert {"threshold", "threshold_note", "test_at_0.5", "test_at_threshold", "validation_at_threshold"} <= set(
        outcomes["binary_keys"])
    assert "validation" in outcomes["threshold_note"]
    assert 0.0 < outcomes["threshold"] < 1.0
    assert outcomes["test_at_threshold"]["threshold"] == pytest.approx(outcomes["threshold"])
    assert outcomes["metrics_json"] == pytest.approx(outcomes["threshold"])
    assert 0.0 < outcomes["exercise_threshold"] <= 1.0


def test_gradcam_runs_on_the_same_features_the_head_was_trained_on(outcomes):
    assert outcomes["keras_gap"] < 1e-3
    assert outcomes["map_shapes"] and all(shape == [224, 224] for shape in outcomes["map_shapes"])
    for low, high in outcomes["map_ranges"]:
        assert 0.0 <= low <= high <= 1.0
    assert outcomes["occlusion_shape"] == [224, 224] and 0.0 <= outcomes["occlusion_max"] <= 1.0
