"""Tests for helpers.unknown: each score on synthetic features where the right answer is known.

The last test runs the ``retrain`` and ``label_image`` commands on real images:
a small flower model must answer "unknown" for chest X-rays.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import softmax

from helpers import label_image, unknown
from helpers.settings import PROJECT_ROOT
from helpers.unknown import (
    DEFAULT_METHOD,
    EnergyScore,
    KNNScore,
    MahalanobisScore,
    MaxSoftmaxScore,
    TemperatureScaler,
    UnknownDetector,
    accuracy_vs_accepted,
    expected_calibration_error,
    load_detector,
    ood_metrics,
    reliability_curve,
)

DIM = 16


def gaussian_classes(rng, n_per_class, means, scale=1.0):
    """Features drawn around each mean, and their class indices."""
    x = np.concatenate([m + scale * rng.standard_normal((n_per_class, len(m))) for m in means])
    y = np.repeat(np.arange(len(means)), n_per_class)
    return x, y


@pytest.fixture(scope="module")
def world():
    """Two known classes, a linear head, near unknowns (between the classes) and far ones (elsewhere).

    Features: class 0 around +6 e0 + 6 e1, class 1 around +6 e0 - 6 e1 (positive
    e0 so that cosine distances mean something). The head's logits are
    ``±x[1]``. Near unknowns sit at 6 e0 (between the classes: the head
    hesitates). Far unknowns sit at 6 e1 + 8 e2: the head is sure it is class 0,
    but no training image points that way.
    """
    rng = np.random.default_rng(0)
    means = [6 * np.eye(DIM)[0] + 6 * np.eye(DIM)[1], 6 * np.eye(DIM)[0] - 6 * np.eye(DIM)[1]]
    head = np.zeros((DIM, 2))
    head[1] = [1.0, -1.0]
    train, train_y = gaussian_classes(rng, 400, means)
    val, val_y = gaussian_classes(rng, 500, means)
    test, test_y = gaussian_classes(rng, 1000, means)
    near = 6 * np.eye(DIM)[0] + rng.standard_normal((300, DIM))
    far = 6 * np.eye(DIM)[1] + 8 * np.eye(DIM)[2] + rng.standard_normal((300, DIM))
    return dict(train=train, train_y=train_y, val=val, val_y=val_y, test=test, test_y=test_y,
                near=near, far=far, logits=lambda x: x @ head)


# ---------------------------------------------------------------- single scores

def test_max_softmax_and_energy_on_hand_computed_logits():
    logits = np.array([[0.0, 0.0], [10.0, 0.0], [2.0, 2.0]])
    np.testing.assert_allclose(unknown.max_softmax(logits), [0.5, 1 / (1 + np.exp(-10)), 0.5])
    np.testing.assert_allclose(unknown.energy(logits), [np.log(2), 10 + np.log(1 + np.exp(-10)), 2 + np.log(2)])
    # energy keeps the logits' scale that the softmax normalises away: rows 0 and 2 tie on MSP, not on energy
    assert unknown.energy(logits)[2] > unknown.energy(logits)[0]
    np.testing.assert_allclose(MaxSoftmaxScore(temperature=2).fit().score(logits)[1], 1 / (1 + np.exp(-5)))
    np.testing.assert_allclose(EnergyScore(temperature=2).score([[4.0, 4.0]]), [2 * (2 + np.log(2))])


def test_logit_scores_catch_near_unknowns_but_miss_far_ones(world):
    known = world["logits"](world["test"])
    for scorer in (MaxSoftmaxScore(), EnergyScore()):
        near = ood_metrics(scorer.score(known), scorer.score(world["logits"](world["near"])))
        far = ood_metrics(scorer.score(known), scorer.score(world["logits"](world["far"])))
        assert near["auroc"] > 0.99, type(scorer).__name__
        assert far["auroc"] < 0.7, type(scorer).__name__  # the head is sure about the far cluster


def test_feature_scores_catch_a_far_cluster(world):
    for scorer in (KNNScore(k=10).fit(world["train"]),
                   MahalanobisScore().fit(world["train"], world["train_y"])):
        metrics = ood_metrics(scorer.score(world["test"]), scorer.score(world["far"]))
        assert metrics["auroc"] > 0.999, type(scorer).__name__
        assert metrics["fpr_at_95_tpr"] == 0.0, type(scorer).__name__


def test_mahalanobis_beats_euclidean_on_anisotropic_classes():
    """Classes long along e0 and thin along e1: an unknown off by 3 along e1 is far in Mahalanobis terms only."""
    rng = np.random.default_rng(1)
    spread = np.r_[8.0, 0.5, np.ones(DIM - 2)]
    means = [np.zeros(DIM), 30 * np.eye(DIM)[3]]
    train = np.concatenate([m + spread * rng.standard_normal((500, DIM)) for m in means])
    train_y = np.repeat([0, 1], 500)
    known = np.concatenate([m + spread * rng.standard_normal((500, DIM)) for m in means])
    unknowns = 3 * np.eye(DIM)[1] + np.r_[0.5, 0.5, np.ones(DIM - 2)] * rng.standard_normal((500, DIM))
    auroc = {}
    for covariance in ("identity", "empirical", "ledoit_wolf"):
        scorer = MahalanobisScore(covariance=covariance, normalize=False).fit(train, train_y)
        auroc[covariance] = ood_metrics(scorer.score(known), scorer.score(unknowns))["auroc"]
    assert auroc["identity"] < 0.6, auroc  # plain distance: the unknowns look closer than typical known points
    assert auroc["empirical"] > 0.95 and auroc["ledoit_wolf"] > 0.95, auroc


def test_mahalanobis_distance_matches_its_definition():
    rng = np.random.default_rng(2)
    x, y = gaussian_classes(rng, 200, [np.zeros(3), np.full(3, 5.0)])
    scorer = MahalanobisScore(covariance="empirical", normalize=False).fit(x, y)
    centred = x - scorer.means_[y]
    precision = np.linalg.inv(np.cov(centred.T, bias=True))
    point = np.array([1.0, -2.0, 0.5])
    expected = min((point - m) @ precision @ (point - m) for m in scorer.means_)
    np.testing.assert_allclose(scorer.score(point[None]), [-expected], rtol=1e-8)


def test_ledoit_wolf_keeps_mahalanobis_usable_with_more_dimensions_than_images():
    rng = np.random.default_rng(3)
    dim = 200  # more dimensions than the 100 training images: the empirical covariance is singular
    means = [np.r_[5.0, np.zeros(dim - 1)], np.r_[-5.0, np.zeros(dim - 1)]]
    train, train_y = gaussian_classes(rng, 50, means)
    known, _ = gaussian_classes(rng, 200, means)
    far = np.r_[0.0, 8.0, np.zeros(dim - 2)] + rng.standard_normal((200, dim))
    scorer = MahalanobisScore(normalize=False).fit(train, train_y)
    assert np.all(np.isfinite(scorer.score(known)))
    assert ood_metrics(scorer.score(known), scorer.score(far))["auroc"] > 0.99


def test_knn_score_is_the_cosine_distance_to_the_kth_neighbour():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    scorer = KNNScore(k=2).fit(bank)
    # [2, 0] points along bank[0] (distance 0); the 2nd nearest is [1, 1] at 1 - cos(45°)
    np.testing.assert_allclose(scorer.score([[2.0, 0.0]]), [-(1 - np.sqrt(0.5))], atol=1e-6)
    assert KNNScore(k=50).fit(bank).k_ == 3  # k reduced to the bank's size


# ---------------------------------------------------------------- the rule

def test_threshold_accepts_the_requested_fraction_of_new_known_images(world):
    for method in ("msp", "energy", "mahalanobis", "knn", "knn+msp"):
        plain = UnknownDetector(method, accept_fraction=0.95, confidence=None).fit(
            world["train"], world["train_y"], world["val"], world["logits"](world["val"]))
        accepted = plain.is_known(world["test"], world["logits"](world["test"])).mean()
        assert 0.93 <= accepted <= 0.97, (method, accepted)
        sure = UnknownDetector(method, accept_fraction=0.95).fit(  # default: at least 95% with 90% confidence
            world["train"], world["train_y"], world["val"], world["logits"](world["val"]))
        accepted = sure.is_known(world["test"], world["logits"](world["test"])).mean()
        assert 0.95 <= accepted <= 0.985 and sure.threshold_ <= plain.threshold_, (method, accepted)
    strict = UnknownDetector("knn", accept_fraction=0.5, confidence=None).fit(
        world["train"], world["train_y"], world["val"])
    assert 0.45 <= strict.is_known(world["test"]).mean() <= 0.55


def test_acceptance_threshold_keeps_its_guarantee_over_many_validation_sets():
    """Uniform scores: a threshold t accepts exactly 1 - t of all known images, so coverage is known."""
    rng = np.random.default_rng(6)
    trials = [rng.uniform(size=300) for _ in range(400)]
    plain = np.mean([1 - unknown.acceptance_threshold(s, 0.95, confidence=None) >= 0.95 for s in trials])
    sure = np.mean([1 - unknown.acceptance_threshold(s, 0.95, confidence=0.9) >= 0.95 for s in trials])
    assert 0.35 < plain < 0.65  # the plain quantile falls short about half of the time
    assert 0.87 < sure < 0.95  # the bound holds in 90% of the validation sets, not much more
    with pytest.warns(UserWarning, match="too few to guarantee"):
        assert unknown.acceptance_threshold([3.0, 1.0, 2.0], 0.95) == 1.0


def test_combined_rule_catches_near_and_far_unknowns(world):
    logits = world["logits"]
    detector = UnknownDetector("knn+msp").fit(world["train"], world["train_y"], world["val"], logits(world["val"]))
    known = detector.score(world["test"], logits(world["test"]))
    for name in ("near", "far"):
        unknowns = world[name]
        assert ood_metrics(known, detector.score(unknowns, logits(unknowns)))["auroc"] > 0.99, name
        assert detector.is_known(unknowns, logits(unknowns)).mean() < 0.05, name
    # which part rejected: the far cluster fails the kNN part, not the softmax part
    parts = detector.part_scores(world["far"], logits(world["far"]))
    assert np.median(parts["knn"]) < -3 and np.median(parts["msp"]) > -1
    np.testing.assert_allclose(detector.score(world["far"], logits(world["far"])),
                               np.minimum(parts["knn"], parts["msp"]))
    averaged = UnknownDetector("knn+msp", combine="mean").fit(
        world["train"], world["train_y"], world["val"], logits(world["val"]))
    parts = averaged.part_scores(world["far"], logits(world["far"]))
    np.testing.assert_allclose(averaged.score(world["far"], logits(world["far"])), (parts["knn"] + parts["msp"]) / 2)


def test_compare_methods_shows_which_score_catches_which_unknowns(world):
    logits = world["logits"]
    table = unknown.compare_methods(
        ["msp", "knn", "knn+msp"], world["train"], world["train_y"], world["val"], logits(world["val"]),
        known=(world["test"], logits(world["test"])),
        unknowns={name: (world[name], logits(world[name])) for name in ("near", "far")})
    assert set(table) == {"msp", "knn", "knn+msp"} and set(table["msp"]) == {"near", "far"}
    assert table["msp"]["far"]["rejected"] < 0.2  # the softmax score lets the far cluster through
    assert table["knn"]["far"]["rejected"] == 1.0
    assert table["knn+msp"]["near"]["rejected"] > 0.95 and table["knn+msp"]["far"]["rejected"] == 1.0
    assert 0.95 <= table["knn+msp"]["near"]["known_accepted"] <= 0.985


def test_leave_one_class_out_builds_a_near_unknown_experiment():
    from types import SimpleNamespace

    rng = np.random.default_rng(7)
    means = [8 * np.eye(DIM)[i] + 4 * np.eye(DIM)[3] for i in range(3)]
    splits = {split: SimpleNamespace(features=x.astype(np.float32), labels=y) for split, (x, y) in
              {s: gaussian_classes(rng, n, means) for s, n in (("training", 60), ("validation", 30),
                                                                ("testing", 30))}.items()}
    setup = unknown.leave_one_class_out(splits, left_out=1, how_many_training_steps=200, learning_rate=0.1)
    assert setup["kept"] == [0, 2] and setup["head"].weights.shape == (DIM, 2)
    assert len(setup["unknown"][0]) == 60 + 30 + 30  # every image of class 1, from all splits
    assert len(setup["known"][0]) == 60 and set(setup["train"][1]) == {0, 1}
    assert np.mean(setup["head"].predict(setup["known"][0]) == np.repeat([0, 1], 30)) > 0.95
    detector = UnknownDetector("knn+msp").fit(*setup["train"], *setup["validation"])
    assert ood_metrics(detector.score(*setup["known"]), detector.score(*setup["unknown"]))["auroc"] > 0.95
    with pytest.raises(ValueError, match="left_out must be a class index"):
        unknown.leave_one_class_out(splits, left_out=3)


def test_detector_round_trip_gives_identical_scores(world, tmp_path):
    logits = world["logits"]
    detector = UnknownDetector("mahalanobis+knn+energy").fit(
        world["train"], world["train_y"], world["val"], logits(world["val"]))
    config, arrays = detector.to_dict(bank_dtype="float32")
    rebuilt = UnknownDetector.from_dict(config, arrays)
    samples = np.concatenate([world["test"][:200], world["near"][:50], world["far"][:50]])
    np.testing.assert_allclose(rebuilt.score(samples, logits(samples)), detector.score(samples, logits(samples)),
                               rtol=1e-5, atol=1e-6)
    assert rebuilt.threshold_ == detector.threshold_
    # saved to disk with a float16 bank: the same decisions, scores within a small fraction of their spread
    paths = detector.save(tmp_path)
    assert sorted(p.name for p in paths) == ["unknown_rule.json", "unknown_rule.npz"]
    loaded = load_detector(tmp_path)
    assert loaded.method == "mahalanobis+knn+energy"
    difference = np.abs(loaded.score(samples, logits(samples)) - detector.score(samples, logits(samples)))
    assert difference.max() < 0.01
    assert np.mean(loaded.is_known(samples, logits(samples)) == detector.is_known(samples, logits(samples))) > 0.99
    assert load_detector(tmp_path / "no_rule_here") is None
    (tmp_path / "unknown_rule.json").write_text('{"unknown_rule": null}')  # a model exported without a rule
    assert load_detector(tmp_path) is None


def test_bad_input_gets_clear_messages(world):
    with pytest.raises(ValueError, match="unknown method 'softmax'"):
        UnknownDetector("softmax")
    with pytest.raises(ValueError, match="accept_fraction"):
        UnknownDetector("knn", accept_fraction=1.5)
    with pytest.raises(ValueError, match="confidence"):
        UnknownDetector("knn", confidence=1.0)
    with pytest.raises(ValueError, match="needs val_logits"):
        UnknownDetector("knn+msp").fit(world["train"], world["train_y"], world["val"])
    with pytest.raises(RuntimeError, match="not fitted"):
        UnknownDetector("knn").score(world["test"])
    detector = UnknownDetector("knn").fit(world["train"], world["train_y"], world["val"])
    with pytest.raises(ValueError, match="has 3 columns but the score was fitted on 16"):
        detector.score(np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        detector.score(np.full((1, DIM), np.nan))
    with pytest.raises(ValueError, match="empty"):
        detector.score(np.zeros((0, DIM)))
    with pytest.raises(ValueError, match="k must be at least 1"):
        KNNScore(k=0)


# ---------------------------------------------------------------- metrics and calibration

def test_ood_metrics_on_known_cases():
    perfect = ood_metrics([5, 6, 7, 8], [1, 2, 3])
    assert perfect == {"auroc": 1.0, "fpr_at_95_tpr": 0.0}
    # 1 of 4 unknowns outranks one known image of 2: AUROC = 1 - 1/8
    assert ood_metrics([1.0, 3.0], [0.0, 0.0, 0.0, 2.0])["auroc"] == pytest.approx(7 / 8)
    # to accept 95% of the known images the threshold must go down to 1.0, accepting 1 unknown of 4
    assert ood_metrics([1.0, 3.0], [0.0, 0.0, 0.0, 2.0])["fpr_at_95_tpr"] == pytest.approx(0.25)
    rng = np.random.default_rng(4)
    same = ood_metrics(rng.normal(size=4000), rng.normal(size=4000))
    assert abs(same["auroc"] - 0.5) < 0.03 and abs(same["fpr_at_95_tpr"] - 0.95) < 0.03
    with pytest.raises(ValueError, match="at least one known and one unknown"):
        ood_metrics([1.0], [])


def test_accuracy_vs_accepted_orders_by_score():
    fraction, accuracy = accuracy_vs_accepted([0.9, 0.1, 0.8, 0.2], [True, False, True, True])
    np.testing.assert_allclose(fraction, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(accuracy, [1.0, 1.0, 1.0, 0.75])


def test_temperature_scaling_repairs_over_confident_logits():
    rng = np.random.default_rng(5)
    n, classes = 4000, 5
    calibrated = rng.normal(size=(n, classes)) * 1.5
    probabilities = np.exp(calibrated) / np.exp(calibrated).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(classes, p=p) for p in probabilities])  # labels drawn from the model itself
    over_confident = 4.0 * calibrated
    val, test = slice(0, n // 2), slice(n // 2, n)
    scaler = TemperatureScaler().fit(over_confident[val], y[val])
    assert scaler.temperature_ == pytest.approx(4.0, rel=0.15)
    before = expected_calibration_error(y[test], softmax(over_confident[test], axis=1))
    after = expected_calibration_error(y[test], scaler.predict_proba(over_confident[test]))
    assert before > 0.15 and after < 0.04, (before, after)
    np.testing.assert_array_equal(scaler.predict_proba(over_confident).argmax(1), over_confident.argmax(1))


def test_expected_calibration_error_and_reliability_curve_by_hand():
    # two bins used: confidence 0.9 (2 images, 1 right) and 0.6 (2 images, both right)
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    curve = reliability_curve(y, probabilities, n_bins=10)
    np.testing.assert_allclose(curve["confidence"], [0.6, 0.9])
    np.testing.assert_allclose(curve["accuracy"], [1.0, 0.5])
    np.testing.assert_array_equal(curve["count"], [2, 2])
    assert expected_calibration_error(y, probabilities, n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_the_retrain_command_and_function_default_to_the_library_default_rule():
    import inspect

    from helpers import retrain

    assert inspect.signature(retrain.retrain).parameters["unknown_method"].default == DEFAULT_METHOD
    assert retrain.build_parser().parse_args(["--image_dir", "x"]).unknown_method == DEFAULT_METHOD


# ---------------------------------------------------------------- the commands on real images

FLOWERS = PROJECT_ROOT.parent / "shared" / "datasets" / "flower_photos"
XRAYS = PROJECT_ROOT.parent / "shared" / "datasets" / "chest_xray" / "test" / "NORMAL"


@pytest.mark.slow
@pytest.mark.skipif(not (FLOWERS.is_dir() and XRAYS.is_dir()), reason="needs ../shared/datasets")
def test_retrain_stores_the_rule_and_label_image_answers_unknown_for_xrays(tmp_path, capsys):
    """A small flower model (20 images per class) must call chest X-rays "unknown" and keep flowers."""
    model_dir, metrics_file = tmp_path / "model", tmp_path / "metrics.json"
    done = subprocess.run(
        [sys.executable, "-m", "helpers.retrain", "--image_dir", str(FLOWERS), "--max_images_per_class", "20",
         "--how_many_training_steps", "200", "--eval_step_interval", "100", "--saved_model_dir", str(model_dir),
         "--metrics_json", str(metrics_file), "--unknown_accept_fraction", "0.95"],  # the default rule
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=900,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert DEFAULT_METHOD == "knn+energy" and f"Unknown rule {DEFAULT_METHOD}: threshold" in done.stdout
    assert sorted(p.name for p in model_dir.glob("unknown_rule.*")) == ["unknown_rule.json", "unknown_rule.npz"]
    report = json.loads(metrics_file.read_text())["unknown"]
    assert report["method"] == DEFAULT_METHOD and report["accept_fraction"] == 0.95
    assert report["known_accepted"]["validation"] >= 0.95  # by construction, on the images that set it
    assert report["known_accepted"]["testing"] >= 0.85  # 100 new known images: ~95% expected, margin for N=100

    xrays = sorted(XRAYS.iterdir())[:4]
    flowers = [sorted((FLOWERS / name).iterdir())[0] for name in ("daisy", "sunflowers")]
    assert label_image.main(["--saved_model_dir", str(model_dir), "--json", *map(str, xrays + flowers)]) == 0
    results = json.loads(capsys.readouterr().out)
    classes = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    for r in results[:4]:  # X-rays: rejected, and the entry says what the closed-set answer was and why
        assert r["label"] == "unknown" and r["known_label"] in classes
        assert r["unknown_score"] < r["unknown_threshold"]
    for r in results[4:]:  # flowers (training images of this model) keep their class
        assert r["label"] == r["known_label"] in classes and r["unknown_score"] >= r["unknown_threshold"]
    assert label_image.main(["--saved_model_dir", str(model_dir), str(xrays[0])]) == 0
    assert "unknown: not like the training images" in capsys.readouterr().out
    assert label_image.main(["--saved_model_dir", str(model_dir), "--json", "--no_unknown", str(xrays[0])]) == 0
    plain = json.loads(capsys.readouterr().out)[0]
    assert plain["label"] in classes and "known_label" not in plain
