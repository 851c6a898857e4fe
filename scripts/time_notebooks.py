"""Measure how long each notebook takes, in its full and quick settings, and write it into docs/teaching.md.

    python scripts/time_notebooks.py                    # both settings, every notebook (full: about an hour)
    python scripts/time_notebooks.py --settings quick   # only the quick setting
    python scripts/time_notebooks.py --only 01 03       # some notebooks
    python scripts/time_notebooks.py --doc-only         # rewrite the tables from build/notebook_times.json

Each notebook runs top to bottom with nbclient in its own folder, like "Restart Kernel and
Run All Cells", on at most ``--cores`` CPU cores (2 by default: the laptop a workshop plans
for; the kernel inherits the limit). Run it after ``prepare-workshop``: the times are those
of a prepared workshop (backbones built, bottlenecks cached), not of a first, cold run.

Results are merged into ``build/notebook_times.json`` (a later run of one setting keeps the
other's numbers), and the tables between ``<!-- times:start -->`` / ``<!-- times:end -->`` and
``<!-- exercises:start -->`` / ``<!-- exercises:end -->`` in ``docs/teaching.md`` are regenerated:
the times, and the exercises read from the notebooks themselves.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = PROJECT_ROOT / "notebooks"
TIMES_JSON = PROJECT_ROOT / "build" / "notebook_times.json"
TEACHING = PROJECT_ROOT / "docs" / "teaching.md"
SETTINGS = ("full", "quick")
TIMES_MARKERS = ("<!-- times:start -->", "<!-- times:end -->")
EXERCISE_MARKERS = ("<!-- exercises:start -->", "<!-- exercises:end -->")


def notebook_paths(only=None) -> list[Path]:
    """The course's notebooks in order (``NN_name.ipynb``); with ``only``, those whose name starts with one of them."""
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in paths if not only or any(p.name.startswith(o) for o in only)]


def limit_cores(cores: int | None) -> int:
    """Restrict this process (and the kernels it starts) to ``cores`` CPUs; return the number in use."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cores and available and cores < len(available):
        os.sched_setaffinity(0, available[:cores])
        return cores
    return len(available) or os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_notebook(path: Path, setting: str, timeout: int, out_dir: Path | None = None) -> dict:
    """Execute one notebook in ``setting`` ("full" or "quick"); return seconds, success and the error if any."""
    import nbformat
    from nbclient.exceptions import CellExecutionError

    from helpers.notebooks import notebook_client

    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    notebook = nbformat.read(path, as_version=4)
    client = notebook_client(notebook, timeout, path.parent)
    previous = os.environ.pop("COURSE_QUICK", None)
    if setting == "quick":
        os.environ["COURSE_QUICK"] = "1"  # the kernel inherits this process's environment
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as failure:
        error = f"{failure.ename}: {failure.evalue}"[:300]
    except TimeoutError as failure:
        error = f"timeout: {failure}"[:300]
    finally:
        os.environ.pop("COURSE_QUICK", None)
        if previous is not None:
            os.environ["COURSE_QUICK"] = previous
    seconds = time.perf_counter() - start
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, out_dir / path.name)
    return {"seconds": round(seconds, 1), "ok": error is None, "error": error}


def load_times(path: Path = TIMES_JSON) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"notebooks": {}, "runs": {}}


def minutes(seconds: float | None) -> str:
    """95.4 -> '1 min 35 s'; None -> 'not measured'."""
    if seconds is None:
        return "not measured"
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def times_table(times: dict, names=()) -> str:
    """The Markdown table of run times per notebook and setting, with where and when they were measured.

    ``names``: notebooks to list even when not measured yet."""
    lines = ["| notebook | full setting | quick setting (`COURSE_QUICK=1`) |", "|---|---:|---:|"]
    totals = dict.fromkeys(SETTINGS, 0.0)
    all_names = sorted(set(times["notebooks"]) | set(names))
    for name in all_names:
        record = times["notebooks"].get(name, {})
        cells = []
        for setting in SETTINGS:
            result = record.get(setting)
            if result is None:
                cells.append("not measured")
                continue
            totals[setting] += result["seconds"]
            cells.append(minutes(result["seconds"]) + ("" if result["ok"] else f" (failed: {result['error']})"))
        lines.append(f"| `{name}` | {cells[0]} | {cells[1]} |")
    complete = {setting: all(times["notebooks"].get(name, {}).get(setting) for name in all_names)
                for setting in SETTINGS}
    total = [f"**{minutes(totals[s])}**" if complete[s] else "-" for s in SETTINGS]
    lines.append(f"| **all notebooks** | {total[0]} | {total[1]} |")
    lines.append("")
    for setting in SETTINGS:
        run = times["runs"].get(setting)
        if run:
            lines.append(f"- {setting} setting: measured {run['date']} on {run['cores']} CPU core(s) of a {run['cpu']} "
                         f"({run['python']}, {run['platform']}), caches {run['caches']}.")
    lines.append("- Regenerate with `python scripts/time_notebooks.py` (see its `--help`); the table is rewritten "
                 "from `build/notebook_times.json`.")
    return "\n".join(lines)


_EXERCISE = re.compile(r"\*\*Exercise (\d+)[:.]?\s*(.+?)\.?\*\*(?=\s|$)")


def exercises_table(paths) -> str:
    """The exercises found in the notebooks ("**Exercise N: title.**"), with where their solutions are."""
    import nbformat

    lines = ["| notebook | exercise | solution |", "|---|---|---|"]
    for path in paths:
        cells = nbformat.read(path, as_version=4).cells
        for index, cell in enumerate(cells):
            if cell.cell_type != "markdown":
                continue
            for number, title in _EXERCISE.findall(cell.source):
                solution = next((i for i in range(index + 1, len(cells))
                                 if "solution" in cells[i].metadata.get("tags", [])), None)
                where = (f"collapsed code cell after the check (cell {solution + 1} of {len(cells)}; tag `solution`)"
                         if solution is not None else "in the text")
                lines.append(f"| `{path.stem}` | {number}. {title.strip()} | {where} |")
    return "\n".join(lines)


def replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    """``text`` with everything between the two markers replaced by ``body``; raises if a marker is missing."""
    start, end = markers
    if start not in text or end not in text:
        raise ValueError(f"{start} ... {end} not found")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def update_doc(times: dict, paths, doc: Path = TEACHING) -> None:
    text = doc.read_text()
    text = replace_between(text, TIMES_MARKERS, times_table(times, [p.stem for p in paths]))
    text = replace_between(text, EXERCISE_MARKERS, exercises_table(paths))
    doc.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--only", nargs="+", help="notebook name prefixes, e.g. 01 03")
    parser.add_argument("--cores", type=int, default=2, help="CPU cores to run on (default 2; 0: all)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take")
    parser.add_argument("--caches", default="prepared (prepare-workshop run before)",
                        help="how the caches were, for the note under the table")
    parser.add_argument("--doc-only", action="store_true", help="only rewrite docs/teaching.md from the JSON")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/teaching.md")
    args = parser.parse_args(argv)

    paths = notebook_paths(args.only)
    times = load_times()
    failed = []
    if not args.doc_only:
        import helpers  # noqa: F401  (TensorFlow switches, inherited by the kernels)

        cores = limit_cores(args.cores)
        for setting in args.settings:
            times["runs"][setting] = {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cores": cores, "cpu": cpu_name(),
                "python": f"Python {platform.python_version()}", "platform": platform.system(), "caches": args.caches,
            }
            for path in paths:
                print(f"{setting:>5} {path.stem} ...", end=" ", flush=True)
                result = run_notebook(path, setting, args.timeout,
                                      PROJECT_ROOT / "build" / "timed" / setting)
                times["notebooks"].setdefault(path.stem, {})[setting] = result
                print(minutes(result["seconds"]) + ("" if result["ok"] else f"  FAILED: {result['error']}"),
                      flush=True)
                if not result["ok"]:
                    failed.append(f"{path.stem} ({setting})")
                TIMES_JSON.parent.mkdir(parents=True, exist_ok=True)
                TIMES_JSON.write_text(json.dumps(times, indent=1, sort_keys=True))
    if not args.no_doc:
        update_doc(times, notebook_paths())
        print(f"updated {TEACHING.relative_to(PROJECT_ROOT)}")
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
