"""scripts/time_notebooks.py: runs notebooks in a setting, and rewrites the tables of docs/teaching.md."""
import importlib.util
import os

import nbformat
import pytest

from helpers.settings import PROJECT_ROOT

spec = importlib.util.spec_from_file_location("time_notebooks", PROJECT_ROOT / "scripts" / "time_notebooks.py")
time_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(time_notebooks)


def write_notebook(path, cells):
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_the_setting_reaches_the_kernel_and_failures_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_QUICK", "1")
    path = write_notebook(tmp_path / "01_check.ipynb", [nbformat.v4.new_code_cell(
        "import os\nassert os.environ.get('COURSE_QUICK') == '1', 'not quick'\nopen('ran.txt', 'w').write('yes')")])
    quick = time_notebooks.run_notebook(path, "quick", timeout=120)
    assert quick["ok"] and quick["error"] is None and quick["seconds"] > 0
    assert (tmp_path / "ran.txt").read_text() == "yes"  # it ran in the notebook's own folder
    full = time_notebooks.run_notebook(path, "full", timeout=120, out_dir=tmp_path / "out")
    assert not full["ok"] and "AssertionError: not quick" in full["error"]
    assert (tmp_path / "out" / "01_check.ipynb").is_file()
    assert os.environ["COURSE_QUICK"] == "1"  # restored afterwards
    with pytest.raises(ValueError, match="setting must be one of"):
        time_notebooks.run_notebook(path, "fast", timeout=10)


def test_tables_are_written_between_the_markers(tmp_path):
    notebook = write_notebook(tmp_path / "02_x.ipynb", [
        nbformat.v4.new_markdown_cell("**Exercise 1: which *k*?** Find it.\n\n**Exercise 2. Two.** More."),
        nbformat.v4.new_code_cell("answer = None"),
        nbformat.v4.new_code_cell("answer = 3", metadata={"tags": ["solution"]}),
    ])
    times = {"notebooks": {"02_x": {"full": {"seconds": 95.4, "ok": True, "error": None},
                                    "quick": {"seconds": 12.0, "ok": False, "error": "ValueError: bad"}}},
             "runs": {"full": {"date": "2026-12-04 22:00 UTC", "cores": 2, "cpu": "Test CPU", "python": "Python 3.11",
                               "platform": "Linux", "caches": "prepared"}}}
    doc = tmp_path / "teaching.md"
    doc.write_text("intro\n<!-- times:start -->\nold\n<!-- times:end -->\nmiddle\n"
                   "<!-- exercises:start -->\nold\n<!-- exercises:end -->\nend\n")
    time_notebooks.update_doc(times, [notebook], doc)
    text = doc.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("end\n") and "\nmiddle\n" in text
    assert "| `02_x` | 1 min 35 s | 12 s (failed: ValueError: bad) |" in text
    assert "| **all notebooks** | **1 min 35 s** | **12 s** |" in text
    assert "measured 2026-12-04 22:00 UTC on 2 CPU core(s) of a Test CPU" in text
    assert "| `02_x` | 1. which *k*? | collapsed code cell after the check (cell 3 of 3; tag `solution`) |" in text
    assert "| `02_x` | 2. Two |" in text
    with pytest.raises(ValueError, match="not found"):
        time_notebooks.replace_between("no markers", time_notebooks.TIMES_MARKERS, "x")
