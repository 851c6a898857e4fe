"""The outcomes notebooks 1 and 2 promise, measured by calling the same helpers the notebooks call.

Notebook 1: the small digits network reaches at least 90% test accuracy.
Notebook 2: before any training, a k-nearest-neighbour classifier on bottleneck
features beats the same classifier on raw pixels by a wide margin (on the
quick setting's subset: 40 flower photos per class and split).
"""
import numpy as np
import pytest

from helpers import basics

QUICK_PER_CLASS = 40


def test_digits_network_reaches_90_percent_test_accuracy():
    result = basics.train_digits(hidden_units=64, epochs=40)
    assert result.test_accuracy >= 0.90, f"digits test accuracy {result.test_accuracy:.1%}"
    assert result.history["val_accuracy"][-1] >= 0.90
    assert len(result.history["loss"]) == 40 and result.history["loss"][-1] < result.history["loss"][0] / 5


def test_small_training_set_overfits_as_notebook_1_shows():
    result = basics.train_digits(hidden_units=128, epochs=100, learning_rate=0.01, train_size=100)
    history = result.history
    assert result.best_epoch < 60, "the validation loss should bottom out early"
    assert history["val_loss"][-1] > min(history["val_loss"]) * 1.1, "then rise again"
    assert history["accuracy"][-1] - history["val_accuracy"][-1] >= 0.05, "a train/validation gap"


@pytest.mark.slow
def test_bottleneck_knn_beats_pixel_knn_by_a_wide_margin():
    from helpers import backbones, bottlenecks, data

    splits = data.make_splits(data.find_dataset("flowers")).subset(QUICK_PER_CLASS)
    backbone = backbones.load_backbone()
    features = bottlenecks.bottlenecks_for_splits(splits, backbone, progress=False,
                                                  split_names=["training", "testing"])
    train, test = features["training"], features["testing"]
    assert len(train) == 5 * QUICK_PER_CLASS and len(test) == 5 * QUICK_PER_CLASS
    assert np.array_equal(np.bincount(test.labels), [QUICK_PER_CLASS] * 5)
    pixels = basics.knn_accuracy(basics.pixel_features(train.paths), train.labels,
                                 basics.pixel_features(test.paths), test.labels, k=5)
    bottleneck = basics.knn_accuracy(train.features, train.labels, test.features, test.labels, k=5)
    assert bottleneck >= 0.55, f"bottleneck kNN {bottleneck:.1%} (chance: 20%)"
    assert bottleneck - pixels >= 0.25, f"bottleneck kNN {bottleneck:.1%} vs pixel kNN {pixels:.1%}"
