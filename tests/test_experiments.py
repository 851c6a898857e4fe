"""helpers.experiments: the regularised head, fair result tables, split stability, exercise checks."""
from pathlib import Path

import numpy as np
import pytest

import helpers  # noqa: F401
from helpers import experiments


def blobs(n_per_class=60, dim=20, classes=3, spread=1.0, seed=0):
    """Gaussian clusters: an easy, known classification problem."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    return (centres[y] + rng.normal(0, spread, (len(y), dim))).astype(np.float32), y


def test_regularised_head_chooses_C_on_validation_and_learns():
    x, y = blobs(seed=1)
    vx, vy = blobs(n_per_class=30, seed=1)  # same centres (same seed), new noise draws below
    vx = vx + np.random.default_rng(2).normal(0, 1.0, vx.shape).astype(np.float32)
    head = experiments.RegularisedHead(Cs=(0.001, 0.1, 10.0)).fit(x, y, vx, vy)
    assert set(head.validation_accuracies_) == {0.001, 0.1, 10.0}
    assert head.validation_accuracies_[head.C_] == max(head.validation_accuracies_.values())
    assert np.mean(head.predict(vx) == vy) >= 0.9
    assert head.predict_proba(vx).shape == (len(vy), 3)
    np.testing.assert_allclose(head.predict_proba(vx).sum(axis=1), 1, rtol=1e-6)
    assert head.weights.shape == (20, 3) and head.bias.shape == (3,)
    np.testing.assert_array_equal(np.argmax(vx @ head.weights + head.bias, axis=1), head.predict(vx))


def test_regularised_head_ties_go_to_the_stronger_penalty():
    x, y = blobs(spread=0.1)
    head = experiments.RegularisedHead(Cs=(1.0, 0.1)).fit(x, y, x, y)  # separable: both are perfect
    assert head.C_ == 0.1


@pytest.mark.parametrize("args, message", [
    ((np.zeros((4, 2)), [0, 1, 0], np.zeros((2, 2)), [0, 1]), "differ in length"),
    ((np.zeros((4, 2)), [0, 1, 0, 1], np.zeros((0, 2)), []), "validation split is empty"),
    ((np.zeros((4, 2)), [0, 0, 0, 0], np.zeros((2, 2)), [0, 0]), "at least two classes"),
])
def test_regularised_head_explains_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        experiments.RegularisedHead().fit(*args)


class _Fixed:
    def __init__(self, answers):
        self.answers = answers

    def predict(self, x):
        return self.answers[: len(x)]


def test_evaluate_and_results_table_report_accuracy_interval_and_n():
    labels = {"validation": np.array([0, 1, 1, 0]), "testing": np.array([0] * 10)}
    features = {"validation": np.zeros((4, 2)), "testing": np.zeros((10, 2))}
    model = _Fixed(np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1]))
    result = experiments.evaluate("fixed", model, features, labels, seconds={"training": 1.5}, note="n/a")
    acc, low, high, n = result.accuracy["testing"]
    assert (acc, n) == (0.9, 10) and low < 0.9 < high
    assert result.test_accuracy == 0.9
    table = experiments.results_table([result]).data
    assert "article (Inception-V3)" in table and "92.3% [" in table and "N=362" in table
    assert "90.0% [" in table and "N=10" in table and "training 1.5" in table
    with pytest.raises(ValueError, match="same splits"):
        experiments.evaluate("x", model, {"testing": features["testing"]}, labels)


def test_best_on_validation_never_looks_at_test():
    a = experiments.Result("a", {"validation": (0.90, 0, 1, 100), "testing": (0.99, 0, 1, 100)})
    b = experiments.Result("b", {"validation": (0.95, 0, 1, 100), "testing": (0.80, 0, 1, 100)})
    assert experiments.best_on_validation([a, b]).name == "b"


def test_the_article_interval():
    low, high = experiments.accuracy_with_ci_bounds(0.923, 362)
    assert low == pytest.approx(0.890, abs=0.002) and high == pytest.approx(0.947, abs=0.002)


def test_hash_split_keeps_old_files_but_a_shuffle_moves_them():
    from helpers import data

    paths = [Path(f"c/photo_{i}.jpg") for i in range(500)]
    grown = paths + [Path("c/new_photo.jpg")]
    assert experiments.split_moves(data.split_files(paths), data.split_files(grown)) == 0
    shuffled = experiments.random_split_files(paths)
    assert {k: len(v) for k, v in shuffled.items()} == {"validation": 50, "testing": 50, "training": 400}
    assert experiments.split_moves(shuffled, experiments.random_split_files(grown)) > 10
    assert experiments.split_moves(shuffled, experiments.random_split_files(paths)) == 0


def test_with_distorted_appends_copies_with_their_labels():
    from helpers.augment import DistortedFeatures

    x, y = np.ones((3, 2), np.float32), np.array([0, 1, 2])
    copies = DistortedFeatures(np.full((6, 2), 2, np.float32), np.array([0, 1, 2, 2, 1, 0]), 2, 1.0)
    tx, ty = experiments.with_distorted(x, y, copies)
    assert tx.shape == (9, 2) and ty.tolist() == [0, 1, 2, 0, 1, 2, 2, 1, 0]


def test_side_by_side_concatenates_and_checks_rows():
    a = {"training": np.ones((3, 2)), "testing": np.ones((1, 2))}
    b = {"training": np.zeros((3, 4)), "testing": np.zeros((1, 4))}
    both = experiments.side_by_side(a, b)
    assert both["training"].shape == (3, 6) and both["testing"].shape == (1, 6)
    with pytest.raises(ValueError, match="same number of rows"):
        experiments.side_by_side(a, {"training": np.zeros((2, 4)), "testing": np.zeros((1, 4))})


def test_markdown_table_formats_shares_and_counts():
    text = experiments.markdown_table([{"name": "x", "acc": 0.9234, "photos/s": 95.4}]).data
    assert "| name | acc | photos/s |" in text and "| x | 92.3% | 95 |" in text


def test_exercise_checks(capsys):
    needed = experiments.images_needed_for(0.92, 0.01)
    assert 2700 <= needed <= 2950
    assert experiments.check_test_size(needed)
    assert not experiments.check_test_size(360)
    assert not experiments.check_test_size(None)
    y_true, y_pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 0, 0, 0])
    assert experiments.check_lowest_recall("c", y_true, y_pred, ["a", "b", "c"])
    assert not experiments.check_lowest_recall("a", y_true, y_pred, ["a", "b", "c"])
    assert not experiments.check_lowest_recall("tulips", y_true, y_pred, ["a", "b", "c"])
    assert "Not yet" in capsys.readouterr().out
