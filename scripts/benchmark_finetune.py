"""Fine-tuning benchmark (issue 7): how many blocks to fine-tune, chosen on validation; test reported.

    python scripts/benchmark_finetune.py                                  # flowers, 2 to 5 blocks (~20 min)
    python scripts/benchmark_finetune.py --dataset chest_xray --blocks 2 5
    python scripts/benchmark_finetune.py --quick                          # 16 images per class: a smoke run

For each candidate number of top blocks: the activations below them (cached, as
notebook 6 does), one distorted copy of each training image, then
``helpers.finetune.fine_tune`` with early stopping on validation. The pick is
the candidate with the best validation accuracy (a tie goes to fewer blocks,
the cheaper model); the test split of every candidate is reported beside it and
never used to choose. The X-rays use the official test folder, validation carved
out of train/ by patient, class weights and a threshold chosen on validation,
as notebooks 4 and 6 do. Results go to build/finetune_benchmark.md and .json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import helpers  # noqa: F401  (TensorFlow switches first)
from helpers import data, finetune, settings


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("flowers", "chest_xray"), default="flowers")
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 3, 4, 5], help="candidate numbers of blocks")
    parser.add_argument("--epochs", type=int, default=8, help="at most; early stopping may end sooner")
    parser.add_argument("--copies", type=int, default=1, help="distorted copies of each training image")
    parser.add_argument("--quick", action="store_true", help="16 images per class and split, 2 epochs")
    parser.add_argument("--output", default=None, help="default: build/finetune_benchmark.md")
    return parser.parse_args(argv)


def load_splits(dataset: str, quick: bool):
    """The splits notebook 6 uses, and the options that go with them."""
    if dataset == "flowers":
        splits = data.make_splits(data.find_dataset("flowers"))
        options = {"flip_left_right": True, "class_weights": None, "central_crop": None}
    else:
        root = data.find_dataset("chest_xray")
        splits = data.make_splits(root / "train", test_image_dir=root / "test", group_key=data.patient_id)
        options = {"flip_left_right": False, "class_weights": "balanced", "central_crop": 1}
    return (splits.subset(16) if quick else splits), options


def run_candidate(splits, blocks: int, options: dict, epochs: int, copies: int) -> dict:
    """Fine-tune the top ``blocks`` blocks; one row of the table (validation and test, seconds)."""
    started = time.perf_counter()
    maps = finetune.cached_activations(splits, blocks, progress=False, central_crop=options["central_crop"])
    distorted = finetune.distorted_activations(maps["training"], copies=copies,
                                               flip_left_right=options["flip_left_right"], random_crop=10,
                                               random_scale=10, random_brightness=10,
                                               progress=False) if copies else None
    model = finetune.fine_tune(maps, splits.classes, epochs=epochs, distorted=distorted,
                               flip_left_right=options["flip_left_right"], class_weights=options["class_weights"],
                               progress=False)
    row = finetune.evaluate_probabilities(f"top {blocks} blocks", *finetune.scores(model, maps), splits.classes,
                                          seconds=time.perf_counter() - started)
    row.update(blocks=blocks, best_epoch=model.best_epoch, summary=model.summary())
    print(f"  {model.summary()}; test {row['accuracy']:.1%}", flush=True)
    return row


def pick(rows: list[dict]) -> dict:
    """The best validation accuracy; a tie goes to fewer blocks."""
    return max(rows, key=lambda row: (round(row["validation_accuracy"], 10), -row["blocks"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    settings.setup(verbose=False)
    started = time.perf_counter()
    splits, options = load_splits(args.dataset, args.quick)
    epochs = 2 if args.quick else args.epochs
    print(f"{args.dataset}: {splits}", flush=True)
    rows = [run_candidate(splits, blocks, options, epochs, args.copies) for blocks in args.blocks]
    chosen = pick(rows)
    binary = "sensitivity" in chosen
    header = "| blocks | validation accuracy | test accuracy [95% CI] | N |" + (
        " sensitivity | specificity | AUC |" if binary else "") + " seconds | kept epoch |"
    lines = [f"# Fine-tuning benchmark: {args.dataset} (issue 7)", "",
             f"Setting: {'quick (16 images per class and split)' if args.quick else 'full data'}, "
             f"EfficientNet-Lite0, {args.copies} distorted cop{'y' if args.copies == 1 else 'ies'} per training "
             f"image, at most {epochs} epochs with early stopping on validation loss. Run took "
             f"{time.perf_counter() - started:.0f} s.", "",
             f"**Chosen on validation: top {chosen['blocks']} blocks** (validation "
             f"{chosen['validation_accuracy']:.1%}) -> test {chosen['accuracy']:.1%} "
             f"[{chosen['ci95'][0]:.1%}, {chosen['ci95'][1]:.1%}], N={chosen['n']}.", "",
             header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        cells = [str(row["blocks"]) + (" (chosen)" if row is chosen else ""), f"{row['validation_accuracy']:.1%}",
                 f"{row['accuracy']:.1%} [{row['ci95'][0]:.1%}, {row['ci95'][1]:.1%}]", str(row["n"])]
        if binary:
            cells += [f"{row['sensitivity']:.1%}", f"{row['specificity']:.1%}", f"{row['auc']:.3f}"]
        cells += [f"{row['seconds']:.0f}", str(row["best_epoch"])]
        lines.append("| " + " | ".join(cells) + " |")
    output = Path(args.output) if args.output else settings.build_dir() / "finetune_benchmark.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    output.with_suffix(".json").write_text(json.dumps(
        {"dataset": args.dataset, "quick": args.quick, "chosen_blocks": chosen["blocks"], "rows": rows},
        indent=2, default=float))
    print("\n".join(lines))
    print(f"Written {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
