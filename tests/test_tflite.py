"""TensorFlow Lite export: float and int8 files, the interpreter runner, labels beside the file.

A small convolutional classifier (conv + BatchNorm + ReLU6, like EfficientNet-Lite)
is trained for a few seconds to tell red, green and blue images apart, so that the
float and int8 conversions can be compared on real accuracy and real file sizes.
The real EfficientNet-Lite0 is converted by the command test at the end
(``retrain --fine_tune_blocks 1 --tflite_output_file ... --quantize int8``, then
``label_image`` on the .tflite file) and by notebook 6's test.
"""
import json

import numpy as np
import pytest
from PIL import Image

import helpers  # noqa: F401
import tensorflow as tf

from helpers import tflite

SIZE = 32


def colour_images(n, seed):
    """Noisy images whose dominant colour channel is the label (0 red, 1 green, 2 blue)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.uniform(0.0, 0.5, (n, SIZE, SIZE, 3)).astype(np.float32)
    images[np.arange(n), :, :, labels] += 0.4
    return images, labels


@pytest.fixture(scope="module")
def trained():
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((SIZE, SIZE, 3))
    x = tf.keras.layers.Conv2D(64, 3, padding="same", use_bias=False)(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.ReLU(6.0)(x)
    x = tf.keras.layers.Conv2D(128, 3, strides=2, padding="same", activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(3, activation="softmax")(x)
    model = tf.keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x_train, y_train = colour_images(300, seed=1)
    model.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def converted(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    representative = colour_images(50, seed=2)[0]
    float_file = tflite.convert(trained, folder / "model.tflite")
    int8_file = tflite.convert(trained, folder / "model_int8.tflite", quantize="int8", representative=representative)
    return float_file, int8_file


def test_float_tflite_gives_the_keras_probabilities(trained, converted):
    images, _ = colour_images(20, seed=3)
    model = tflite.load_tflite(converted[0], batch_size=8)  # 20 images = 2 full batches + a padded one
    assert model.input_size == SIZE and model.n_classes == 3 and not model.quantized
    np.testing.assert_allclose(model.predict_proba(images), trained.predict(images, verbose=0), atol=1e-4)


def test_int8_model_is_quantised_smaller_and_as_accurate(trained, converted):
    float_model, int8_model = tflite.load_tflite(converted[0]), tflite.load_tflite(converted[1])
    assert int8_model.quantized
    assert int8_model.size_bytes < float_model.size_bytes / 3
    images, labels = colour_images(200, seed=4)
    float_accuracy = np.mean(float_model.predict(images) == labels)
    int8_accuracy = np.mean(int8_model.predict(images) == labels)
    assert float_accuracy > 0.9, float_accuracy
    assert int8_accuracy >= float_accuracy - 0.02, (int8_accuracy, float_accuracy)
    probabilities = int8_model.predict_proba(images)  # float output although it computes in int8
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=0.02)


def test_images_per_second_is_measured(converted):
    images, _ = colour_images(16, seed=5)
    rate = tflite.images_per_second(tflite.load_tflite(converted[1]).predict_proba, images)
    assert np.isfinite(rate) and rate > 0
    with pytest.raises(ValueError, match="at least one image"):
        tflite.images_per_second(lambda x: x, np.zeros((0, SIZE, SIZE, 3)))


def test_bad_requests_get_clear_messages(trained, tmp_path):
    with pytest.raises(ValueError, match="quantize must be one of"):
        tflite.convert(trained, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="representative images"):
        tflite.convert(trained, tmp_path / "m.tflite", quantize="int8")
    with pytest.raises(ValueError, match=r"representative images must be \[n, 32, 32, 3\]"):
        tflite.convert(trained, tmp_path / "m.tflite", quantize="int8", representative=np.zeros((2, 8, 8, 3)))
    assert not (tmp_path / "m.tflite").exists()
    with pytest.raises(FileNotFoundError, match="no TensorFlow Lite model"):
        tflite.load_tflite(tmp_path / "missing.tflite")
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ValueError, match="not a valid TensorFlow Lite model"):
        tflite.load_tflite(tmp_path / "junk.tflite")


def test_wrong_image_shape_is_refused(converted):
    model = tflite.load_tflite(converted[0])
    with pytest.raises(ValueError, match=r"expected images \[n, 32, 32, 3\]"):
        model.predict_proba(np.zeros((2, 64, 64, 3), np.float32))


@pytest.mark.filterwarnings("ignore:.*validation images are too few")
def test_sidecar_round_trip_and_labels_only(tmp_path):
    from helpers.unknown import UnknownDetector

    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(40, 8)), np.repeat([0, 1], 20)
    rule = UnknownDetector("knn+msp").fit(features, labels, features[::2], rng.normal(size=(20, 2)))
    model_file = tmp_path / "flowers.tflite"
    info_file = tflite.write_sidecar(model_file, ["daisy", "roses"], 224, "int8", unknown_rule=rule)
    assert info_file.name == "flowers.json"
    assert (tmp_path / "flowers.labels.txt").read_text() == "daisy\nroses\n"
    info = tflite.read_sidecar(model_file)
    assert info["labels"] == ["daisy", "roses"] and info["input_size"] == 224 and info["quantize"] == "int8"
    stored = info["unknown_rule"]
    assert stored.method == "knn+msp" and stored.threshold_ == pytest.approx(rule.threshold_)
    tflite.write_sidecar(model_file, ["daisy", "roses"], 224)  # written again without a rule: the old one goes
    assert tflite.read_sidecar(model_file)["unknown_rule"] is None
    assert not (tmp_path / "flowers.unknown_rule.npz").exists()
    info_file.unlink()  # a labels file alone is enough
    assert tflite.read_sidecar(model_file)["labels"] == ["daisy", "roses"]
    (tmp_path / "flowers.labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="flowers.labels.txt"):
        tflite.read_sidecar(model_file)


def test_load_images_skips_bad_files_and_picks_representatives(tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(path)
        paths.append(path)
    (tmp_path / "broken.jpg").write_bytes(b"")
    images, kept, errors = tflite.load_images([*paths[:2], tmp_path / "broken.jpg", *paths[2:]], SIZE)
    assert images.shape == (5, SIZE, SIZE, 3) and kept == [0, 1, 3, 4, 5] and list(errors) == [2]
    chosen = tflite.representative_images(paths, SIZE, n=3, seed=0)
    assert chosen.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_array_equal(chosen, tflite.representative_images(paths, SIZE, n=3, seed=0))
    with pytest.raises(ValueError, match="no images"):
        tflite.representative_images([], SIZE)


def test_saved_model_and_tflite_compared_side_by_side(trained, converted, tmp_path):
    from types import SimpleNamespace

    from helpers.retrain import FinalLayer, export_saved_model

    features = tf.keras.Model(trained.input, trained.layers[-2].output)
    kernel, bias = trained.layers[-1].get_weights()
    backbone = SimpleNamespace(layer=features, input_size=SIZE, name="tiny", id="tiny-1")
    folder = export_saved_model(backbone, FinalLayer(kernel, bias), ["red", "green", "blue"], tmp_path / "saved")
    saved = tflite.SavedModelRunner(folder, batch_size=8)
    images, labels = colour_images(40, seed=6)
    np.testing.assert_allclose(saved.predict_proba(images), trained.predict(images, verbose=0), atol=1e-4)
    assert saved.input_size == SIZE and saved.size_bytes > 0
    models = {"SavedModel": saved, "float": tflite.load_tflite(converted[0]), "int8": tflite.load_tflite(converted[1])}
    rows = tflite.compare_formats(models, images, labels, min_seconds=0.0)
    assert list(rows) == ["SavedModel", "float", "int8"]
    assert rows["SavedModel"]["accuracy"] == rows["float"]["accuracy"] > 0.9 and rows["int8"]["n"] == 40
    assert rows["int8"]["megabytes"] < rows["float"]["megabytes"] / 3
    assert all(row["images_per_second"] > 0 for row in rows.values())
    table = tflite.format_comparison(rows).data
    assert table.count("\n") == 4 and "| int8 |" in table
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        tflite.SavedModelRunner(tmp_path)
    plain = tflite.SavedModelRunner(tflite.export_saved_model(trained, tmp_path / "plain"))  # the Keras model as is
    assert plain.input_size == SIZE
    np.testing.assert_allclose(plain.predict_proba(images), trained.predict(images, verbose=0), atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*validation images are too few")
def test_label_image_can_use_a_tflite_file_like_a_saved_model(trained, tmp_path):
    from types import SimpleNamespace

    from helpers.retrain import FinalLayer
    from helpers.unknown import UnknownDetector

    features = tf.keras.Model(trained.input, trained.layers[-2].output)
    kernel, bias = trained.layers[-1].get_weights()
    head = FinalLayer(kernel, bias)
    x_train, y_train = colour_images(60, seed=8)
    f_train = features.predict(x_train, verbose=0)
    rule = UnknownDetector("knn+msp").fit(f_train, y_train, f_train[::2], head.logits(f_train[::2]))
    backbone = SimpleNamespace(layer=features, input_size=SIZE, name="tiny", id="tiny-1")
    path = tflite.export_classifier(backbone, head, ["red", "green", "blue"], tmp_path / "colours.tflite",
                                    unknown_rule=rule)
    model, labels, info = tflite.load_for_label_image(path)
    assert labels == ["red", "green", "blue"] and info["input_size"] == SIZE and info["quantize"] == "none"
    assert info["unknown_rule"].threshold_ == pytest.approx(rule.threshold_)
    images, truth = colour_images(12, seed=7)
    big = tf.image.resize(images, [48, 48]).numpy()  # other sizes are resized, as the SavedModel does
    outputs = {k: v.numpy() for k, v in model.signatures["classify_images"](images=tf.constant(big)).items()}
    assert outputs["features"].shape == (12, 128) and outputs["logits"].shape == (12, 3)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(outputs["logits"], head.logits(outputs["features"]), atol=1e-4)
    assert np.mean(outputs["probabilities"].argmax(axis=1) == truth) >= 0.9
    tflite.write_sidecar(path, ["red", "green"], SIZE)  # wrong number of labels
    with pytest.raises(ValueError, match="3 outputs but its labels file lists 2"):
        tflite.load_for_label_image(path)
    with pytest.raises(ValueError, match=r"must end in \.tflite"):
        tflite.export_classifier(backbone, head, labels, tmp_path / "colours.lite")


# --------------------------------------------------------------------------- the commands
def test_retrain_refuses_bad_fine_tune_and_tflite_flags(tmp_path, capsys):
    from helpers import retrain

    cases = [
        (["--quantize", "int8"], "--quantize int8 needs --tflite_output_file"),
        (["--tflite_output_file", str(tmp_path / "model.tfl")], "must end in .tflite"),
        (["--fine_tune_blocks", "16"], "fine_tune_blocks must be between 1 and 15"),
        (["--fine_tune_blocks", "-1"], "--fine_tune_blocks must be 0 (last layer only) or more"),
        (["--fine_tune_blocks", "2", "--tfhub_module", "inception_v3"], "needs a bundled backbone"),
    ]
    for flags, message in cases:
        assert retrain.main(["--image_dir", str(tmp_path), *flags]) == 2, flags
        assert message in capsys.readouterr().err, flags


@pytest.mark.slow
def test_retrain_fine_tunes_and_writes_tflite_that_label_image_reads(tmp_path, capsys):
    import os
    import re

    from helpers import label_image

    from tests.test_retrain import FLOWERS, run_command

    if not FLOWERS.is_dir():
        pytest.skip("needs ../shared/datasets/flower_photos")
    model_dir, tflite_file, metrics_file = tmp_path / "model", tmp_path / "flowers.tflite", tmp_path / "m.json"
    done = run_command("helpers.retrain", "--image_dir", str(FLOWERS), "--max_images_per_class", "8",
                       "--how_many_training_steps", "200", "--eval_step_interval", "100", "--fine_tune_blocks", "1",
                       "--saved_model_dir", str(model_dir), "--tflite_output_file", str(tflite_file),
                       "--quantize", "int8", "--metrics_json", str(metrics_file))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Fine-tuning the top 1 blocks of efficientnet_lite0" in out and "fine-tuned the top 1 blocks" in out
    assert re.search(r"^Final test accuracy = [\d.]+% \(N=40\)", out, re.MULTILINE)
    assert "Saved the TensorFlow Lite model (int8)" in out
    metrics = json.loads(metrics_file.read_text())
    assert metrics["run"]["fine_tune_blocks"] == 1 and metrics["run"]["quantize"] == "int8"
    assert "fine-tuned" in metrics["backbone"]["name"]
    # 40 training photos, 5 classes (chance 20%); the frozen start alone measured about 80%.
    assert metrics["splits"]["testing"]["accuracy"] >= 0.6, metrics["splits"]["testing"]

    shipped = tflite.load_tflite(tflite_file)
    assert shipped.quantized and shipped.size_bytes < 5e6 and shipped.input_size == 224
    classes = (model_dir / "labels.txt").read_text().split()
    assert (tmp_path / "flowers.labels.txt").read_text().split() == classes

    photos = [FLOWERS / name / min(os.listdir(FLOWERS / name)) for name in ("daisy", "roses", "sunflowers", "tulips")]
    answers = {}
    for model in (model_dir, tflite_file):  # in this process: the command's main(), its printed JSON
        assert label_image.main(["--model", str(model), "--json", *map(str, photos)]) == 0
        answers[model.suffix] = json.loads(capsys.readouterr().out)
    for saved, lite in zip(answers[""], answers[".tflite"]):
        assert saved.keys() == lite.keys() and saved["path"] == lite["path"]
        assert sorted(label for label, _ in lite["top_k"]) == sorted(classes)
        assert sum(p for _, p in lite["top_k"]) == pytest.approx(1.0, abs=0.02)
        saved_p, lite_p = dict(saved["top_k"]), dict(lite["top_k"])
        assert max(abs(saved_p[c] - lite_p[c]) for c in classes) < 0.15  # int8 rounding, measured below 0.07
        if saved["score"] - saved["top_k"][1][1] > 0.3:
            assert lite["label"] == saved["label"]
