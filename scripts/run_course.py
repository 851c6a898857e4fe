"""Execute every notebook of the course in order, headless, and summarise the results.

    python scripts/run_course.py            # full setting (what a learner gets)
    COURSE_QUICK=1 python scripts/run_course.py   # quick setting (a subset)

Executed copies go to ``build/notebooks/``; each notebook's headline numbers
(written by ``helpers.settings.save_results``) and its run time are gathered into
``build/results.md`` and ``build/results.json``. Stops at the first failing
notebook, saving its executed copy so the error can be read in place.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import helpers  # noqa: F401  (TensorFlow switches for the kernels we start)
from helpers.settings import PROJECT_ROOT, build_dir, quick_mode

NOTEBOOKS = PROJECT_ROOT / "notebooks"


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    """The course's notebooks in order (``NN_name.ipynb``), optionally filtered by prefix."""
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    return paths


def execute(path: Path, out_dir: Path, timeout: int) -> float:
    """Run one notebook top to bottom in its own folder; write the executed copy; return seconds."""
    import nbformat
    from nbclient.exceptions import CellExecutionError

    from helpers.notebooks import notebook_client

    nb = nbformat.read(path, as_version=4)
    client = notebook_client(nb, timeout, path.parent)
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError:
        nbformat.write(nb, out_dir / path.name)
        raise
    seconds = time.perf_counter() - start
    nbformat.write(nb, out_dir / path.name)
    return seconds


def summarise(times: dict[str, float]) -> str:
    """Markdown summary: run time per notebook and the numbers each one recorded."""
    mode = "quick" if quick_mode() else "full"
    lines = [f"# Course run ({mode} setting)", "", "| notebook | seconds |", "|---|---|"]
    lines += [f"| {name} | {sec:.0f} |" for name, sec in times.items()]
    for result_file in sorted(build_dir("results").glob("*.json")):
        record = json.loads(result_file.read_text())
        lines += ["", f"## {record['notebook']}", "", "```json",
                  json.dumps(record["results"], indent=2, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="run only notebooks whose name starts with these (e.g. 03 05)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    args = parser.parse_args(argv)

    out_dir = build_dir("notebooks")
    times: dict[str, float] = {}
    for path in notebook_paths(args.only):
        print(f"== {path.name} ...", flush=True)
        try:
            times[path.name] = execute(path, out_dir, args.timeout)
        except Exception as error:  # report which notebook failed, keep the executed copy
            print(f"!! {path.name} failed; executed copy with the error: {out_dir / path.name}\n{error}",
                  file=sys.stderr)
            return 1
        print(f"   done in {times[path.name]:.0f} s", flush=True)
    summary = summarise(times)
    (build_dir() / "results.md").write_text(summary)
    (build_dir() / "results.json").write_text(json.dumps({"seconds": times}, indent=2))
    print(summary)
    print(f"Executed notebooks: {out_dir}\nSummary: {build_dir() / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
