"""helpers.explain: Grad-CAM and occlusion maps must peak where the answer is known.

A tiny hand-built network sees only colour: feature channel 0 is the red in each
4x4 block, channel 1 the green. With a red square in the top-left corner and a
green one in the bottom-right, the map for the "red" class must sit on the red
square and the map for "green" on the green one. The real backbone is checked
for shapes, range and for the identity Grad-CAM = CAM that holds when a linear
head sits on average-pooled features.
"""
import numpy as np
import pytest

import helpers  # noqa: F401
from helpers import explain

SIZE = 32
RED = (slice(0, 8), slice(0, 8))
GREEN = (slice(24, 32), slice(20, 32))


@pytest.fixture(scope="module")
def colour_model():
    """Input 32x32 RGB -> 8x8x2 map (red, green per 4x4 block) -> average pooling."""
    import tensorflow as tf

    inputs = tf.keras.Input((SIZE, SIZE, 3))
    conv = tf.keras.layers.Conv2D(2, 4, strides=4, use_bias=False, name="colour_map")
    feature_map = conv(inputs)
    kernel = np.zeros((4, 4, 3, 2), np.float32)
    kernel[:, :, 0, 0] = 1 / 16  # red -> channel 0
    kernel[:, :, 1, 1] = 1 / 16  # green -> channel 1
    conv.set_weights([kernel])
    pooled = tf.keras.layers.GlobalAveragePooling2D(name="pool")(feature_map)
    return tf.keras.Model(inputs, pooled, name="colour_model")


@pytest.fixture()
def two_squares():
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    image[RED + (0,)] = 1.0
    image[GREEN + (1,)] = 1.0
    return image


HEAD_W = np.array([[1.0, 0.5], [0.5, 1.0]], np.float32)  # class 0 likes red, class 1 green
HEAD_B = np.zeros(2, np.float32)


def _peak(heatmap):
    return np.unravel_index(np.argmax(heatmap), heatmap.shape)


def _inside(heatmap, region):
    mask = np.zeros(heatmap.shape, bool)
    mask[region] = True
    return heatmap[mask].mean(), heatmap[~mask].mean()


def test_last_conv_layer_is_the_spatial_map(colour_model):
    assert explain.last_conv_layer_name(colour_model) == "colour_map"


@pytest.mark.parametrize("class_index, region", [(0, RED), (1, GREEN)])
def test_gradcam_peaks_on_the_region_that_raises_the_class(colour_model, two_squares, class_index, region):
    heatmap = explain.gradcam(two_squares, colour_model, HEAD_W, HEAD_B, class_index)
    assert heatmap.shape == (SIZE, SIZE)
    assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)
    row, col = _peak(heatmap)
    assert region[0].start <= row < region[0].stop and region[1].start <= col < region[1].stop
    inside, outside = _inside(heatmap, region)
    assert inside > 3 * outside


def test_gradcam_equals_cam_for_a_linear_head_on_pooled_features(colour_model, two_squares):
    heatmap = explain.gradcam(two_squares, colour_model, HEAD_W, HEAD_B, 0)
    feature_map = two_squares.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))[..., :2]  # what the conv computes
    cam = np.maximum(feature_map @ HEAD_W[:, 0], 0)
    expected = explain._resize(cam, (SIZE, SIZE))
    np.testing.assert_allclose(heatmap, expected / expected.max(), atol=1e-5)


def test_log_odds_target_ignores_evidence_shared_with_the_other_class(colour_model, two_squares):
    logit_map = explain.gradcam(two_squares, colour_model, HEAD_W, HEAD_B, 0, target="logit")
    odds_map = explain.gradcam(two_squares, colour_model, HEAD_W, HEAD_B, 0, target="log_odds")
    # Green raises class 0's logit (weight 0.5) but raises class 1's more: no evidence *for* class 0.
    assert logit_map[28, 28] > 0.3
    assert odds_map[28, 28] == pytest.approx(0.0, abs=1e-6)
    assert odds_map[4, 4] == pytest.approx(1.0, abs=1e-6)


def test_gradcam_resizes_to_the_model_input_and_back(colour_model, two_squares):
    import tensorflow as tf

    big = tf.image.resize(two_squares, (64, 48), method="nearest").numpy()
    heatmap = explain.gradcam(big, colour_model, HEAD_W, HEAD_B, 1)
    assert heatmap.shape == (64, 48)
    row, col = _peak(heatmap)
    assert row >= 40 and col >= 28  # the green square, bottom right


@pytest.mark.parametrize("class_index, region", [(0, RED), (1, GREEN)])
def test_occlusion_peaks_where_hiding_lowers_the_score(colour_model, two_squares, class_index, region):
    predict = explain.head_predictor(colour_model, HEAD_W * 8, HEAD_B)  # sharper softmax
    heatmap = explain.occlusion(two_squares, predict, class_index, patch_size=8, stride=4, fill=0.0)
    assert heatmap.shape == (SIZE, SIZE)
    assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)
    inside, outside = _inside(heatmap, region)
    assert inside > 3 * outside
    row, col = _peak(heatmap)
    assert region[0].start - 4 <= row < region[0].stop + 4 and region[1].start - 4 <= col < region[1].stop + 4


def test_occlusion_of_a_blank_image_is_all_zero(colour_model):
    predict = explain.head_predictor(colour_model, HEAD_W, HEAD_B)
    heatmap = explain.occlusion(np.zeros((SIZE, SIZE, 3), np.float32), predict, 0, fill=0.0)
    assert heatmap.shape == (SIZE, SIZE) and not heatmap.any()


def test_overlay_is_an_rgb_image_in_range(two_squares):
    heatmap = np.linspace(0, 1, SIZE * SIZE).reshape(SIZE, SIZE)
    blended = explain.overlay(two_squares, heatmap)
    assert blended.shape == (SIZE, SIZE, 3) and 0 <= blended.min() and blended.max() <= 1


@pytest.mark.parametrize("kwargs, message", [
    ({"class_index": 2}, "class_index 2 is out of range"),
    ({"image": np.zeros((SIZE, SIZE))}, r"shape \[height, width, 3\]"),
    ({"image": np.full((SIZE, SIZE, 3), 255.0)}, r"pixel values in \[0, 1\]"),
    ({"head_weights": np.ones((3, 2)), "head_bias": np.zeros(2)}, "gives 2 features but the head expects 3"),
    ({"head_bias": np.zeros(3)}, "head_weights must be"),
    ({"target": "probability"}, "target must be one of"),
    ({"layer_name": "nope"}, "no layer named 'nope'"),
])
def test_gradcam_bad_input_gets_a_clear_message(colour_model, two_squares, kwargs, message):
    args = {"image": two_squares, "keras_backbone": colour_model, "head_weights": HEAD_W,
            "head_bias": HEAD_B, "class_index": 0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        explain.gradcam(**args)


def test_occlusion_bad_patch_gets_a_clear_message(colour_model, two_squares):
    predict = explain.head_predictor(colour_model, HEAD_W, HEAD_B)
    with pytest.raises(ValueError, match="patch_size must be in 1..32"):
        explain.occlusion(two_squares, predict, 0, patch_size=40)
    with pytest.raises(ValueError, match="class_index 5 is out of range"):
        explain.occlusion(two_squares, predict, 5)


@pytest.mark.slow
def test_gradcam_on_the_bundled_backbone_is_cam_on_its_head_map():
    """Real EfficientNet-Lite0: the map is 7x7x1280, the heat map has the image's size, in [0, 1]."""
    import tensorflow as tf

    from helpers.efficientnet_lite import build_keras_model

    model = build_keras_model("efficientnet_lite0")
    layer = explain.last_conv_layer_name(model)
    assert tuple(model.get_layer(layer).output.shape[1:]) == (7, 7, 1280)

    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(0.5, 0.2, (180, 200, 3)), 0, 1).astype(np.float32)
    image[40:90, 50:120] = 1.0
    weights = rng.normal(0, 0.05, (1280, 2)).astype(np.float32)
    bias = np.zeros(2, np.float32)
    heatmap = explain.gradcam(image, model, weights, bias, 1)
    assert heatmap.shape == (180, 200)
    assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)

    resized = tf.image.resize(image[None], (224, 224)).numpy()
    feature_map = tf.keras.Model(model.inputs, model.get_layer(layer).output)(resized)[0].numpy()
    cam = np.maximum(feature_map @ weights[:, 1], 0)
    expected = explain._resize(cam, (180, 200))
    np.testing.assert_allclose(heatmap, expected / expected.max(), atol=1e-4)


def test_threshold_explorer_recomputes_the_metrics_when_the_slider_moves(capsys):
    import ipywidgets

    from helpers import widgets

    y = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.4, 0.7, 0.3, 0.8, 0.9])
    widget = widgets.threshold_explorer(y, scores, ("NORMAL", "PNEUMONIA"), 0.5, marks={"Youden": 0.35})
    controls, output = widget.children
    slider, note = controls.children
    assert isinstance(output, ipywidgets.Output) and not slider.continuous_update
    assert "Youden: 0.35" in note.value
    assert "accuracy 66.7% | sensitivity 66.7% | specificity 66.7%" in capsys.readouterr().out
    slider.value = 0.75  # the false alarm at 0.7 is cleared
    assert "accuracy 83.3% | sensitivity 66.7% | specificity 100.0% | PPV 100.0% | NPV 75.0%" in capsys.readouterr().out


def test_chest_xray_figures_draw_what_they_are_given(two_squares):
    from matplotlib.figure import Figure

    from helpers import plots

    counts = {"NORMAL": {"training": 10, "testing": 5}, "PNEUMONIA": {"training": 30, "testing": 5}}
    balance = plots.plot_class_balance(counts)
    labels = [t.get_text() for t in balance.axes[0].texts]
    assert "30\n75%" in labels and "5\n50%" in labels
    y, scores = np.array([0, 0, 1, 1]), np.array([0.2, 0.6, 0.4, 0.9])
    roc = plots.plot_roc({"validation": (y, scores)}, {"0.5": 0.5})
    assert any("AUC 0.750" in t.get_text() for t in roc.axes[0].get_legend().get_texts())
    confusion = plots.plot_binary_confusion([[1, 1], [1, 1]], ["NORMAL", "PNEUMONIA"])
    assert [t.get_text() for t in confusion.axes[0].texts] == ["1\n50%"] * 4
    heat = plots.plot_heatmaps([two_squares] * 2, [np.zeros((SIZE, SIZE))] * 2, ["a", "b"], pairs_per_row=2)
    comparison = plots.plot_metric_comparison({"paper": {"accuracy": 0.9}, "ours": {"accuracy": 0.8, "auc": 0.95}})
    assert all(isinstance(f, Figure) for f in (balance, roc, confusion, heat, comparison))
    assert len(heat.axes) == 4 and len(comparison.axes[0].patches) == 3  # the paper's missing AUC is not drawn
