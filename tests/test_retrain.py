"""The retrained head, the export, and the ``retrain`` command end to end on real flowers."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import helpers  # noqa: F401
from helpers import retrain as rt
from helpers.settings import PROJECT_ROOT
from tests.test_bottlenecks import TinyBackbone

FLOWERS = PROJECT_ROOT.parent / "shared" / "datasets" / "flower_photos"


def blobs(n_per_class, centres, spread, seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + spread * rng.standard_normal((n, len(c))) for c, n in zip(centres, n_per_class)])
    y = np.concatenate([np.full(n, i) for i, n in enumerate(n_per_class)])
    return x.astype(np.float32), y


CENTRES = np.eye(3, 16) * 5.0  # 3.5 standard deviations from each midpoint: nearly separable


def test_final_layer_learns_separable_classes_and_is_deterministic():
    x, y = blobs([60, 60, 60], CENTRES, 1.0, seed=0)
    vx, vy = blobs([30, 30, 30], CENTRES, 1.0, seed=1)
    kwargs = dict(n_classes=3, how_many_training_steps=200, learning_rate=0.1, train_batch_size=32,
                  validation_batch_size=40, eval_step_interval=50, progress=False)
    records = []
    head = rt.train_final_layer(x, y, vx, vy, seed=3, on_eval=records.append, **kwargs)
    assert head.weights.shape == (16, 3) and head.bias.shape == (3,)
    assert head.history["step"] == [0, 50, 100, 150, 199]
    assert [r["step"] for r in records] == head.history["step"]
    assert head.history["validation_n"] == [40] * 5
    assert head.history["cross_entropy"][-1] < head.history["cross_entropy"][0]
    assert np.mean(head.predict(vx) == vy) > 0.95
    np.testing.assert_allclose(head.predict_proba(vx).sum(axis=1), 1.0, rtol=1e-5)

    again = rt.train_final_layer(x, y, vx, vy, seed=3, **kwargs)
    np.testing.assert_array_equal(again.weights, head.weights)
    assert again.history == head.history
    other = rt.train_final_layer(x, y, vx, vy, seed=4, **kwargs)
    assert not np.array_equal(other.weights, head.weights)


def test_validation_batch_never_larger_than_the_validation_set():
    x, y = blobs([20, 20, 20], CENTRES, 1.0, seed=0)
    vx, vy = blobs([4, 4, 4], CENTRES, 1.0, seed=1)
    head = rt.train_final_layer(x, y, vx, vy, 3, how_many_training_steps=3, eval_step_interval=1, progress=False)
    assert head.history["validation_n"] == [12, 12, 12]
    head = rt.train_final_layer(x, y, vx[:0], vy[:0], 3, how_many_training_steps=2, progress=False)
    assert head.history["validation_n"] == [0, 0] and np.isnan(head.history["validation_accuracy"]).all()


def test_balanced_class_weights_raise_minority_recall():
    centres = np.stack([np.zeros(8), np.full(8, 0.5)])
    x, y = blobs([450, 50], centres, 1.0, seed=0)
    vx, vy = blobs([200, 200], centres, 1.0, seed=1)
    kwargs = dict(n_classes=2, how_many_training_steps=300, learning_rate=0.1, progress=False)
    plain = rt.train_final_layer(x, y, vx, vy, **kwargs)
    balanced = rt.train_final_layer(x, y, vx, vy, class_weights=[500 / 900, 500 / 100], **kwargs)
    recall = lambda head: np.mean(head.predict(vx)[vy == 1] == 1)
    assert recall(plain) < 0.3
    assert recall(balanced) > 0.6


def write_folder(root: Path, n: int, seed: int) -> Path:
    """Two visually distinct classes: dark and light noise images."""
    rng = np.random.default_rng(seed)
    for name, base in (("dark", 30), ("light", 200)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.clip(base + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{seed}_{i}.png")
    return root


@pytest.fixture
def two_class_data(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    return write_folder(tmp_path / "train", 16, seed=0), write_folder(tmp_path / "test", 6, seed=1)


def test_retrain_library_call_two_classes(two_class_data, tmp_path, capsys):
    train_dir, test_dir = two_class_data
    result = rt.retrain(image_dir=train_dir, test_image_dir=test_dir, validation_percentage=30, backbone=TinyBackbone(),
                        how_many_training_steps=150, learning_rate=0.5, eval_step_interval=50, class_weights="balanced",
                        metrics_json=tmp_path / "m.json", output_labels=tmp_path / "labels.txt",
                        summaries_dir=tmp_path / "logs")
    out = capsys.readouterr().out
    assert result.classes == ["dark", "light"]
    assert len(result.bottlenecks["testing"]) == 12
    assert re.search(r"Final test accuracy = [\d.]+% \(N=12\)", out)
    assert "positive = light" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["splits"]["testing"]["n"] == 12 and metrics["splits"]["testing"]["accuracy"] == 1.0
    assert metrics["binary"]["positive_class"] == "light"
    assert 0 <= metrics["binary"]["threshold"] <= 1
    assert set(metrics["binary"]) >= {"test_at_0.5", "test_at_threshold", "validation_at_threshold", "test_auc"}
    assert (tmp_path / "labels.txt").read_text().split() == ["dark", "light"]
    events = list((tmp_path / "logs" / "validation").glob("events.out.tfevents.*"))
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(str(events[0])) for v in e.summary.value}
    assert tags == {"accuracy", "cross_entropy"}


def test_distortions_send_every_training_image_through_the_network(two_class_data):
    train_dir, _ = two_class_data
    net = TinyBackbone()
    result = rt.retrain(image_dir=train_dir, backbone=net, how_many_training_steps=4, train_batch_size=5,
                        validation_percentage=25, testing_percentage=25, flip_left_right=True, random_crop=10,
                        random_scale=10, random_brightness=10, verbose=False)
    extracted = sum(b.computed for b in result.bottlenecks.values())
    assert net.images_seen == extracted + 4 * 5  # four steps of five freshly distorted images
    assert result.metrics["run"]["distortions"] is True


def test_export_signatures_take_file_bytes_and_float_images(tmp_path):
    net = TinyBackbone()
    rng = np.random.default_rng(0)
    head = rt.FinalLayer(rng.normal(size=(8, 3)).astype(np.float32), np.zeros(3, np.float32))
    folder = rt.export_saved_model(net, head, ["a", "b", "c"], tmp_path / "model")
    assert (folder / "labels.txt").read_text() == "a\nb\nc\n"
    assert json.loads((folder / "unknown_rule.json").read_text()) == {"unknown_rule": None}
    model = tf.saved_model.load(str(folder))
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    from_bytes = model.signatures["serving_default"](image_bytes=tf.constant([(tmp_path / "x.png").read_bytes()] * 2))
    floats = image[None].astype(np.float32) / 255
    from_floats = model.signatures["classify_images"](images=tf.constant(floats))
    expected = head.predict_proba(net.features(floats))
    np.testing.assert_allclose(from_floats["probabilities"].numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(from_bytes["probabilities"].numpy()[0], expected[0], rtol=1e-4, atol=1e-6)
    assert from_bytes["label"].numpy()[1].decode() == ["a", "b", "c"][int(np.argmax(expected[0]))]
    resized = model.signatures["classify_images"](images=tf.image.resize(floats, [48, 40]))
    assert resized["probabilities"].shape == (1, 3)


def test_command_reports_bad_input_without_traceback(tmp_path, capsys, two_class_data):
    assert rt.main(["--image_dir", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    train_dir, _ = two_class_data
    assert rt.main(["--image_dir", str(train_dir), "--positive_class", "cats"]) == 2
    assert "'cats' is not one of the classes ['dark', 'light']" in capsys.readouterr().err
    assert rt.main(["--image_dir", str(train_dir), "--threshold_rule", "sensitivity=0.9"]) == 2
    assert "write it as 'sensitivity:0.95'" in capsys.readouterr().err
    (tmp_path / "one" / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "cats" / "a.png")
    assert rt.main(["--image_dir", str(tmp_path / "one")]) == 2
    assert "multiple classes are needed" in capsys.readouterr().err


def run_command(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env,
                          cwd=PROJECT_ROOT, timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(not FLOWERS.is_dir(), reason="needs ../shared/datasets/flower_photos")
def test_retrain_and_label_image_commands_on_flowers(tmp_path):
    model_dir, metrics_file = tmp_path / "model", tmp_path / "metrics.json"
    done = run_command("helpers.retrain", "--image_dir", str(FLOWERS), "--max_images_per_class", "20",
                       "--how_many_training_steps", "200", "--eval_step_interval", "50",
                       "--saved_model_dir", str(model_dir), "--metrics_json", str(metrics_file),
                       "--print_misclassified_test_images")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert re.search(r"^Step 0: Train accuracy = [\d.]+%$", out, re.MULTILINE)
    assert re.search(r"^Step 0: Cross entropy = [\d.]+$", out, re.MULTILINE)
    assert re.search(r"^Step 199: Validation accuracy = [\d.]+% \(N=100\)$", out, re.MULTILINE)
    final = re.search(r"^Final test accuracy = ([\d.]+)% \(N=(\d+)\)", out, re.MULTILINE)
    assert final and int(final.group(2)) == 100
    assert "=== MISCLASSIFIED TEST IMAGES ===" in out

    metrics = json.loads(metrics_file.read_text())
    classes = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert metrics["classes"] == classes
    assert metrics["backbone"]["name"] == "efficientnet_lite0" and metrics["backbone"]["feature_dim"] == 1280
    test = metrics["splits"]["testing"]
    assert test["n"] == 100 and test["accuracy"] == pytest.approx(float(final.group(1)) / 100, abs=5e-4)
    # Observed 74% (Wilson 95% CI 65-82%) with 20 images per class; chance is 20%.
    assert test["accuracy"] >= 0.55 and metrics["splits"]["validation"]["accuracy"] >= 0.55
    assert test["ci95"][0] < test["accuracy"] < test["ci95"][1]
    assert set(metrics["per_class"]) == set(classes)
    assert np.sum(metrics["confusion_matrix"]) == 100
    assert {"extraction_seconds", "images_per_second", "training_seconds", "total_seconds"} <= set(metrics["timings"])
    assert (model_dir / "labels.txt").read_text().split() == classes

    images = [FLOWERS / "daisy" / min(os.listdir(FLOWERS / "daisy")),
              FLOWERS / "tulips" / min(os.listdir(FLOWERS / "tulips"))]
    labelled = run_command("helpers.label_image", "--saved_model_dir", str(model_dir), "--json", *map(str, images))
    assert labelled.returncode == 0, labelled.stderr[-2000:]
    results = json.loads(labelled.stdout)
    assert [r["path"] for r in results] == [str(p) for p in images]
    for r in results:
        assert r["label"] in classes and [label for label, _ in r["top_k"]] != classes
        assert sorted(label for label, _ in r["top_k"]) == classes  # top 5 of 5 classes
        probabilities = [p for _, p in r["top_k"]]
        assert r["score"] == probabilities[0] == max(probabilities)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)


def test_export_keeps_the_backbones_central_crop_for_file_input(tmp_path):
    """Image files given to the SavedModel, or to label_image, are cut as the bottlenecks were."""
    from helpers import data, label_image

    net = TinyBackbone()
    net.central_crop = 0.5
    rng = np.random.default_rng(1)
    head = rt.FinalLayer(rng.normal(size=(8, 3)).astype(np.float32), np.zeros(3, np.float32))
    folder = rt.export_saved_model(net, head, ["a", "b", "c"], tmp_path / "model")
    assert json.loads((folder / "model_info.json").read_text())["central_crop"] == 0.5
    image = np.zeros((64, 96, 3), np.uint8)
    image[16:48, 32:64] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # only the centre matters
    Image.fromarray(image).save(tmp_path / "x.png")
    expected = head.predict_proba(net.features(data.load_image(tmp_path / "x.png", 32, 0.5)[None]))[0]
    model = tf.saved_model.load(str(folder))
    from_bytes = model.signatures["serving_default"](image_bytes=tf.constant([(tmp_path / "x.png").read_bytes()]))
    np.testing.assert_allclose(from_bytes["probabilities"].numpy()[0], expected, atol=1e-4)
    whole = head.predict_proba(net.features(data.load_image(tmp_path / "x.png", 32)[None]))[0]
    assert np.abs(whole - expected).max() > 1e-3  # the crop made a difference worth testing
    [result] = label_image.classify([tmp_path / "x.png"], folder, use_unknown=False)
    np.testing.assert_allclose([p for _, p in sorted(result["top_k"])], expected, atol=1e-5)
