"""helpers.basics: the neuron/gradient-descent arithmetic, the small networks, convolutions, counts, checks."""
import numpy as np
import pytest

from helpers import basics


# --- a neuron, a layer, a network, a loss ---------------------------------------------------------
def test_neuron_is_weighted_sum_plus_bias_through_activation():
    out = basics.neuron([1.0, 0.5], [0.8, -0.4], 0.1, "sigmoid")
    assert out == pytest.approx(1 / (1 + np.exp(-0.7)))
    assert basics.neuron([1.0, 0.5], [0.8, -0.4], 0.1, "relu") == pytest.approx(0.7)
    assert basics.neuron([1.0, 0.5], [-0.8, -0.4], 0.1, "relu") == 0.0


def test_neuron_rejects_mismatched_inputs_and_unknown_activation():
    with pytest.raises(ValueError, match="3 inputs but 2 weights"):
        basics.neuron([1, 2, 3], [1, 2], 0.0)
    with pytest.raises(ValueError, match="Unknown activation 'softplus'"):
        basics.activate([0.0], "softplus")


def test_dense_layer_is_one_neuron_per_column():
    rng = np.random.default_rng(0)
    x, weights, biases = rng.normal(size=4), rng.normal(size=(4, 3)), rng.normal(size=3)
    by_neuron = [basics.neuron(x, weights[:, j], biases[j], "tanh") for j in range(3)]
    np.testing.assert_allclose(basics.dense_layer(x, weights, biases, "tanh"), by_neuron)
    with pytest.raises(ValueError, match="biases"):
        basics.dense_layer(x, weights, biases[:2])


def test_forward_pass_returns_every_layer_output_with_the_right_shapes():
    rng = np.random.default_rng(1)
    network = [(rng.normal(size=(2, 5)), np.zeros(5), "relu"), (rng.normal(size=(5, 3)), np.zeros(3), "identity")]
    outputs = basics.forward_pass(rng.normal(size=(7, 2)), network)
    assert [o.shape for o in outputs] == [(7, 2), (7, 5), (7, 3)]
    assert (outputs[1] >= 0).all()  # ReLU


def test_softmax_and_cross_entropy():
    p = basics.softmax([2.0, 1.0, -1.0])
    assert p.sum() == pytest.approx(1.0) and p.argmax() == 0
    assert basics.cross_entropy([1.0, 0.0], 0) == pytest.approx(0.0)
    assert basics.cross_entropy(p, 2) > basics.cross_entropy(p, 0)


# --- gradient descent ---------------------------------------------------------------------------
def test_line_fit_gradients_match_finite_differences():
    x, y, w, b, eps = [1, 2, 3], [3, 5, 7], 0.7, -0.3, 1e-6
    loss, grad_w, grad_b = basics.line_fit_gradients(x, y, w, b)
    assert loss == pytest.approx(basics.squared_error(w * np.array(x) + b, y))
    assert grad_w == pytest.approx((basics.line_fit_gradients(x, y, w + eps, b)[0] - loss) / eps, rel=1e-4)
    assert grad_b == pytest.approx((basics.line_fit_gradients(x, y, w, b + eps)[0] - loss) / eps, rel=1e-4)


def test_gradient_descent_finds_the_line_and_a_large_step_diverges():
    history = basics.gradient_descent([1, 2, 3], [3, 5, 7], learning_rate=0.05, steps=300)
    assert len(history) == 301 and history[0].step == 0
    assert history[-1].w == pytest.approx(2.0, abs=0.02) and history[-1].b == pytest.approx(1.0, abs=0.05)
    first = basics.gradient_descent([1, 2, 3], [3, 5, 7], learning_rate=0.05, steps=1)
    assert first[1].w == pytest.approx(0.0 - 0.05 * first[0].grad_w)
    diverged = basics.gradient_descent([1, 2, 3], [3, 5, 7], learning_rate=0.2, steps=10)
    assert diverged[-1].loss > diverged[0].loss
    with pytest.raises(ValueError):
        basics.gradient_descent([1], [1], learning_rate=0)


# --- digits and moons ---------------------------------------------------------------------------
def test_digits_split_is_complete_disjoint_and_stratified():
    data = basics.load_digits_split()
    assert sum(data.sizes().values()) == 1797
    assert data.x_train.shape[1] == 64 and 0 <= data.x_train.min() and data.x_train.max() <= 1
    counts = np.bincount(data.y_test, minlength=10)
    assert counts.min() >= 30 and counts.max() <= 40  # ~36 of each digit in 360
    train_rows = {row.tobytes() for row in data.x_train}
    assert sum(row.tobytes() in train_rows for row in data.x_test) <= 5  # only the few duplicate digits


def test_build_classifier_rejects_empty_hidden_layer():
    with pytest.raises(ValueError, match="at least one unit"):
        basics.build_classifier(2, 2, (0,))


def test_moons_playground_training_is_seeded_and_learns():
    data = basics.make_moons_split()
    first = basics.train_moons(8, 0.03, 150, data=data)
    again = basics.train_moons(8, 0.03, 150, data=data)
    assert first.history["loss"] == again.history["loss"]
    assert len(first.history["val_loss"]) == 150
    assert first.history["loss"][-1] < 0.5 * first.history["loss"][0]
    assert first.test_accuracy >= 0.8
    xx, yy, p = basics.decision_grid(first.model, data.x_train, resolution=40)
    assert xx.shape == yy.shape == p.shape == (40, 40) and 0 <= p.min() and p.max() <= 1
    with pytest.raises(ValueError, match="epochs"):
        basics.train_moons(epochs=0, data=data)


# --- convolutions and sizes ---------------------------------------------------------------------
def test_convolution_kernels_do_what_their_names_say():
    images = basics.edge_test_images()
    np.testing.assert_allclose(basics.convolve(images["vertical"], basics.KERNELS["identity"]), images["vertical"])
    np.testing.assert_allclose(basics.convolve(images["flat"], basics.KERNELS["blur"]), images["flat"], atol=1e-6)
    vertical = basics.kernel_responses(basics.KERNELS["vertical edges (Sobel)"])
    assert vertical["flat"] == 0 and vertical["horizontal"] == 0 and vertical["vertical"] == 4
    colour = basics.convolve(np.ones((5, 6, 3)), basics.KERNELS["sharpen"])
    assert colour.shape == (5, 6, 3)
    with pytest.raises(ValueError, match="2-D"):
        basics.convolve(images["flat"], np.ones(3))


def test_load_photo_ships_with_scikit_image():
    photo = basics.load_photo("chelsea")
    assert photo.ndim == 2 and photo.shape == (300, 451) and 0 <= photo.min() and photo.max() <= 1
    with pytest.raises(ValueError, match="no photo called"):
        basics.load_photo("no_such_photo")


def test_model_size_and_dense_versus_convolution_counts():
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.layers.Input((8, 8, 1)), tf.keras.layers.Conv2D(4, 3),
                                 tf.keras.layers.DepthwiseConv2D(3), tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(10)])
    size = basics.model_size(model)
    assert (size.layers, size.conv_layers, size.dense_layers) == (4, 2, 1)
    assert size.parameters == (9 * 4 + 4) + (9 * 4 + 4) + (4 * 4 * 4 * 10 + 10)
    assert basics.dense_vs_conv_parameters(224, 3, 32, 3) == {"dense": 224 * 224 * 3 * 32 + 32,
                                                             "convolution": 3 * 3 * 3 * 32 + 32}


# --- feature-space tools (notebook 2) -----------------------------------------------------------
def test_knn_accuracy_embedding_and_neighbours_on_separable_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 20) * 10
    x = np.concatenate([c + rng.normal(size=(30, 20)) for c in centres])
    y = np.repeat(np.arange(3), 30)
    assert basics.knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], k=3) == 1.0
    with pytest.raises(ValueError, match="k=5"):
        basics.knn_accuracy(x[:3], y[:3], x, y, k=5)
    assert basics.embed_2d(x, "pca").shape == (90, 2)
    assert basics.embed_2d(x, "tsne").shape == (90, 2)
    with pytest.raises(ValueError, match="'pca' or 'tsne'"):
        basics.embed_2d(x, "umap")
    indices, distances = basics.nearest_neighbours(x, 0, k=5)
    assert 0 not in indices and len(indices) == 5 and (y[indices] == 0).all()
    assert np.all(np.diff(distances) >= 0)
    with pytest.raises(IndexError):
        basics.nearest_neighbours(x, 90)


# --- exercise checks: they accept the solutions and reject wrong answers ---------------------------
def test_exercise_checks(capsys):
    assert basics.check_diverging_learning_rate(None) is False
    assert basics.check_diverging_learning_rate(0.05) is False
    assert basics.check_diverging_learning_rate(0.2) is True
    assert basics.check_diagonal_kernel(basics.KERNELS["vertical edges (Sobel)"]) is False
    assert basics.check_diagonal_kernel(np.ones((3, 3))) is False  # answers flat regions
    assert basics.check_diagonal_kernel([[-2, -1, 0], [-1, 0, 1], [0, 1, 2]]) is True
    assert basics.check_diagonal_kernel(np.zeros((5, 5))) is False
    assert basics.check_small_digits_network(None) is False
    assert "Not answered yet" in capsys.readouterr().out


# --- figures and widgets render headless -------------------------------------------------------
def test_plots_return_figures_and_widgets_render_once():
    import ipywidgets
    from matplotlib.figure import Figure

    from helpers import plots, widgets

    history = basics.gradient_descent([1, 2, 3], [3, 5, 7], learning_rate=0.05, steps=5)
    figures = [plots.plot_activations(), plots.plot_network([2, 3, 2]),
               plots.plot_gradient_descent([1, 2, 3], [3, 5, 7], history, upto=2),
               plots.plot_digit_images(np.zeros((3, 64)), [1, 2, 3], [1, 2, 4]),
               plots.plot_learning_curves({"loss": [1, 0.5], "val_loss": [1, 0.7], "accuracy": [0.5, 0.8],
                                           "val_accuracy": [0.5, 0.7]})]
    assert all(isinstance(f, Figure) for f in figures)
    explorer = widgets.gradient_descent_explorer([1, 2, 3], [3, 5, 7], history)
    kernels = widgets.kernel_explorer(np.random.default_rng(0).random((20, 20)))
    for widget in (explorer, kernels):
        assert isinstance(widget, ipywidgets.VBox)
        controls, output = widget.children
        assert all(not getattr(c, "continuous_update", False) for c in controls.children)
        assert isinstance(output, ipywidgets.Output)
