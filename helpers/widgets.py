"""widgets.py: the interactive controls; each function returns an ipywidgets widget"""


# ---------------------------------------------------------------------------
# Notebook 1: neural-network basics (logic in helpers.basics, figures in helpers.plots)
# Every control has continuous_update=False, and interactive_output runs the
# function once at creation, so the figure appears headless (nbval) as well as live.
# ---------------------------------------------------------------------------


def _controls_and_output(function, controls: dict):
    """Wire ``controls`` (name -> widget) to ``function(**values)`` and lay them out above its output."""
    import ipywidgets as w

    output = w.interactive_output(function, controls)
    return w.VBox([w.HBox(list(controls.values())), output])


def _show(fig) -> None:
    from IPython.display import display

    display(fig)


def gradient_descent_explorer(x, y, history):
    """A slider over the steps of :func:`helpers.basics.gradient_descent`: the line and the loss at each step."""
    import ipywidgets as w

    from helpers import plots

    step = w.IntSlider(value=0, min=0, max=len(history) - 1, description="step", continuous_update=False)
    return _controls_and_output(lambda step: _show(plots.plot_gradient_descent(x, y, history, upto=step)),
                                {"step": step})


def moons_playground(data=None, seed: int = 42):
    """Sliders for hidden units, learning rate and epochs; each change retrains on the two moons and redraws.

    Shows the decision boundary, the loss curves and the test accuracy
    (:func:`helpers.basics.train_moons`, about a second per retraining).
    """
    import ipywidgets as w

    from helpers import basics, plots

    data = data or basics.make_moons_split(seed=seed)
    style = {"description_width": "initial"}
    controls = {
        "hidden_units": w.IntSlider(value=8, min=1, max=64, description="hidden units", style=style,
                                    continuous_update=False),
        "learning_rate": w.FloatLogSlider(value=0.03, base=10, min=-3, max=0, step=0.25, description="learning rate",
                                          style=style, readout_format=".3f", continuous_update=False),
        "epochs": w.IntSlider(value=200, min=10, max=1000, step=10, description="epochs", style=style,
                              continuous_update=False),
    }

    def retrain(hidden_units, learning_rate, epochs):
        result = basics.train_moons(hidden_units, learning_rate, epochs, data=data, seed=seed)
        xx, yy, probability = basics.decision_grid(result.model, data.x_train)
        print(f"test accuracy {result.test_accuracy:.1%} | final training loss {result.history['loss'][-1]:.3f}, "
              f"validation loss {result.history['val_loss'][-1]:.3f} | trained in {result.seconds:.1f} s")
        _show(plots.plot_playground(xx, yy, probability, data, result.history))

    return _controls_and_output(retrain, controls)


def kernel_explorer(image, kernels=None):
    """A drop-down of convolution kernels; shows the photo, the kernel and the filtered photo."""
    import ipywidgets as w

    from helpers import basics, plots

    kernels = kernels or basics.KERNELS
    choice = w.Dropdown(options=list(kernels), value=list(kernels)[0], description="kernel")

    def show(name):
        _show(plots.plot_convolution(image, kernels[name], basics.convolve(image, kernels[name]), name))

    return _controls_and_output(show, {"name": choice})


# ---------------------------------------------------------------------------
# Notebook 4: chest X-rays (metrics from helpers.evaluation, figure from helpers.plots)
# ---------------------------------------------------------------------------


def threshold_explorer(y_true, positive_scores, classes=("negative", "positive"), threshold: float = 0.5,
                       marks: dict | None = None):
    """A slider that moves the decision threshold and redraws the confusion matrix and the metrics.

    ``y_true`` is 1 for the positive class (``classes[1]``) and ``positive_scores`` its
    probability; "positive" means score >= threshold. ``marks`` ``{label: threshold}``
    are listed beside the slider (e.g. the threshold chosen on validation) so that
    you can slide to them. Metrics come from ``helpers.evaluation.binary_metrics``.
    """
    import ipywidgets as w

    from helpers import plots
    from helpers.evaluation import binary_metrics

    slider = w.FloatSlider(value=float(threshold), min=0.0, max=1.0, step=0.01, description="threshold",
                           readout_format=".2f", continuous_update=False, layout=w.Layout(width="380px"))

    def show(threshold):
        m = binary_metrics(y_true, positive_scores, threshold)
        print(f"accuracy {m['accuracy']:.1%} | sensitivity {m['sensitivity']:.1%} | specificity "
              f"{m['specificity']:.1%} | PPV {m['ppv']:.1%} | NPV {m['npv']:.1%}  (N={m['n']})")
        _show(plots.plot_binary_confusion(m["confusion_matrix"], list(classes), f"threshold {threshold:.2f}"))

    widget = _controls_and_output(show, {"threshold": slider})
    if marks:
        notes = "; ".join(f"{label}: {value:.2f}" for label, value in marks.items())
        widget.children[0].children += (w.HTML(f"<small>&nbsp; marks: {notes}</small>"),)
    return widget


# ---------------------------------------------------------------------------
# Notebook 5: the limits of a closed set (rule from helpers.unknown, figure from helpers.plots)
# ---------------------------------------------------------------------------


def unknown_threshold_explorer(images, scores, predicted_labels, is_unknown, threshold: float,
                               columns: int = 8):
    """A slider over the unknown rule's threshold: which images keep their label, which become "unknown".

    ``images`` are thumbnails (float [h, w, 3] in [0, 1]), ``scores`` the rule's
    score (higher = more known), ``predicted_labels`` what the classifier says,
    ``is_unknown`` True for images of no known class. Above the grid: the
    share of known images still accepted and of unknown images rejected. The
    slider starts at ``threshold`` (the one chosen on validation).
    """
    import ipywidgets as w
    import numpy as np

    from helpers import plots

    scores, is_unknown = np.asarray(scores, dtype=float), np.asarray(is_unknown, dtype=bool)
    low, high = float(scores.min()), float(scores.max())
    slider = w.FloatSlider(value=float(np.clip(threshold, low, high)), min=low, max=high,
                           step=(high - low) / 200 or 0.01, description="threshold", readout_format=".3g",
                           continuous_update=False, layout=w.Layout(width="420px"))

    def show(threshold):
        accepted = scores >= threshold
        known_ok, unknown_out = accepted[~is_unknown], ~accepted[is_unknown]
        print(f"known images accepted: {known_ok.sum()}/{known_ok.size} ({known_ok.mean():.0%}) | "
              f"unknown images answered 'unknown': {unknown_out.sum()}/{unknown_out.size} "
              f"({unknown_out.mean():.0%})")
        titles = [f"{label}\n{s:.2f}" if ok else f"unknown ({label})\n{s:.2f}"
                  for label, s, ok in zip(predicted_labels, scores, accepted)]
        _show(plots.plot_accept_reject(images, titles, accepted, columns))

    return _controls_and_output(show, {"threshold": slider})


# ---------------------------------------------------------------------------
# Notebook 2: bottleneck features (neighbours from helpers.basics, figure from helpers.plots)
# ---------------------------------------------------------------------------


def neighbour_explorer(features, paths, labels, classes, k: int = 5, start: int = 0):
    """Pick an image (by number); see its ``k`` nearest neighbours in feature space (cosine distance)."""
    import ipywidgets as w

    from helpers import basics, plots

    choice = w.BoundedIntText(value=start, min=0, max=len(paths) - 1, description="image #",
                              continuous_update=False)
    slider = w.IntSlider(value=start, min=0, max=len(paths) - 1, continuous_update=False, readout=False)
    w.link((choice, "value"), (slider, "value"))

    def show(query):
        neighbours, distances = basics.nearest_neighbours(features, query, k=k)
        _show(plots.plot_neighbours(paths, labels, classes, query, neighbours, distances))

    output = w.interactive_output(show, {"query": choice})
    return w.VBox([w.HBox([choice, slider]), output])


# ---------------------------------------------------------------------------
# Notebook 3: retraining the final layer on flowers (helpers.retrain, helpers.label_image, helpers.plots)
# ---------------------------------------------------------------------------


def retrain_explorer(features: dict, labels: dict, classes, steps: int = 4000, learning_rate: float = 0.01,
                     batch_size: int = 100, seed: int = 42):
    """Sliders for steps, learning rate and batch size; each change retrains the head from the cached bottlenecks.

    ``features`` / ``labels`` map ``"training"``, ``"validation"``, ``"testing"`` to
    arrays. Every retraining calls :func:`helpers.retrain.train_final_layer` (a few
    seconds), redraws the curves and prints validation and test accuracy. Choose
    settings by the validation figure; the test figure is there to show how little
    (or how much) it moves.
    """
    import time

    import ipywidgets as w

    from helpers import plots
    from helpers.evaluation import accuracy_with_ci
    from helpers.retrain import train_final_layer

    style = {"description_width": "initial"}
    controls = {
        "steps": w.IntSlider(value=steps, min=100, max=8000, step=100, description="steps", style=style,
                             continuous_update=False),
        "learning_rate": w.FloatLogSlider(value=learning_rate, base=10, min=-4, max=0.5, step=0.25,
                                          description="learning rate", readout_format=".4f", style=style,
                                          continuous_update=False),
        "batch_size": w.IntSlider(value=batch_size, min=10, max=1000, step=10, description="batch size",
                                  style=style, continuous_update=False),
    }

    def retrain(steps, learning_rate, batch_size):
        start = time.perf_counter()
        layer = train_final_layer(features["training"], labels["training"], features["validation"],
                                  labels["validation"], len(classes), steps, learning_rate, batch_size,
                                  seed=seed, progress=False)
        seconds = time.perf_counter() - start
        scores = {split: accuracy_with_ci(labels[split], layer.predict(features[split]))
                  for split in ("validation", "testing")}
        print(" | ".join(f"{split} accuracy {a:.1%} [{low:.1%}, {high:.1%}] N={n}"
                         for split, (a, low, high, n) in scores.items()) + f" | trained in {seconds:.1f} s")
        _show(plots.plot_retrain_history(layer.history, f"{steps} steps, learning rate {learning_rate:.4g}, "
                                                        f"batch {batch_size}"))

    return _controls_and_output(retrain, controls)


def classify_image_bytes(content: bytes, saved_model_dir, top_k: int = 5, name: str = "upload", model=None) -> dict:
    """Classify an image given as bytes (an uploaded file) with an exported model.

    The bytes go to a temporary file that :func:`helpers.label_image.classify`
    reads, so an upload is decoded exactly like a file on disk (EXIF rotation
    included). Returns its result dict (``label``, ``score``, ``top_k``) plus
    ``image`` (the decoded picture, for display), or ``error`` when the bytes are
    not an image. ``model`` (a ``label_image.load_model`` result) saves reloading the model.
    """
    import tempfile
    from pathlib import Path

    from helpers import data, label_image

    if not content:
        return {"path": name, "error": "empty file (0 bytes)"}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / (Path(name).name or "upload")
        path.write_bytes(bytes(content))
        result = label_image.classify([path], saved_model_dir, top_k=top_k, model=model)[0]
        if "error" not in result:
            result["image"] = data.load_image(path, 224)
    result["path"] = name
    return result


def photo_classifier(saved_model_dir, example, top_k: int = 5):
    """A file-upload button that classifies your photo and shows its top probabilities as bars.

    Until you upload something it shows ``example`` (an image path), so the widget
    has content when the notebook runs without anyone at the keyboard.
    """
    from pathlib import Path

    import ipywidgets as w

    from helpers import label_image, plots

    model = label_image.load_model(saved_model_dir)  # once, not at every upload
    upload = w.FileUpload(accept="image/*", multiple=False, description="Upload a photo")
    output = w.Output()

    def show(name, content):
        output.clear_output(wait=True)
        with output:
            result = classify_image_bytes(content, saved_model_dir, top_k, name, model=model)
            if "error" in result:
                print(f"{name}: cannot classify ({result['error']})")
                return
            _show(plots.plot_top_probabilities(result["image"], result["top_k"],
                                               f"{name}: {result['label']} ({result['score']:.0%})"))

    def on_upload(change):
        for item in change["new"]:
            show(item["name"], bytes(item["content"]))

    upload.observe(on_upload, names="value")
    example = Path(example)
    show(example.name, example.read_bytes())
    return w.VBox([upload, output])
