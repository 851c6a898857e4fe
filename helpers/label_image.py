"""Classify image files with a model exported by ``retrain``: the ``label_image`` command.

    label_image --saved_model_dir /tmp/flowers_model photo.jpg more_photos/
    label_image --saved_model_dir /tmp/flowers_model --json photo.jpg
    label_image --model /tmp/flowers.tflite photo.jpg    (a TensorFlow Lite file from retrain)

Images are decoded by ``data.load_image``, exactly as for training, and fed to
the SavedModel's ``classify_images`` signature; a file that cannot be decoded is
reported and the others are still classified. ``classify`` is the same thing as
a library call.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import helpers  # noqa: F401  (TensorFlow switches first)
from helpers import data, unknown

__all__ = ["classify", "expand_paths", "load_model", "main"]

LABELS_FILE = "labels.txt"
UNKNOWN_RULE_FILE = "unknown_rule.json"
MODEL_INFO_FILE = "model_info.json"


def load_model(saved_model_dir):
    """``(model, labels, info)`` of an exported model; a clear error when the folder is not one."""
    import tensorflow as tf

    folder = Path(saved_model_dir)
    if folder.suffix == ".tflite":  # a TensorFlow Lite file: the interpreter plays the SavedModel's part
        from helpers import tflite

        return tflite.load_for_label_image(folder)
    if not (folder / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{folder} is not a SavedModel folder (no saved_model.pb): "
                                "give the --saved_model_dir that retrain wrote.")
    labels = (folder / LABELS_FILE).read_text().splitlines()
    info = json.loads((folder / MODEL_INFO_FILE).read_text()) if (folder / MODEL_INFO_FILE).is_file() else {}
    info["unknown_rule"] = unknown.load_detector(folder)  # None when the model stores no rule
    return tf.saved_model.load(str(folder)), labels, info


def expand_paths(paths) -> list[Path]:
    """Files as given; folders replaced by the image files inside them (recursively, sorted)."""
    result = []
    for path in map(Path, paths):
        if path.is_dir():
            result += sorted(p for p in path.rglob("*")
                             if p.is_file() and p.suffix.lower() in data.IMAGE_EXTENSIONS and not p.name.startswith("."))
        else:
            result.append(path)
    return result


def classify(paths, saved_model_dir, top_k: int = 5, use_unknown: bool = True, batch_size: int = 32,
             model=None) -> list[dict]:
    """Classify image files (or folders of them) with an exported model.

    Returns one dict per file, in order: ``path``, ``label``, ``score`` (its
    probability) and ``top_k`` (a list of ``[label, probability]``), or
    ``path`` and ``error`` for a file that cannot be decoded. When the model
    folder stores an unknown rule (issue 6) and ``use_unknown``, entries also
    get ``known_label`` and ``unknown_score``. ``model`` may be a
    ``load_model`` result, to avoid reloading it for every call.
    """
    import tensorflow as tf

    model, labels, info = model or load_model(saved_model_dir)
    size = int(info.get("input_size") or 224)
    central_crop = float(info.get("central_crop") or 1.0)  # models exported before the crop: whole image
    top_k = max(1, min(int(top_k), len(labels)))
    results: list[dict] = []
    good: list[tuple[int, np.ndarray]] = []
    for path in expand_paths(paths):
        try:
            good.append((len(results), data.load_image(path, size, central_crop)))
            results.append({"path": str(path)})
        except data.BadImageError as error:
            results.append({"path": str(path), "error": error.reason})
    rule = info.get("unknown_rule") if use_unknown else None
    classify_images = model.signatures["classify_images"]
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        outputs = classify_images(images=tf.constant(np.stack([image for _, image in chunk])))
        probabilities = outputs["probabilities"].numpy()
        for (position, _), probs in zip(chunk, probabilities):
            order = np.argsort(-probs)[:top_k]
            results[position].update(label=labels[order[0]], score=float(probs[order[0]]),
                                     top_k=[[labels[j], float(probs[j])] for j in order])
        if rule is not None:
            _apply_unknown_rule([results[position] for position, _ in chunk], rule, outputs)
    return results


def _apply_unknown_rule(entries: list[dict], rule, outputs) -> None:
    """Where the stored rule rejects an image, answer "unknown"; keep what it would have been and why."""
    if "features" not in outputs:
        raise NotImplementedError("this model stores an unknown rule but does not output its features: "
                                  "export it again with retrain, or run with --no_unknown")
    scores = rule.score(outputs["features"].numpy(), outputs["logits"].numpy())
    for entry, score in zip(entries, scores):
        entry.update(known_label=entry["label"], unknown_score=float(score), unknown_threshold=rule.threshold_)
        if score < rule.threshold_:
            entry["label"] = "unknown"


def _print_text(results: list[dict]) -> None:
    for result in results:
        if "error" in result:
            print(f"{result['path']}: cannot classify ({result['error']})")
            continue
        print(result["path"])
        if result["label"] == "unknown" and "known_label" in result:
            print(f"  unknown: not like the training images (unknown score {result['unknown_score']:.3f} "
                  f"< threshold {result['unknown_threshold']:.3f}); otherwise {result['known_label']}")
        for label, probability in result["top_k"]:
            print(f"  {label} (score = {probability:.5f})")


def main(argv=None) -> int:
    """Entry point of ``label_image`` / ``python -m helpers.label_image``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="label_image", description="Classify images with a model exported by "
                                     "retrain (top-k labels per image).")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="Image files or folders of images.")
    parser.add_argument("--saved_model_dir", "--model", dest="saved_model_dir", required=True,
                        help="The folder retrain exported the model to, or a .tflite file it wrote.")
    parser.add_argument("--top_k", type=int, default=5, help="How many labels to show per image.")
    parser.add_argument("--json", action="store_true",
                        help="Print a JSON list of {path, label, score, top_k} instead of text.")
    parser.add_argument("--no_unknown", action="store_true", help="Ignore a stored unknown rule.")
    args = parser.parse_args(argv)
    try:
        results = classify(args.paths, args.saved_model_dir, args.top_k, use_unknown=not args.no_unknown)
    except (FileNotFoundError, NotImplementedError, ValueError) as error:
        print(f"label_image: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_text(results)
    failed = sum("error" in r for r in results)
    if failed:
        print(f"label_image: {failed} of {len(results)} files could not be classified.", file=sys.stderr)
    return 1 if failed == len(results) else 0


if __name__ == "__main__":
    sys.exit(main())
