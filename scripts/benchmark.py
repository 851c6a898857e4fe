"""Benchmark the ``retrain`` command: cold and warm bottleneck cache, flowers and chest X-rays.

Each run is the real command in a child process (``python -m helpers.retrain``),
timed from outside: wall time, CPU time and peak memory of that child (from
``os.wait4``'s resource usage), plus what the run itself reports in its metrics
JSON (extraction time and images/s, training time, accuracies with 95% CIs and,
for the X-rays, sensitivity/specificity at 0.5 and at the validation-chosen
threshold). "cold" starts from an empty bottleneck folder, "warm" reruns on the
folder the cold run filled. Results go to build/benchmark.md and build/benchmark.json.

    python scripts/benchmark.py                          # everything (takes a while)
    python scripts/benchmark.py --datasets flowers --modes warm
    python scripts/benchmark.py --max_images_per_class 20 --how_many_training_steps 200   # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers.settings import PROJECT_ROOT

DATA = PROJECT_ROOT.parent / "shared" / "datasets"
DATASETS = {
    "flowers": ["--image_dir", str(DATA / "flower_photos")],
    "chest_xray": ["--image_dir", str(DATA / "chest_xray" / "train"),
                   "--test_image_dir", str(DATA / "chest_xray" / "test"),
                   "--group_by", "patient", "--class_weights", "balanced", "--central_crop", "1"],
}


def run_retrain(args: list[str], log_file: Path, env: dict) -> dict:
    """Run the command once; return wall seconds, CPU seconds, peak RSS (MB) and the exit status."""
    start = time.perf_counter()
    with open(log_file, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "helpers.retrain", *args], stdout=log,
                                 stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_seconds": time.perf_counter() - start,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_memory_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
        "exit_code": child.returncode,
    }


def summarise(name: str, mode: str, measured: dict, metrics: dict) -> dict:
    timings, splits = metrics.get("timings", {}), metrics.get("splits", {})
    row = {"dataset": name, "mode": mode, **measured,
           "images": timings.get("images"), "images_computed": timings.get("images_computed"),
           "extraction_seconds": timings.get("extraction_seconds"),
           "images_per_second": timings.get("images_per_second"),
           "training_seconds": timings.get("training_seconds"),
           "retrain_total_seconds": timings.get("total_seconds"),
           "backbone": metrics.get("backbone", {}).get("name"), "splits": splits}
    binary = metrics.get("binary")
    if binary:
        row["binary"] = {key: binary[key] for key in ("positive_class", "threshold", "threshold_rule", "test_auc")}
        for key in ("test_at_0.5", "test_at_threshold"):
            row["binary"][key] = {k: binary[key][k] for k in ("accuracy", "sensitivity", "specificity", "n")}
    return row


def _pct(split: dict | None) -> str:
    if not split or split.get("accuracy") is None:
        return "-"
    low, high = split["ci95"]
    return f"{split['accuracy']:.1%} ({low:.1%}-{high:.1%}, N={split['n']})"


def _num(value, fmt="{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def write_report(rows: list[dict], info: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmark.json").write_text(json.dumps({"machine": info, "runs": rows}, indent=2) + "\n")
    lines = ["# retrain benchmark", "",
             f"{info['date']} | {info['cpu']} ({info['cpus']} CPUs, load average {info['load_average']}) | "
             f"Python {info['python']} | command: `{info['command']}`", "",
             "| dataset | cache | wall s | CPU s | peak MB | images | computed | extraction s | images/s | "
             "training s | train acc | validation acc | test acc (95% CI) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["splits"]
        lines.append(f"| {r['dataset']} | {r['mode']} | {_num(r['wall_seconds'])} | {_num(r['cpu_seconds'])} | "
                     f"{_num(r['peak_memory_mb'], '{:.0f}')} | {_num(r['images'], '{}')} | "
                     f"{_num(r['images_computed'], '{}')} | {_num(r['extraction_seconds'])} | "
                     f"{_num(r['images_per_second'])} | {_num(r['training_seconds'])} | "
                     f"{_pct(s.get('training'))} | {_pct(s.get('validation'))} | {_pct(s.get('testing'))} |")
    binary = [r for r in rows if r.get("binary")]
    if binary:
        lines += ["", "Two-class results (test split; threshold chosen on validation):", "",
                  "| dataset | cache | positive | AUC | at 0.5: sens / spec / acc | threshold | "
                  "at threshold: sens / spec / acc |", "|---|---|---|---|---|---|---|"]
        for r in binary:
            b = r["binary"]
            at = lambda m: f"{m['sensitivity']:.1%} / {m['specificity']:.1%} / {m['accuracy']:.1%}"
            lines.append(f"| {r['dataset']} | {r['mode']} | {b['positive_class']} | {b['test_auc']:.3f} | "
                         f"{at(b['test_at_0.5'])} | {b['threshold']:.3f} ({b['threshold_rule']}) | "
                         f"{at(b['test_at_threshold'])} |")
    failed = [r for r in rows if r["exit_code"] != 0]
    if failed:
        lines += ["", "Failed runs: " + ", ".join(f"{r['dataset']} {r['mode']} (exit {r['exit_code']}, "
                                                  f"log {r['log']})" for r in failed)]
    (out_dir / "benchmark.md").write_text("\n".join(lines) + "\n")


def machine_info(command: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu, "cpus": os.cpu_count(),
            "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()), "python": platform.python_version(),
            "command": command}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--modes", nargs="+", choices=["cold", "warm"], default=["cold", "warm"],
                        help="cold: empty bottleneck folder; warm: the folder a cold run filled (a warm run "
                        "without a cold one first uses the course cache as it is).")
    parser.add_argument("--tfhub_module", default="efficientnet_lite0")
    parser.add_argument("--how_many_training_steps", type=int, default=4000)
    parser.add_argument("--max_images_per_class", type=int, default=None, help="Subset, for a quick check.")
    parser.add_argument("--fresh_cache_dir", action="store_true",
                        help="Cold runs also get an empty COURSE_CACHE_DIR (so they include building the backbone).")
    parser.add_argument("--out_dir", default=str(ROOT / "build"))
    args = parser.parse_args(argv)

    out_dir = Path(args.out_dir)
    work = Path(tempfile.mkdtemp(prefix="retrain-benchmark-"))
    rows = []
    try:
        for name in args.datasets:
            bottleneck_dir = work / f"bottlenecks-{name}"
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            for mode in args.modes:
                if mode == "cold":
                    shutil.rmtree(bottleneck_dir, ignore_errors=True)
                    if args.fresh_cache_dir:
                        env["COURSE_CACHE_DIR"] = str(work / f"cache-{name}")
                flags = [*DATASETS[name], "--tfhub_module", args.tfhub_module,
                         "--how_many_training_steps", str(args.how_many_training_steps),
                         "--metrics_json", str(work / f"{name}-{mode}.json"),
                         "--saved_model_dir", str(work / f"{name}-{mode}-model")]
                if mode == "cold" or bottleneck_dir.exists():
                    flags += ["--bottleneck_dir", str(bottleneck_dir)]
                if args.max_images_per_class:
                    flags += ["--max_images_per_class", str(args.max_images_per_class)]
                log = out_dir / f"benchmark-{name}-{mode}.log"
                out_dir.mkdir(parents=True, exist_ok=True)
                print(f"{name} {mode}: retrain {' '.join(flags)}", flush=True)
                measured = run_retrain(flags, log, env)
                metrics_file = work / f"{name}-{mode}.json"
                metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
                row = summarise(name, mode, measured, metrics)
                row["log"] = str(log)
                rows.append(row)
                print(f"  {measured['wall_seconds']:.1f} s wall, {measured['peak_memory_mb']:.0f} MB peak, "
                      f"test {_pct(row['splits'].get('testing'))}, exit {measured['exit_code']}", flush=True)
        command = "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_report(rows, machine_info(command.strip()), out_dir)
        print(f"Wrote {out_dir / 'benchmark.md'} and {out_dir / 'benchmark.json'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
