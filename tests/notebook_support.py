"""Run a course notebook headless and read back what one extra cell prints (support for the outcome tests)."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat

from helpers.notebooks import notebook_client
from helpers.settings import NATIVE_NOISE

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_and_read_outcomes(notebook_name: str, read_outcomes: str, timeout: int = 900) -> dict:
    """Execute ``notebooks/<notebook_name>`` with ``read_outcomes`` appended as a last cell.

    That cell prints ``"OUTCOMES" + json.dumps({...})`` from the notebook's
    variables; the dict after the marker is returned. A failing cell raises
    nbclient's ``CellExecutionError``.
    """
    path = NOTEBOOKS / notebook_name
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(read_outcomes))
    notebook_client(nb, timeout, path.parent).execute()
    chatter = [line for cell in nb.cells for output in cell.get("outputs", []) if output.get("name") == "stderr"
               for line in output.get("text", "").splitlines() if NATIVE_NOISE.search(line)]
    assert not chatter, f"TensorFlow's native log lines reached {notebook_name}'s output: {chatter[:3]}"
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("name") == "stdout")
    return json.loads(text.split("OUTCOMES", 1)[1])
