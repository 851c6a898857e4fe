"""Fine-tuning the top blocks on cached activations: the cut, the cache, what trains, what it gives.

Runs the real EfficientNet-Lite0 on a small subset of the flowers (6 training,
3 validation and 4 test images per class), with the cache in a temporary folder.
"""
import numpy as np
import pytest

import helpers  # noqa: F401

from helpers import data, efficientnet_lite, finetune
from helpers.bottlenecks import BottleneckCache

BLOCKS = 2


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("COURSE_CACHE_DIR", str(root))
    yield root
    patch.undo()


@pytest.fixture(scope="module")
def splits():
    flowers = data.find_dataset("flowers", download=False)
    return data.make_splits(flowers).subset({"training": 6, "validation": 3, "testing": 4}, seed=0)


@pytest.fixture(scope="module")
def activations(cache_root, splits):
    return finetune.cached_activations(splits, BLOCKS, progress=False)


@pytest.fixture(scope="module")
def tuned(activations, splits):
    distorted = finetune.distorted_activations(activations["training"], copies=1, progress=False)
    return finetune.fine_tune(activations, splits.classes, learning_rate=1e-4, epochs=3, patience=2,
                              batch_size=16, head_steps=300, distorted=distorted, progress=False)


def test_cut_block_counts_blocks_from_the_top():
    assert finetune.cut_block(1) == 15 and finetune.cut_block(2) == 14 and finetune.cut_block(5) == 11
    for bad in (0, 16, -1, 2.5, "two"):
        with pytest.raises(ValueError, match="fine_tune_blocks must be"):
            finetune.cut_block(bad)


def test_lower_then_upper_is_the_whole_network():
    images = np.random.default_rng(0).uniform(0, 1, (2, 224, 224, 3)).astype(np.float32)
    lower = finetune.LowerNetwork(k=14)
    assert lower.shape == (7, 7, 192) and lower.feature_dim == 7 * 7 * 192
    assert lower.id.endswith("@block14")
    model = efficientnet_lite.build_keras_model("efficientnet_lite0")
    _, upper = efficientnet_lite.split_at_block(model, 14)
    flat = lower.features(images)
    np.testing.assert_allclose(upper(flat.reshape(2, 7, 7, 192)).numpy(), model(images).numpy(), atol=1e-4)


def test_activations_are_cached_per_image_and_labels_stay_aligned(cache_root, splits, activations):
    for split, acts in activations.items():
        assert acts.x.shape == (len(splits.files[split]), 7, 7, 192) and acts.x.dtype == np.float16
        np.testing.assert_array_equal(acts.labels, splits.labels[split])
        assert acts.paths == splits.files[split] and acts.block == 14
    assert np.all(np.isfinite(activations["training"].x)) and activations["training"].x.max() > 0
    lower = finetune.LowerNetwork(k=14)
    assert lower.id.endswith("-crop0.875@block14") and finetune.LowerNetwork(k=14, central_crop=1).id.endswith("-v1@block14")
    cache = BottleneckCache(lower.id)
    assert str(cache.folder).startswith(str(cache_root)) and len(cache) == sum(map(len, activations.values()))
    again = finetune.cached_activations(splits, BLOCKS, progress=False, split_names=["validation"])
    assert again["validation"].from_cache == len(splits.files["validation"]) and again["validation"].computed == 0
    np.testing.assert_array_equal(again["validation"].x, activations["validation"].x)


def test_frozen_top_of_cached_activations_gives_the_ordinary_bottlenecks(splits, activations):
    from helpers import backbones

    backbone = backbones.load_backbone("efficientnet_lite0")
    images = np.stack([backbone.load_image(p) for p in splits.files["validation"][:4]])  # its own crop
    assert activations["validation"].central_crop == backbone.central_crop == 0.875
    maps = finetune.Activations(activations["validation"].x[:4], activations["validation"].labels[:4], [], 14,
                                "efficientnet_lite0")
    np.testing.assert_allclose(finetune.frozen_features(maps), backbone.features(images), atol=0.02)


def test_distorted_activations_are_new_maps_of_the_same_images_and_cached(cache_root, activations):
    validation = activations["validation"]
    distorted = finetune.distorted_activations(validation, copies=2, progress=False)
    assert distorted.x.shape == (2 * len(validation), 7, 7, 192) and distorted.x.dtype == np.float16
    np.testing.assert_array_equal(distorted.labels, validation.labels[distorted.indices])
    assert sorted(distorted.indices.tolist()) == sorted(2 * list(range(len(validation))))
    first = distorted.x[distorted.indices == 0].astype(np.float32)
    assert not np.allclose(first[0], validation.x[0].astype(np.float32), atol=0.1)  # distorted, not a copy
    assert not np.allclose(first[0], first[1], atol=0.1)  # and each copy differently
    again = finetune.distorted_activations(validation, copies=2, progress=False)
    assert again.from_cache == len(again) and again.computed == 0
    np.testing.assert_array_equal(again.x, distorted.x)


def test_only_the_top_blocks_and_head_learn_and_batchnorm_is_frozen(tuned):
    pretrained = efficientnet_lite.build_keras_model("efficientnet_lite0")
    changed = {layer.name for layer in tuned.backbone.layers if layer.weights and any(
        not np.array_equal(a, b) for a, b in zip(layer.get_weights(), pretrained.get_layer(layer.name).get_weights()))}
    assert changed, "fine-tuning changed no weight"
    assert all(name.startswith(("block14_", "block15_", "head_")) for name in changed), changed
    assert not any(name.endswith("_bn") for name in changed), changed
    assert "block15_project_conv" in changed and "head_conv" in changed


def test_fine_tuned_model_classifies_held_out_flowers(tuned, activations):
    assert set(tuned.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert 0 <= tuned.best_epoch <= len(tuned.history["val_loss"]) <= 3
    assert tuned.fine_tune_blocks == BLOCKS and "blocks" in tuned.summary()
    test = activations["testing"]
    accuracy = np.mean(tuned.predict(test) == test.labels)
    assert accuracy >= 0.7, accuracy  # 20 test images, 5 classes (chance 20%); observed 0.9-1.0


def test_the_exportable_model_matches_the_cached_path(tuned, splits, activations):
    assert tuned.central_crop == 0.875 and tuned.as_backbone_and_head()[0].central_crop == 0.875
    images = np.stack([data.load_image(p, 224, tuned.central_crop) for p in splits.files["testing"][:3]])
    probabilities = tuned.keras_model().predict(images, verbose=0)
    np.testing.assert_allclose(probabilities, tuned.predict_proba(activations["testing"].x[:3]), atol=2e-3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_fine_tune_refuses_bad_input(activations, splits):
    empty = dict(activations, validation=finetune.Activations(np.zeros((0, 7, 7, 192), np.float16),
                                                              np.zeros(0, int), [], 14, "efficientnet_lite0"))
    with pytest.raises(ValueError, match="validation"):
        finetune.fine_tune(empty, splits.classes)
    with pytest.raises(ValueError, match="learning_rate"):
        finetune.fine_tune(activations, splits.classes, learning_rate=5)
    with pytest.raises(ValueError, match="one weight per class"):
        finetune.fine_tune(activations, splits.classes, class_weights=[1.0, 2.0])


def test_evaluation_rows_choose_the_threshold_on_validation():
    classes = ["NORMAL", "PNEUMONIA"]
    labels = {"validation": np.array([0, 0, 1, 1]), "testing": np.array([0, 0, 0, 1, 1, 1])}
    val_scores = np.array([0.1, 0.5, 0.7, 0.9])  # any threshold in (0.5, 0.7] separates validation
    test_scores = np.array([0.2, 0.55, 0.65, 0.6, 0.8, 0.95])
    to_probs = lambda s: np.stack([1 - s, s], axis=1)
    row = finetune.evaluate_probabilities("toy", {"validation": to_probs(val_scores), "testing": to_probs(test_scores)},
                                          labels, classes, seconds=3.0)
    assert row["threshold"] == pytest.approx(0.7)
    assert row["sensitivity"] == pytest.approx(2 / 3) and row["specificity"] == pytest.approx(1.0)
    assert row["accuracy"] == pytest.approx(5 / 6) and row["n"] == 6 and row["ci95"][0] < 5 / 6 < row["ci95"][1]
    table = finetune.comparison_table([row], title="X-rays").data
    assert "| toy | 83.3% [" in table and "| 6 | 66.7% | 100.0% |" in table and "3 s" in table
    flowers = finetune.evaluate_probabilities("argmax", {"testing": np.eye(3)[[0, 1, 2, 2]]},
                                              {"testing": np.array([0, 1, 2, 1])}, ["a", "b", "c"])
    assert flowers["accuracy"] == 0.75 and "sensitivity" not in flowers


def test_training_batches_are_the_same_on_every_run_and_flip_about_half_the_maps():
    """The maps are prepared on parallel threads: flips must not depend on which thread draws first."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3, 4, 2)).astype(np.float16)  # asymmetric maps: a flip always changes them
    y = np.arange(64)

    def first_batches(seed, n=12):
        batches = finetune._training_dataset(x, y, 16, True, seed).take(n)
        return [(a.numpy(), b.numpy()) for a, b in batches]

    run1, run2 = first_batches(42), first_batches(42)
    for (a1, y1), (a2, y2) in zip(run1, run2):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(a1, a2)
    flipped = [not np.array_equal(a, x[label].astype(np.float32))
               for batch, labels in run1 for a, label in zip(batch, labels)]
    for batch, labels in run1:  # every map is the original or its mirror image, never anything else
        for a, label in zip(batch, labels):
            original = x[label].astype(np.float32)
            assert np.array_equal(a, original) or np.array_equal(a, original[:, ::-1, :])
    assert 0.35 < np.mean(flipped) < 0.65, np.mean(flipped)
    other = first_batches(7)
    assert any(not np.array_equal(a1, a2) for (a1, _), (a2, _) in zip(run1, other))
