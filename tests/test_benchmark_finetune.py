"""scripts/benchmark_finetune.py: the number of fine-tuned blocks is chosen on validation, never on test."""
import importlib.util
import json

import pytest

from helpers.settings import PROJECT_ROOT

spec = importlib.util.spec_from_file_location("benchmark_finetune", PROJECT_ROOT / "scripts" / "benchmark_finetune.py")
benchmark_finetune = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark_finetune)

FLOWERS = PROJECT_ROOT.parent / "shared" / "datasets" / "flower_photos"


def test_the_pick_follows_validation_and_a_tie_goes_to_fewer_blocks():
    rows = [{"blocks": 2, "validation_accuracy": 0.949, "accuracy": 0.99},
            {"blocks": 4, "validation_accuracy": 0.955, "accuracy": 0.90},
            {"blocks": 5, "validation_accuracy": 0.955, "accuracy": 0.95}]
    assert benchmark_finetune.pick(rows)["blocks"] == 4  # not 2, whose test accuracy is best
    assert benchmark_finetune.pick(rows[:1])["blocks"] == 2


@pytest.mark.skipif(not FLOWERS.is_dir(), reason="needs ../shared/datasets")
def test_a_quick_run_writes_every_candidate_and_the_choice(tmp_path):
    output = tmp_path / "finetune.md"
    assert benchmark_finetune.main(["--quick", "--blocks", "2", "3", "--output", str(output)]) == 0
    record = json.loads(output.with_suffix(".json").read_text())
    assert [row["blocks"] for row in record["rows"]] == [2, 3]
    for row in record["rows"]:
        assert row["n"] == 80 and 0 <= row["accuracy"] <= 1 and 0 <= row["validation_accuracy"] <= 1
    assert record["chosen_blocks"] == benchmark_finetune.pick(record["rows"])["blocks"]
    text = output.read_text()
    assert f"**Chosen on validation: top {record['chosen_blocks']} blocks**" in text
    assert text.count("\n| 2") == 1 and text.count("\n| 3") == 1
