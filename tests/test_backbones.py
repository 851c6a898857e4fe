"""helpers.backbones and helpers.efficientnet_lite: handles, bundled SavedModels, and proof the weights are right."""
import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from skimage import data, transform

import helpers  # noqa: F401  (TensorFlow switches first)
from helpers import backbones, efficientnet_lite
from helpers.backbones import (
    BUNDLED,
    HUB_MODULES,
    BackboneUnavailableError,
    input_size_for,
    load_backbone,
    resolve_handle,
)

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _photos(size):
    """skimage's cat (chelsea) and cup of coffee, float32 in [0, 1], resized to ``size``."""
    return np.stack([transform.resize(im, (size, size), anti_aliasing=True).astype(np.float32)
                     for im in (data.chelsea(), data.coffee())])


# --- handles and input sizes (nothing is downloaded or built) --------------------------
@pytest.mark.parametrize("name, size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
                                        ("efficientnet_lite2", 260), ("inception_v3", 299),
                                        ("mobilenet_v1_100_224", 224), ("mobilenet_v2_100_224", 224)])
def test_input_size_for_known_names(name, size):
    assert input_size_for(name) == size


def test_hub_handles_are_versioned_feature_vector_urls():
    for name, module in HUB_MODULES.items():
        assert module.handle.startswith("https://tfhub.dev/google/imagenet/")
        assert module.handle.split("/")[-2:] == ["feature_vector", module.handle.split("/")[-1]]
        assert module.handle.split("/")[-1].isdigit(), f"{name} handle is not versioned"
        resolved = resolve_handle(module.handle)  # the URL itself resolves to the same module
        assert (resolved.name, resolved.source, resolved.input_size) == (name, "hub", module.input_size)


def test_other_urls_resolve_without_downloading():
    r = resolve_handle("https://tfhub.dev/google/imagenet/mobilenet_v2_140_192/feature_vector/5")
    assert (r.source, r.input_size, r.feature_dim) == ("hub", 192, None)
    assert input_size_for("https://tfhub.dev/google/imagenet/inception_resnet_v2/feature_vector/5") == 299
    assert input_size_for("https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/5") == 224


def test_bad_names_and_folders_get_clear_messages(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'.*efficientnet_lite0.*inception_v3"):
        input_size_for("resnet9000")
    with pytest.raises(ValueError, match="not a SavedModel"):
        resolve_handle(str(tmp_path))
    with pytest.raises(ValueError, match="not a bundled backbone"):
        backbones.bundled_savedmodel("inception_v3")
    with pytest.raises(ValueError, match="kind must be one of"):
        backbones.bundled_savedmodel("efficientnet_lite0", kind="detector")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite model"):
        efficientnet_lite.build_keras_model("efficientnet_lite7")


def test_a_hub_url_that_cannot_be_downloaded_explains_itself(monkeypatch, tmp_path):
    import tensorflow_hub as hub

    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(hub, "KerasLayer", offline)
    with pytest.raises(BackboneUnavailableError, match=r"needs internet access.*efficientnet_lite0"):
        load_backbone("inception_v3")


def test_backbone_id_changes_with_weights_and_format(monkeypatch, tmp_path):
    original = backbones.bundled_id("efficientnet_lite0")
    assert original.startswith("efficientnet_lite0-") and original.endswith(f"-v{backbones.FORMAT_VERSION}")
    changed = tmp_path / "changed.pth"
    raw = bytearray(Path(efficientnet_lite.weight_file("efficientnet_lite0")).read_bytes())
    raw[-1] ^= 1
    changed.write_bytes(bytes(raw))
    monkeypatch.setattr(efficientnet_lite, "weight_file", lambda name: str(changed))
    assert backbones.bundled_id("efficientnet_lite0") != original
    monkeypatch.undo()
    monkeypatch.setattr(backbones, "FORMAT_VERSION", backbones.FORMAT_VERSION + 1)
    assert backbones.bundled_id("efficientnet_lite0") != original
    assert backbones.bundled_id("efficientnet_lite0", "classifier") != backbones.bundled_id("efficientnet_lite0")


# --- the network itself ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUNDLED))
def test_keras_model_recognises_a_cat_and_an_espresso(name):
    model = efficientnet_lite.build_keras_model(name, include_top=True)
    logits = model(_photos(BUNDLED[name]), training=False).numpy()
    assert logits.shape == (2, 1000)
    cat, coffee = logits.argmax(axis=1)
    assert cat in CAT_CLASSES, f"{name} thinks chelsea is class {cat}"
    assert coffee == ESPRESSO, f"{name} thinks the coffee is class {coffee}"


@pytest.mark.slow
def test_blocks_are_named_and_the_model_splits_cleanly():
    model = efficientnet_lite.build_keras_model("efficientnet_lite0")
    names = efficientnet_lite.block_names(model)
    assert names == [f"block{i:02d}" for i in range(16)]
    assert model.get_layer("head_relu6").output.shape[1:] == (7, 7, 1280)  # Grad-CAM's feature map
    assert model.output.shape[1:] == (1280,)
    lower, upper = efficientnet_lite.split_at_block(model, 12)
    assert lower.output.shape[1:] == (7, 7, 192)  # block 11 opened the stride-2 192-channel stage
    x = _photos(224)
    np.testing.assert_allclose(upper(lower(x)).numpy(), model(x).numpy(), atol=1e-5)
    assert {w.name for w in upper.trainable_weights} < {w.name for w in model.trainable_weights}
    with pytest.raises(ValueError, match="k must be between 1 and 15"):
        efficientnet_lite.split_at_block(model, 16)


# --- bundled SavedModels through hub.KerasLayer -----------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("cache")
        mp.setenv("COURSE_CACHE_DIR", str(root))
        yield root


@pytest.mark.slow
def test_bundled_feature_extractor_matches_the_keras_model(cache):
    folder = backbones.bundled_savedmodel("efficientnet_lite0")
    assert folder.parent == cache / "backbones" and (folder / "saved_model.pb").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary leftovers
    meta = json.loads((folder / backbones.METADATA_FILE).read_text())
    assert meta["input_size"] == 224 and meta["feature_dim"] == 1280
    built_at = (folder / "saved_model.pb").stat().st_mtime_ns
    assert backbones.bundled_savedmodel("efficientnet_lite0") == folder  # built once
    assert (folder / "saved_model.pb").stat().st_mtime_ns == built_at

    backbone = load_backbone("efficientnet_lite0")
    assert (backbone.name, backbone.input_size, backbone.feature_dim) == ("efficientnet_lite0", 224, 1280)
    # The id names the weights and the preprocessing: the network's own evaluation crop by default.
    assert backbone.central_crop == 0.875
    assert backbone.id == backbones.bundled_id("efficientnet_lite0") + "-crop0.875"
    assert backbones.bundled_id("efficientnet_lite0") == folder.name
    whole = load_backbone("efficientnet_lite0", central_crop=1)
    assert (whole.central_crop, whole.id) == (1.0, folder.name)
    with pytest.raises(ValueError, match="central_crop must be in"):
        load_backbone("efficientnet_lite0", central_crop=1.5)
    assert backbone.layer.trainable is False and not backbone.layer.trainable_weights
    x = _photos(224)
    features = backbone.features(np.concatenate([x] * 3), batch_size=4)  # 6 images, batches of 4 and 2
    assert features.shape == (6, 1280) and features.dtype == np.float32
    expected = efficientnet_lite.build_keras_model("efficientnet_lite0")(x, training=False).numpy()
    np.testing.assert_allclose(features[:2], expected, atol=1e-5)
    np.testing.assert_array_equal(features[:2], features[4:])
    assert backbone.features(np.zeros((0, 224, 224, 3), np.float32)).shape == (0, 1280)

    # the folder is also a valid handle by itself; its metadata tells the input size and width
    local = resolve_handle(str(folder))
    assert (local.source, local.input_size, local.feature_dim) == ("local", 224, 1280)

    with pytest.raises(ValueError, match="divide by 255"):
        backbone.features((x * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="divide by 255"):
        backbone.features(x * 255)
    with pytest.raises(ValueError, match=r"\[n, height, width, 3\]"):
        backbone.features(x[0])


@pytest.mark.slow
def test_imagenet_top_k_with_the_bundled_classifier(cache):
    labels = backbones.imagenet_labels()
    assert len(labels) == 1000 and labels[281] == "tabby, tabby cat" and labels[ESPRESSO] == "espresso"
    top = backbones.imagenet_top_k(_photos(300), k=3)  # resized to 224 inside
    assert [len(row) for row in top] == [3, 3]
    assert labels.index(top[0][0][0]) in CAT_CLASSES
    assert top[1][0][0] == "espresso"
    assert all(1 >= a[1] >= b[1] > 0 for row in top for a, b in pairwise(row))
    single = backbones.imagenet_top_k(_photos(224)[1], k=1)
    assert single[0][0][0] == "espresso"


def test_an_interrupted_build_leaves_no_model_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(backbones, "_export_savedmodel", crash)
    with pytest.raises(KeyboardInterrupt):
        backbones.bundled_savedmodel("efficientnet_lite0")
    leftovers = list((tmp_path / "backbones").iterdir())
    assert leftovers == []
