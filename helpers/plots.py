"""plots.py: the figures the notebooks show; each function takes data and returns a matplotlib Figure"""


# ---------------------------------------------------------------------------
# Notebook 1: neural-network basics (data from helpers.basics)
# Figures are built with matplotlib.figure.Figure (not pyplot), so a notebook
# shows each one exactly once and no figure is left open in memory.
# ---------------------------------------------------------------------------


def _figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6, **kwargs):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def plot_activations(names=("step", "sigmoid", "tanh", "relu")):
    """The activation functions side by side: what a neuron does with its weighted sum z."""
    import numpy as np

    from helpers.basics import activate

    fig, axes = _figure(len(names), width=2.6, height=2.4, sharey=True)
    z = np.linspace(-4, 4, 401)
    for ax, name in zip(axes[0], names):
        ax.plot(z, activate(z, name), lw=2)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set(title=name, xlabel="weighted sum z")
    axes[0, 0].set_ylabel("output")
    return fig


def plot_network(layer_sizes, labels=None):
    """A network diagram: one column of circles per layer, every neuron wired to the next layer."""
    import numpy as np

    fig, axes = _figure(width=1.6 * len(layer_sizes) + 1, height=3.2)
    ax = axes[0, 0]
    tallest = max(layer_sizes)
    positions = [np.linspace(0, 1, n) * (n - 1) / max(tallest - 1, 1) + 0.5 * (1 - (n - 1) / max(tallest - 1, 1))
                 for n in layer_sizes]
    for i, (left, right) in enumerate(zip(positions, positions[1:])):
        for y0 in left:
            for y1 in right:
                ax.plot([i, i + 1], [y0, y1], color="0.7", lw=0.8, zorder=1)
    for i, ys in enumerate(positions):
        ax.scatter(np.full(len(ys), i), ys, s=350, color="tab:blue" if 0 < i < len(positions) - 1 else "tab:orange",
                   edgecolor="black", zorder=2)
    names = labels or (["input"] + [f"hidden {i}" for i in range(1, len(layer_sizes) - 1)] + ["output"])
    for i, (name, n) in enumerate(zip(names, layer_sizes)):
        ax.text(i, -0.15, f"{name}\n({n})", ha="center", va="top")
    ax.set(xlim=(-0.5, len(layer_sizes) - 0.5), ylim=(-0.45, 1.1))
    ax.axis("off")
    return fig


def plot_gradient_descent(x, y, history, upto: int | None = None):
    """Gradient descent on a line fit: the line at each step (left) and the loss going down (right).

    ``history`` is the list from :func:`helpers.basics.gradient_descent`; ``upto``
    shows only the first steps (the widget's slider).
    """
    import numpy as np

    upto = len(history) - 1 if upto is None else min(upto, len(history) - 1)
    fig, axes = _figure(2, width=4.6, height=3.4)
    left, right = axes[0]
    x = np.asarray(x, dtype=float)
    grid = np.linspace(x.min() - 0.5, x.max() + 0.5, 50)
    for step in history[: upto + 1]:
        last = step.step == upto
        left.plot(grid, step.w * grid + step.b, color="tab:red" if last else "0.75", lw=2.5 if last else 1,
                  label=f"step {upto}: y = {step.w:.2f} x + {step.b:.2f}" if last else None)
    left.scatter(x, y, s=60, color="black", zorder=3, label="data")
    left.set(xlabel="x", ylabel="y", title="the line after each step")
    left.legend(loc="upper left")
    steps = [s.step for s in history]
    losses = [s.loss for s in history]
    right.plot(steps, losses, color="0.8", marker=".")
    right.plot(steps[: upto + 1], losses[: upto + 1], color="tab:red", marker="o")
    right.set(xlabel="step", ylabel="loss (mean squared error)", yscale="log",
              title=f"loss at step {upto}: {losses[upto]:.4f}")
    return fig


def plot_digit_images(images, labels, predictions=None, n: int = 20, columns: int = 10):
    """A grid of 8x8 digit images with their label (and the prediction, red when it is wrong)."""
    import numpy as np

    images = np.asarray(images)[:n].reshape(-1, 8, 8)
    rows = int(np.ceil(len(images) / columns))
    fig, axes = _figure(columns, rows, width=0.9, height=1.1)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= len(images):
            continue
        ax.imshow(images[i], cmap="gray_r")
        title = str(labels[i])
        wrong = predictions is not None and predictions[i] != labels[i]
        if predictions is not None:
            title = f"{labels[i]}→{predictions[i]}"
        ax.set_title(title, color="tab:red" if wrong else "black", fontsize=9)
    return fig


def plot_learning_curves(history, title: str = ""):
    """Loss and accuracy per epoch on training and validation data; the best validation epoch is marked.

    When the validation loss turns back up while the training loss keeps going
    down, the network is memorising its training set: overfitting.
    """
    import numpy as np

    fig, axes = _figure(2, width=4.6, height=3.2)
    epochs = np.arange(1, len(history["loss"]) + 1)
    best = int(np.argmin(history["val_loss"])) + 1
    for ax, metric in zip(axes[0], ["loss", "accuracy"]):
        ax.plot(epochs, history[metric], label="training")
        ax.plot(epochs, history["val_" + metric], label="validation")
        ax.axvline(best, color="grey", ls="--", lw=1, label=f"lowest validation loss (epoch {best})")
        ax.set(xlabel="epoch", ylabel=metric)
    axes[0, 0].legend()
    if title:
        fig.suptitle(title)
    return fig


def plot_playground(xx, yy, probability, split, history):
    """The two-moons playground: decision boundary with the points (left), learning curves (right).

    ``xx, yy, probability`` come from :func:`helpers.basics.decision_grid`,
    ``split`` is the :class:`helpers.basics.Split` the network was trained on.
    """
    import numpy as np

    fig, axes = _figure(2, width=4.6, height=3.6)
    left, right = axes[0]
    left.contourf(xx, yy, probability, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
    left.contour(xx, yy, probability, levels=[0.5], colors="black", linewidths=1.5)
    left.scatter(*split.x_train.T, c=split.y_train, cmap="RdBu_r", edgecolor="black", s=20, label="training")
    left.scatter(*split.x_test.T, c=split.y_test, cmap="RdBu_r", edgecolor="black", marker="s", s=30,
                 label="test")
    left.legend(loc="lower left", fontsize=8)
    left.set(title="decision boundary (black line)", xticks=[], yticks=[])
    right.plot(history["loss"], label="training loss")
    right.plot(history["val_loss"], label="validation loss")
    right.set(xlabel="epoch", ylabel="cross-entropy", title="loss curve")
    right.legend()
    return fig


def plot_convolution(image, kernel, result, kernel_name: str = ""):
    """A convolution at work: the photo, the 3x3 kernel with its numbers, and the filtered photo."""
    import numpy as np

    fig, axes = _figure(3, width=3.6, height=3.0, gridspec_kw={"width_ratios": [3, 1.3, 3]})
    original, weights, filtered = axes[0]
    original.imshow(image, cmap="gray")
    original.set_title("input photo")
    limit = max(np.abs(kernel).max(), 1e-6)
    weights.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit)
    for (i, j), value in np.ndenumerate(kernel):
        weights.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=9)
    weights.set_title(f"kernel\n{kernel_name}", fontsize=9)
    filtered.imshow(result, cmap="gray")
    filtered.set_title("after convolution")
    for ax in axes[0]:
        ax.set(xticks=[], yticks=[])
    return fig


# ---------------------------------------------------------------------------
# Notebook 4: chest X-rays (imbalance, ROC, confusion matrix, heat maps from helpers.explain)
# ---------------------------------------------------------------------------


def plot_class_balance(counts: dict, title: str = "Images per class and split"):
    """Bars of ``{class: {split: count}}`` (``ImageSplits.counts()``), one group per split, each with its share.

    An unbalanced set shows at a glance, and so does the accuracy of a model that
    always answers the majority class: the tallest bar's share.
    """
    classes = list(counts)
    splits = [s for s in next(iter(counts.values())) if any(counts[c].get(s, 0) for c in classes)]
    fig, axes = _figure(width=1.4 + 1.5 * len(splits), height=3.2)
    ax = axes[0, 0]
    width = 0.8 / len(classes)
    totals = [sum(counts[c].get(s, 0) for c in classes) for s in splits]
    for i, name in enumerate(classes):
        xs = [j + (i - (len(classes) - 1) / 2) * width for j in range(len(splits))]
        values = [counts[name].get(s, 0) for s in splits]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, [f"{v}\n{v / t:.0%}" if t else "0" for v, t in zip(values, totals)], fontsize=8)
    ax.set_xticks(range(len(splits)), splits)
    ax.set(ylabel="images", title=title)
    ax.margins(y=0.3)
    ax.legend(frameon=False, loc="upper right")
    return fig


def plot_roc(curves: dict, operating_points: dict | None = None, title: str = "ROC curve"):
    """ROC curves with their AUC: ``curves`` maps a name to ``(y_true, positive_scores)``.

    ``operating_points`` maps a label to a threshold; each is marked on every curve
    at (1 - specificity, sensitivity), so you see what one threshold does on
    validation and on test.
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, axes = _figure(width=4.8, height=4.4)
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance (AUC 0.5)")
    for name, (y_true, scores) in curves.items():
        y_true, scores = np.asarray(y_true).astype(int), np.asarray(scores, dtype=float)
        fpr, tpr, _ = roc_curve(y_true, scores)
        line, = ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y_true, scores):.3f})")
        for i, (label, threshold) in enumerate((operating_points or {}).items()):
            predicted = scores >= threshold
            ax.plot(predicted[y_true == 0].mean(), predicted[y_true == 1].mean(), "osD^v"[i % 5], ms=7,
                    color=line.get_color(), mfc="white", label=f"  {label} (t={threshold:.2f})")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           title=title, xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    return fig


def plot_binary_confusion(matrix, classes, title: str = "", ax=None):
    """A 2x2 confusion matrix (rows = truth, columns = prediction) with counts and each row's shares.

    ``matrix`` is ``[[tn, fp], [fn, tp]]`` as ``helpers.evaluation.binary_metrics`` returns it;
    the diagonal of row shares is specificity (top) and sensitivity (bottom).
    """
    import numpy as np

    if ax is None:
        _, axes = _figure(width=3.4, height=3.0)
        ax = axes[0, 0]
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, f"{count}\n{shares[i, j]:.0%}", ha="center", va="center",
                color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return ax.figure


def plot_heatmaps(images, heatmaps, titles=None, pairs_per_row: int = 3, alpha: float = 0.45):
    """Each image twice: plain, and with its heat map (``helpers.explain``) blended on top.

    The plain copy matters: a colour overlay hides the details (a text marker, a
    tube, the edge of the film) that you want to check the map against.
    """
    import numpy as np

    from helpers.explain import overlay

    rows = max(1, -(-len(images) // pairs_per_row))
    fig, axes = _figure(2 * pairs_per_row, rows, width=2.1, height=2.3)
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, heat) in enumerate(zip(images, heatmaps)):
        plain, blended = axes.flat[2 * i], axes.flat[2 * i + 1]
        plain.imshow(np.clip(image, 0, 1))
        blended.imshow(overlay(image, heat, alpha=alpha))
        if titles is not None:
            plain.set_title(titles[i], fontsize=8, loc="left")
    return fig


# ---------------------------------------------------------------------------
# Notebook 5: the limits of a closed set (scores and curves from helpers.unknown)
# ---------------------------------------------------------------------------


def plot_score_histograms(scores: dict, threshold: float | None = None, xlabel: str = "score",
                          title: str = "", bins: int = 30):
    """Overlaid histograms of one score on several image sets: ``{set name: scores}``.

    Each set is normalised to its own total (images of very different counts can
    be compared), and its median is printed in the legend. ``threshold`` draws
    the accept/reject line: everything left of it would be answered "unknown".
    """
    import numpy as np

    fig, axes = _figure(width=6.0, height=3.4)
    ax = axes[0, 0]
    values = [np.asarray(v, dtype=float).ravel() for v in scores.values()]
    edges = np.histogram_bin_edges(np.concatenate(values), bins=bins)
    for (name, v) in zip(scores, values):
        ax.hist(v, edges, weights=np.full(len(v), 1 / max(len(v), 1)), alpha=0.5,
                label=f"{name} (N={len(v)}, median {np.median(v):.3g})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold {threshold:.3g}")
    ax.set(xlabel=xlabel, ylabel="share of the set's images", title=title)
    ax.legend(fontsize=8, frameon=False)
    return fig


def plot_ood_table(table: dict, metric: str = "auroc", title: str = ""):
    """A coloured table of ``table[score][unknown set][metric]`` (from ``helpers.unknown.ood_metrics``).

    Rows are scores, columns are kinds of unknown images. For ``auroc`` 1 is
    perfect and 0.5 is chance; for ``fpr_at_95_tpr`` 0 is perfect.
    """
    import numpy as np

    rows, columns = list(table), list(next(iter(table.values())))
    values = np.array([[table[r][c][metric] for c in columns] for r in rows])
    fig, axes = _figure(width=1.6 + 1.5 * len(columns), height=0.8 + 0.45 * len(rows))
    ax = axes[0, 0]
    good_high = metric == "auroc"
    ax.imshow(values if good_high else 1 - values, cmap="RdYlGn", vmin=0.5 if good_high else 0, vmax=1,
              aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.xaxis.tick_top()
    ax.set_title(title or metric, fontsize=10)
    return fig


def plot_accuracy_vs_accepted(curves: dict, marks: dict | None = None,
                              title: str = "Accuracy on the images the model accepts"):
    """Accuracy on accepted known images against the fraction accepted: ``{name: (fraction, accuracy)}``.

    ``helpers.unknown.accuracy_vs_accepted`` gives each curve. ``marks`` maps a
    label to a fraction accepted (e.g. the chosen threshold's) drawn as a vertical line.
    """
    fig, axes = _figure(width=5.4, height=3.6)
    ax = axes[0, 0]
    for name, (fraction, accuracy) in curves.items():
        ax.plot(fraction, accuracy, label=name)
    for label, fraction in (marks or {}).items():
        ax.axvline(fraction, color="grey", ls="--", lw=1)
        ax.text(fraction, ax.get_ylim()[0], f" {label}", rotation=90, va="bottom", fontsize=8)
    ax.set(xlabel="fraction of known images accepted", ylabel="accuracy on accepted images", title=title)
    ax.legend(fontsize=8, frameon=False, loc="lower left")
    return fig


def plot_reliability(curves: dict, title: str = "Reliability diagram"):
    """Reliability diagram: ``{name: (reliability_curve dict, ece)}`` from ``helpers.unknown``.

    Each point is a bin of images with about the same top probability: x is the
    mean probability the model gave, y how often it was right. On the diagonal
    the model is calibrated; below it, over-confident. Marker size ~ images in the bin.
    """
    import numpy as np

    fig, axes = _figure(width=4.6, height=4.4)
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="calibrated")
    for name, (curve, ece) in curves.items():
        sizes = 15 + 200 * np.asarray(curve["count"]) / np.sum(curve["count"])
        line, = ax.plot(curve["confidence"], curve["accuracy"], lw=1, label=f"{name} (ECE {ece:.3f})")
        ax.scatter(curve["confidence"], curve["accuracy"], s=sizes, color=line.get_color(), alpha=0.6)
    ax.set(xlabel="confidence (top softmax probability)", ylabel="accuracy in the bin", title=title,
           xlim=(0, 1.02), ylim=(0, 1.02), aspect="equal")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return fig


def plot_accept_reject(images, titles, accepted, columns: int = 8):
    """Thumbnails framed green (accepted: the model answers its class) or red (answered "unknown")."""
    import numpy as np

    rows = max(1, -(-len(images) // columns))
    fig, axes = _figure(columns, rows, width=1.35, height=1.55)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title, ok in zip(axes.flat, images, titles, accepted):
        ax.axis("on")
        ax.imshow(np.clip(image, 0, 1))
        ax.set(xticks=[], yticks=[])
        for spine in ax.spines.values():
            spine.set(color="tab:green" if ok else "tab:red", linewidth=3)
        ax.set_title(title, fontsize=7, color="black" if ok else "tab:red")
    return fig


def plot_xray_grid(paths, titles=None, size: int = 224, columns: int = 4):
    """A grid of image files (decoded with ``helpers.data.load_image`` at ``size``), titled."""
    from helpers.data import load_image

    rows = max(1, -(-len(paths) // columns))
    fig, axes = _figure(columns, rows, width=2.3, height=2.5)
    for ax in axes.flat:
        ax.axis("off")
    for i, path in enumerate(paths):
        axes.flat[i].imshow(load_image(path, size))
        axes.flat[i].set_title(titles[i] if titles is not None else path.name, fontsize=8)
    return fig


def plot_metric_comparison(rows: dict, metrics=("accuracy", "sensitivity", "specificity", "auc")):
    """Grouped bars: one group per metric, one bar per row of ``{name: {metric: value}}``.

    A metric a row does not report (a paper that gave no AUC) is left out, not drawn as zero.
    """
    fig, axes = _figure(width=8.5, height=3.6)
    ax = axes[0, 0]
    width = 0.8 / len(rows)
    for i, (name, values) in enumerate(rows.items()):
        shown = [(j, m) for j, m in enumerate(metrics) if values.get(m) is not None]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j, _ in shown]
        bars = ax.bar(xs, [values[m] for _, m in shown], width, label=name)
        ax.bar_label(bars, [f"{values[m]:.3f}" if m == "auc" else f"{values[m]:.1%}" for _, m in shown],
                     fontsize=7, rotation=90, padding=2)
    ax.set_xticks(range(len(metrics)), ["ROC AUC" if m == "auc" else m for m in metrics])
    lowest = min((v for values in rows.values() for m, v in values.items() if m in metrics and v is not None),
                 default=0.5)
    ax.set(ylim=(min(0.5, lowest - 0.05), 1.08), ylabel="value")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


# ---------------------------------------------------------------------------
# Notebook 2: bottleneck features (data from helpers.basics, helpers.backbones, helpers.bottlenecks)
# ---------------------------------------------------------------------------


def plot_network_funnel(model, bottleneck_layer: str = "avg_pool"):
    """How an image network reshapes a photo: spatial size shrinks while the number of channels grows.

    One point per layer with an image-shaped output (height x width x channels);
    the bottleneck (the pooled vector the classifier reads) is marked.
    """
    import numpy as np

    rows = [(i, layer.name, tuple(layer.output.shape)) for i, layer in enumerate(model.layers)]
    maps = [(i, shape[1], shape[-1]) for i, _, shape in rows if len(shape) == 4 and shape[1] is not None]
    fig, axes = _figure(width=9, height=3.4)
    ax = axes[0, 0]
    index, size, channels = (np.array(v) for v in zip(*maps))
    ax.plot(index, size, color="tab:blue", label="height = width (pixels)")
    ax.set(xlabel="layer", ylabel="height = width", yscale="log")
    twin = ax.twinx()
    twin.plot(index, channels, color="tab:orange", label="channels")
    twin.set(ylabel="channels", yscale="log")
    where = [i for i, name, _ in rows if name == bottleneck_layer]
    if where:
        ax.axvline(where[0], color="black", ls="--", lw=1)
        ax.text(where[0], size.max(), f" bottleneck\n ({rows[where[0]][2][-1]} numbers)", ha="right", va="top")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    ax.set_title(f"a {size.max()}x{size.max()} photo becomes {size.min()}x{size.min()}x{channels.max()} "
                 f"feature maps, then one vector")
    return fig


def plot_top_k(images, predictions, titles=None, columns: int = 3):
    """Each image with the network's top-k guesses as horizontal bars (label and probability)."""
    import numpy as np

    n = len(images)
    columns = min(columns, n)
    rows = int(np.ceil(n / columns))
    fig, axes = _figure(2 * columns, rows, width=2.6, height=2.4,
                        gridspec_kw={"width_ratios": [1, 1.4] * columns})
    for ax in axes.ravel():
        ax.axis("off")
    for i, (image, guesses) in enumerate(zip(images, predictions)):
        picture, bars = axes[i // columns, 2 * (i % columns)], axes[i // columns, 2 * (i % columns) + 1]
        picture.imshow(image)
        picture.set_title(titles[i] if titles else "", fontsize=9)
        labels = [label.split(",")[0][:22] for label, _ in guesses][::-1]
        probs = [p for _, p in guesses][::-1]
        bars.axis("on")
        bars.barh(range(len(probs)), probs, color="tab:blue")
        bars.set_yticks(range(len(probs)), labels, fontsize=8)
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=7)
        bars.spines[["top", "right"]].set_visible(False)
    return fig


def plot_embedding(points, labels, classes, title: str = "", paths=None, cells: int = 12, thumb_size: int = 48):
    """A 2-D map of feature vectors, one colour per class; with ``paths``, a grid of image thumbnails beside it.

    Thumbnails come from :func:`helpers.basics.thumbnail_cells`: one image per
    grid cell, placed where its point lies on the map.
    """
    import numpy as np
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    from helpers import basics, data

    points, labels = np.asarray(points), np.asarray(labels)
    fig, axes = _figure(2 if paths is not None else 1, width=5.6, height=5.0)
    ax = axes[0, 0]
    colours = [f"C{i}" for i in range(len(classes))]
    for index, name in enumerate(classes):
        chosen = labels == index
        ax.scatter(*points[chosen].T, s=6, color=colours[index], label=f"{name} ({chosen.sum()})", alpha=0.7)
    ax.legend(markerscale=3, fontsize=8)
    ax.set(title=title, xticks=[], yticks=[])
    if paths is not None:
        grid = axes[0, 1]
        for index, x, y in basics.thumbnail_cells(points, cells):
            thumb = OffsetImage(data.load_image(paths[index], thumb_size), zoom=0.55)
            grid.add_artist(AnnotationBbox(thumb, (x, y), frameon=True, pad=0.05,
                                           bboxprops={"edgecolor": colours[labels[index]], "linewidth": 2}))
        grid.set(xlim=ax.get_xlim(), ylim=ax.get_ylim(), xticks=[], yticks=[],
                 title="the same map, one photo per cell (frame = class colour)")
    return fig


def plot_neighbours(paths, labels, classes, query: int, neighbours, distances, size: int = 160):
    """An image and its nearest neighbours in feature space; a neighbour's title is green when its class matches."""
    fig, axes = _figure(len(neighbours) + 1, width=2.0, height=2.3)
    shown = [query, *neighbours]
    for position, (ax, index) in enumerate(zip(axes[0], shown)):
        from helpers import data

        ax.imshow(data.load_image(paths[index], size))
        ax.set(xticks=[], yticks=[])
        name = classes[labels[index]]
        if position == 0:
            ax.set_title(f"image {index}\n{name}", fontsize=9, fontweight="bold")
        else:
            same = labels[index] == labels[query]
            ax.set_title(f"{name}\ndistance {distances[position - 1]:.2f}", fontsize=9,
                         color="tab:green" if same else "tab:red")
    return fig


def plot_accuracy_comparison(accuracies: dict, chance: float | None = None, title: str = ""):
    """Accuracies side by side as bars, with the value on each bar and the chance level as a line."""
    fig, axes = _figure(width=5.0, height=3.2)
    ax = axes[0, 0]
    names, values = list(accuracies), [accuracies[name] for name in accuracies]
    bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
    ax.bar_label(bars, labels=[f"{v:.1%}" for v in values])
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.0%})")
        ax.legend(loc="upper left")
    ax.set(ylim=(0, 1.05), ylabel="test accuracy", title=title)
    return fig


# ---------------------------------------------------------------------------
# Notebook 3: retraining the final layer on flowers (helpers.retrain, helpers.augment, helpers.experiments)
# ---------------------------------------------------------------------------


def plot_retrain_history(history, title: str = ""):
    """Accuracy and cross-entropy against training steps, on the training batch and on validation.

    ``history`` is ``FinalLayer.history`` (one entry every ``eval_step_interval``
    steps). The training curve is measured on one batch, so it is noisy; a gap that
    keeps widening between the two curves is the head memorising its training images.
    """
    fig, axes = _figure(2, width=4.6, height=3.2)
    steps = history["step"]
    for ax, (train_key, val_key, label) in zip(axes[0], [("train_accuracy", "validation_accuracy", "accuracy"),
                                                         ("cross_entropy", "validation_cross_entropy",
                                                          "cross-entropy")]):
        ax.plot(steps, history[train_key], lw=1, alpha=0.8, label="training batch")
        ax.plot(steps, history[val_key], lw=1, alpha=0.8, label="validation")
        ax.set(xlabel="training step", ylabel=label)
    axes[0, 0].set_ylim(top=1.01)
    axes[0, 0].legend(frameon=False, loc="lower right")
    if title:
        fig.suptitle(title)
    return fig


def plot_confusion_matrix(matrix, classes, title: str = ""):
    """A confusion matrix of any number of classes: rows = truth, columns = answer; counts and row shares.

    The colour is the row share, so a small class's mistakes show as clearly as a large one's;
    the diagonal of shares is each class's recall.
    """
    import numpy as np

    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, axes = _figure(width=1.2 + 0.85 * len(classes), height=1.0 + 0.75 * len(classes))
    ax = axes[0, 0]
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, f"{count}\n{shares[i, j]:.0%}" if count else "0", ha="center", va="center", fontsize=8,
                color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="answered", ylabel="true class", title=title)
    return fig


def plot_misclassified(paths, true_labels, predicted_labels, probabilities, classes, columns: int = 5,
                       size: int = 160):
    """A gallery of misclassified images titled "true -> predicted (probability)".

    ``probabilities`` is the probability the model gave its (wrong) answer.
    """
    import numpy as np

    from helpers.data import load_image

    rows = max(1, -(-len(paths) // columns))
    fig, axes = _figure(columns, rows, width=2.1, height=2.35)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, true, guess, p in zip(axes.flat, paths, true_labels, predicted_labels, probabilities):
        ax.imshow(load_image(path, size))
        ax.set_title(f"true: {classes[true]}\nsaid: {classes[guess]} ({p:.0%})", fontsize=8)
    if not len(paths):
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    return fig


def plot_distortions(rows: dict, photo_titles=None):
    """A grid of images: one column per distortion (``{name: images [n, h, w, 3]}``), one row per photo."""
    import numpy as np

    names = list(rows)
    n = len(next(iter(rows.values())))
    fig, axes = _figure(len(names), n, width=1.9, height=1.95)
    for j, name in enumerate(names):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(np.clip(np.asarray(rows[name][i]), 0, 1))
            ax.set(xticks=[], yticks=[])
            if i == 0:
                ax.set_title(name, fontsize=9)
            if j == 0 and photo_titles is not None:
                ax.set_ylabel(photo_titles[i], fontsize=8)
    return fig


def plot_top_probabilities(image, top_k, title: str = ""):
    """The image beside a bar chart of its top classes: ``top_k`` is a list of ``(label, probability)``."""
    import numpy as np

    fig, axes = _figure(2, width=3.0, height=2.6)
    axes[0, 0].imshow(np.clip(np.asarray(image), 0, 1))
    axes[0, 0].axis("off")
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    labels, values = [str(label) for label, _ in top_k][::-1], [float(p) for _, p in top_k][::-1]
    bars = axes[0, 1].barh(labels, values, color=["C0"] * (len(values) - 1) + ["C1"])
    axes[0, 1].bar_label(bars, [f"{v:.1%}" for v in values], fontsize=8, padding=2)
    axes[0, 1].set(xlim=(0, 1.18), xlabel="probability")
    return fig


def plot_experiment_results(results, reference: tuple | None = None, title: str = "Test accuracy per option"):
    """Test accuracy of each option (``helpers.experiments.Result``) with its 95% interval as an error bar.

    ``reference`` ``(name, accuracy, low, high)`` draws a published figure (the
    article's) as a shaded band: options whose bars overlap it are not shown to differ.
    """
    import numpy as np

    fig, axes = _figure(width=7.0, height=0.9 + 0.42 * len(results))
    ax = axes[0, 0]
    names = [r.name for r in results][::-1]
    acc = np.array([r.accuracy["testing"][0] for r in results][::-1])
    low = np.array([r.accuracy["testing"][1] for r in results][::-1])
    high = np.array([r.accuracy["testing"][2] for r in results][::-1])
    ax.errorbar(acc, range(len(names)), xerr=[acc - low, high - acc], fmt="o", capsize=4, color="C0")
    for y, a in enumerate(acc):
        ax.annotate(f"{a:.1%}", (a, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    if reference is not None:
        name, value, ref_low, ref_high = reference
        ax.axvspan(ref_low, ref_high, color="C1", alpha=0.15)
        ax.axvline(value, color="C1", ls="--", lw=1, label=f"{name}: {value:.1%} [{ref_low:.1%}, {ref_high:.1%}]")
        ax.legend(frameon=False, fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0))
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="test accuracy (95% interval)", title=title if reference is None else "")
    return fig


# ---------------------------------------------------------------------------
# Notebook 6: beyond the last layer (helpers.finetune, helpers.tflite)
# ---------------------------------------------------------------------------


def plot_fine_tuning_history(history: dict, start: dict | None = None, best_epoch: int | None = None,
                             title: str = ""):
    """Loss and accuracy per epoch of fine-tuning, training and validation side by side.

    ``history`` is Keras' (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``);
    ``start`` (``val_loss``, ``val_accuracy`` before fine-tuning) is drawn at epoch 0
    and ``best_epoch`` (the epoch early stopping kept; 0 = the frozen start) is marked.
    """
    fig, axes = _figure(2, width=4.2, height=3.0)
    for ax, key in zip(axes[0], ("loss", "accuracy")):
        epochs = list(range(1, len(history[key]) + 1))
        ax.plot(epochs, history[key], "o-", label="training (flipped maps, dropout)")
        val_epochs, val = epochs, list(history[f"val_{key}"])
        if start is not None:
            val_epochs, val = [0, *epochs], [start[f"val_{key}"], *val]
        ax.plot(val_epochs, val, "s-", label="validation")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1, label=f"kept: epoch {best_epoch}")
        ax.set(xlabel="epoch", ylabel=key)
    axes[0, 1].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_model_comparison(rows: dict, title: str = ""):
    """Three bar charts for the same models: file size (MB), test accuracy, images per second.

    ``rows`` maps a model name to ``{"megabytes", "accuracy", "images_per_second"}``.
    """
    fig, axes = _figure(3, width=3.2, height=2.8)
    names = list(rows)
    for ax, (key, label, fmt) in zip(axes[0], (("megabytes", "file size (MB)", "{:.1f}"),
                                               ("accuracy", "test accuracy", "{:.1%}"),
                                               ("images_per_second", "images per second", "{:.0f}"))):
        values = [rows[name][key] for name in names]
        bars = ax.bar(range(len(names)), values, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=8, padding=2)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set(title=label, ylim=(0, max(values) * 1.2))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
