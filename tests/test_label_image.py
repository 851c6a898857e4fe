"""label_image: classify files and folders with an exported model; bad files reported, not fatal.

The model here is the tiny stand-in backbone with a hand-set last layer that
answers "light" for bright images and "dark" for dark ones, so the expected
labels are known. The real exported flowers model is checked in test_retrain.
"""
import json

import numpy as np
import pytest
from PIL import Image

from helpers import label_image, retrain
from tests.test_bottlenecks import TinyBackbone


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Exported model whose head separates mean-bright from dark images (fitted on 40 synthetic images)."""
    net = TinyBackbone()
    rng = np.random.default_rng(0)
    levels = np.r_[rng.uniform(0.0, 0.3, 20), rng.uniform(0.7, 1.0, 20)]
    images = np.clip(levels[:, None, None, None] + rng.normal(0, 0.05, (40, 32, 32, 3)), 0, 1).astype(np.float32)
    x, y = net.features(images), np.r_[np.zeros(20, int), np.ones(20, int)]
    head = retrain.train_final_layer(x, y, x, y, 2, how_many_training_steps=300, learning_rate=1.0, progress=False)
    assert np.mean(head.predict(x) == y) == 1.0  # the fixture itself must work
    return retrain.export_saved_model(net, head, ["dark", "light"], tmp_path_factory.mktemp("m") / "model")


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(1)
    for name, level in (("dark1.png", 30), ("light1.jpg", 230), ("sub/light2.png", 220)):
        path = tmp_path / "imgs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(level + rng.normal(0, 10, (40, 30, 3)), 0, 255).astype(np.uint8)).save(path)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored: not an image extension")
    return tmp_path / "imgs"


def test_classify_folder_and_files(model_dir, image_folder):
    results = label_image.classify([image_folder, image_folder / "dark1.png", image_folder / "missing.png"],
                                   model_dir, top_k=2)
    by_name = [(r["path"].replace(str(image_folder) + "/", ""), r.get("label"), r.get("error")) for r in results]
    assert by_name == [("broken.jpg", None, "not an image (unrecognised content)"),
                       ("dark1.png", "dark", None), ("light1.jpg", "light", None), ("sub/light2.png", "light", None),
                       ("dark1.png", "dark", None), ("missing.png", None, "file not found")]
    good = [r for r in results if "label" in r]
    for r in good:
        assert len(r["top_k"]) == 2 and r["score"] == r["top_k"][0][1] > 0.5
        assert sum(p for _, p in r["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_main_prints_text_and_json(model_dir, image_folder, capsys):
    assert label_image.main(["--saved_model_dir", str(model_dir), str(image_folder / "light1.jpg"),
                             str(image_folder / "broken.jpg")]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].endswith("light1.jpg") and lines[1].strip().startswith("light (score = ")
    assert len(lines) == 4 and "broken.jpg: cannot classify" in lines[3]
    assert "1 of 2 files could not be classified" in captured.err

    assert label_image.main(["--saved_model_dir", str(model_dir), "--json", "--top_k", "9",
                             str(image_folder / "dark1.png")]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["label"] == "dark" and [label for label, _ in entry["top_k"]] == ["dark", "light"]


def test_main_errors(tmp_path, image_folder, capsys):
    assert label_image.main(["--saved_model_dir", str(tmp_path), str(image_folder)]) == 2
    assert "not a SavedModel folder" in capsys.readouterr().err
