"""What a learner sees: the notebooks run in JupyterLab, in a real (headless) browser.

nbval proves the kernel code runs; this test proves the page works. It starts the
project's JupyterLab on a loopback port with a token (``COURSE_QUICK=1``, so the quick
setting), opens each notebook in the system's Chromium, runs all cells from the
Run menu, and checks that no cell shows an error, every cell ran, the widgets are drawn
as widgets, moving a slider (and choosing in a dropdown) changes what is drawn, the
figures are loaded images, and the page fetched nothing from the internet.
Screenshots land in ``build/screenshots/<notebook>/`` for a person to look at.

The source notebooks are never written: autosave is off and nothing is saved; the
test checks that their bytes are unchanged.

Needs Chromium (Debian: ``apt-get install chromium``; or ``COURSE_CHROMIUM=/path``).
Run only this test: ``pytest -m browser``; leave it out: ``pytest -m "not browser"``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from tests.browser_support import (
    JupyterLab,
    LabNotebook,
    chromium_context,
    error_outputs,
    rendering_problems,
    unexecuted_cells,
)

pytestmark = pytest.mark.browser

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUILD = PROJECT_ROOT / "build"
SCREENSHOTS = BUILD / "screenshots"
#: Longest time one notebook may take to run all its cells (quick setting) before the test fails.
RUN_TIMEOUT = float(os.environ.get("COURSE_BROWSER_TIMEOUT", "900"))


@dataclass(frozen=True)
class Expect:
    """What a notebook must show after Run All.

    ``widgets``: kinds (keys of ``browser_support.WIDGET_SELECTORS``) drawn somewhere;
    ``min_images``: figures drawn as images; ``slider``/``dropdown``: moving the first
    slider (choosing the next option of the first dropdown) that is linked to an output
    changes that output, for at least one such control in the notebook; ``upload``:
    uploading a flower photo through the first upload button changes its output.
    """
    name: str
    widgets: tuple[str, ...] = ()
    min_images: int = 1
    slider: bool = False
    dropdown: bool = False
    upload: bool = False


NOTEBOOKS = [
    Expect("01_neural_network_basics", widgets=("slider", "dropdown"), min_images=8, slider=True, dropdown=True),
    Expect("03_retrain_flowers", widgets=("slider", "upload"), min_images=8, slider=True, upload=True),
    Expect("05_closed_set_limits", widgets=("slider",), min_images=6, slider=True),
]


@pytest.fixture(scope="module")
def lab():
    with JupyterLab(PROJECT_ROOT, env={"COURSE_QUICK": "1"}, log_path=BUILD / "browser" / "jupyterlab.log") as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with chromium_context() as context:
        yield context


@pytest.fixture
def open_notebook(lab, browser):
    """Open a notebook in a new page; afterwards close the page (unsaved) and stop its kernel."""
    pages = []

    def _open(relative_path: str, screenshot_name: str) -> LabNotebook:
        page = browser.new_page()
        pages.append(page)
        notebook = LabNotebook(lab, page, relative_path, SCREENSHOTS / screenshot_name)
        for old in notebook.screenshot_dir.glob("*.png"):
            old.unlink()
        try:
            notebook.open()
        finally:
            notebook.screenshot_page("opened")
        notebook.hide_left_sidebar()
        return notebook

    yield _open
    for page in pages:
        page.close()
    lab.shutdown_kernels()


def run_and_read(notebook: LabNotebook):
    """Run all cells, save screenshots and the executed notebook, and return (model, cells)."""
    try:
        seconds = notebook.run_all_from_menu(timeout=RUN_TIMEOUT)
    finally:
        notebook.screenshot_page("after-run")
    model, cells = notebook.model(), notebook.cells()
    (notebook.screenshot_dir / "executed.ipynb").write_text(json.dumps(model))
    for cell in cells:
        if cell["images"] or any(cell["widgets"].values()):
            notebook.screenshot_cell(cell["index"])
    print(f"{notebook.relative_path}: Run All took {seconds:.0f} s in the browser")
    return model, cells


def a_flower_photo() -> Path:
    """A photo to upload: the first sunflower of the course's flowers (found like the notebooks find it)."""
    from helpers import data

    return data.list_images(data.find_dataset("flowers", download=False))["sunflowers"][0]


def interact(notebook: LabNotebook, cells: list[dict], kind: str) -> list[int]:
    """Try each cell's first control of ``kind`` in order until one changes its output.

    Returns [] on success, else the cells tried ([-1] when there was no such control)."""
    actions = {"slider": notebook.move_slider, "dropdown": notebook.choose_dropdown,
               "upload": lambda index: notebook.upload_file(index, a_flower_photo())}
    tried = []
    for cell in cells:
        if not cell["widgets"][kind]:
            continue
        tried.append(cell["index"])
        notebook.screenshot_cell(cell["index"], f"{kind}-before-cell-{cell['index']:02d}")
        if actions[kind](cell["index"]):
            notebook.screenshot_cell(cell["index"], f"{kind}-after-cell-{cell['index']:02d}")
            return []
    return tried or [-1]


@pytest.mark.parametrize("expect", NOTEBOOKS, ids=lambda e: e.name)
def test_notebook_runs_and_shows_widgets_and_figures(expect, open_notebook):
    source = PROJECT_ROOT / "notebooks" / f"{expect.name}.ipynb"
    original = source.read_bytes()
    notebook = open_notebook(f"notebooks/{expect.name}.ipynb", expect.name)
    model, cells = run_and_read(notebook)

    assert error_outputs(model) == [], "cells show errors"
    assert unexecuted_cells(model) == [], "cells did not run"
    assert rendering_problems(model, cells) == []
    drawn = {kind: sum(c["widgets"][kind] for c in cells) for kind in expect.widgets}
    assert all(drawn.values()), f"widgets drawn per kind: {drawn}"
    images = sum(len(c["images"]) for c in cells)
    assert images >= expect.min_images, f"{images} images drawn, expected at least {expect.min_images}"
    for kind in ("slider", "dropdown", "upload"):
        if getattr(expect, kind):
            assert interact(notebook, cells, kind) == [], f"no {kind} changed its output (cells tried; -1: none found)"
    assert notebook.outside_requests == [], "the page fetched from outside 127.0.0.1"
    assert source.read_bytes() == original, "the source notebook was modified"


def write_self_check_notebook(path: Path) -> None:
    """A tiny notebook with a linked slider, a dropdown and upload button, a linked upload, a warning and an error."""
    cells = [
        "import sys\nimport ipywidgets as w\nimport matplotlib.pyplot as plt",
        ("def draw(n=3):\n    fig, ax = plt.subplots(figsize=(3, 2))\n    ax.plot([i * i for i in range(n)])\n"
         "    plt.show()\n    print('n =', n)\nw.interact(draw, n=w.IntSlider(value=3, min=2, max=20));"),
        "w.VBox([w.Dropdown(options=['a', 'b']), w.FileUpload(accept='image/*')])",
        ("upload, shown = w.FileUpload(), w.Output()\n"
         "upload.observe(lambda change: shown.append_stdout(f\"got {change['new'][0]['name']}\\n\"), names='value')\n"
         "w.VBox([upload, shown])"),
        "print('only a warning', file=sys.stderr)",
        "1 / 0",
        "print('not reached: Run All stops at the error')",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


def test_the_checks_see_errors_widgets_and_a_moved_slider(open_notebook):
    """The checks above can fail: on a notebook with a known error they report exactly it."""
    write_self_check_notebook(BUILD / "browser" / "self_check.ipynb")
    notebook = open_notebook("build/browser/self_check.ipynb", "self_check")
    model, cells = run_and_read(notebook)

    assert error_outputs(model) == ["cell 5: ZeroDivisionError: division by zero"]
    assert unexecuted_cells(model) == [6]
    assert rendering_problems(model, cells) == []
    assert [c["widgets"]["slider"] for c in cells] == [0, 1, 0, 0, 0, 0, 0]
    assert [c["widgets"]["upload"] for c in cells] == [0, 0, 1, 1, 0, 0, 0]
    assert cells[2]["widgets"]["dropdown"] == 1
    assert [len(c["images"]) for c in cells] == [0, 1, 0, 0, 0, 0, 0]
    assert "only a warning" in cells[4]["text"]
    assert notebook.move_slider(1), "moving the slider did not redraw the figure"
    assert "n = 6" in notebook.cells()[1]["text"]
    assert not notebook.choose_dropdown(2, timeout=5), "a dropdown linked to nothing changed an output"
    photo = BUILD / "browser" / "upload me.png"
    photo.write_bytes(bytes.fromhex("89504e470d0a1a0a"))  # any bytes: the cell only prints the name
    assert notebook.upload_file(3, photo), "uploading a file did not reach the kernel"
    assert "got upload me.png" in notebook.cells()[3]["text"]
    assert rendering_problems(model, [dict(cells[1], images=[{"complete": True, "width": 0, "height": 0}])]) \
        == ["cell 1: an image did not load"]
