"""Notebooks are committed without outputs and follow the course's chapter skeleton."""
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_the_course_has_its_notebooks():
    names = [p.name[:2] for p in NOTEBOOKS]
    assert names[:2] == ["01", "02"], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; strip them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_chapter_skeleton(path):
    nb = nbformat.read(path, as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert markdown.lstrip().startswith("# "), "a notebook starts with its title"
    for heading in ["In this notebook you will", "## Setup", "## Summary", "## Exercises", "## Next steps"]:
        assert heading in markdown, f"{path.name} lacks {heading!r}"
    solutions = [c for c in nb.cells if "solution" in c.get("metadata", {}).get("tags", [])]
    assert len(solutions) >= 2, f"{path.name}: exercises need solution cells (tagged 'solution')"
