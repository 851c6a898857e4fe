"""Where things live and how a run is set up: cache folder, quick setting, seeds.

Every notebook starts with ``helpers.settings.setup()`` so that a re-run gives
the same numbers, and reads ``quick_mode()`` to decide between the full data
(what a learner gets by default) and a small subset (what the test command runs).
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import tempfile
from pathlib import Path

import helpers  # noqa: F401  (sets the TensorFlow environment switches first)

#: Environment variable that moves every cache (backbones, bottlenecks, downloads).
CACHE_ENV = "COURSE_CACHE_DIR"
#: Environment variable that switches the notebooks to their quick setting ("1").
QUICK_ENV = "COURSE_QUICK"
#: The project root: the folder holding ``helpers/``, ``notebooks/`` and ``README.md``.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEED = 42


#: TensorFlow's native start-up chatter: written straight to file descriptor 2 by C++ code before its
#: logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` does not reach it. It says nothing a learner can act on
#: (no GPU on a laptop is expected; oneDNN is our choice, see ``helpers/__init__``).
NATIVE_NOISE = re.compile(
    r"All log messages before absl::InitializeLog"
    r"|oneDNN custom operations are on"
    r"|oneDNN supports DT_HALF only on platforms with AVX-512"
    r"|cudart_stub\.cc|cuda_platform\.cc.*cuInit|Could not find cuda drivers"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc|TF-TRT Warning"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions:.*rebuild TensorFlow"
    r"|fully_quantize: \d+, inference_type: \d+"
)


@contextlib.contextmanager
def quiet_native_logs(noise: re.Pattern = NATIVE_NOISE):
    """Hold back TensorFlow's native log lines that match ``noise``; pass every other line on.

    C++ code writes to file descriptor 2 directly, past Python's ``sys.stderr``
    (in Jupyter those lines land in the cell's output). Inside this block fd 2
    goes to a temporary file; afterwards each line that is not known noise is
    written to ``sys.stderr``, so real warnings and errors are still shown, only
    later. Use it around the calls that print the chatter: importing TensorFlow
    and its first device query, the first fine-tuning step, TFLite conversion.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (an embedded interpreter): nothing to hold back
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not noise.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow():
    """Import TensorFlow (and look for devices, which is when CUDA is probed) without its start-up chatter."""
    with quiet_native_logs():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the course's cache.

    The cache is ``$COURSE_CACHE_DIR`` when set, else the user's cache folder
    (``~/.cache/transfer-learning-course`` on Linux, chosen by pooch/platformdirs).
    It never lies inside the read-only shared data folder.
    """
    root = os.environ.get(CACHE_ENV)
    if root:
        base = Path(root).expanduser()
    else:
        import pooch

        base = Path(pooch.os_cache("transfer-learning-course"))
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def quick_mode() -> bool:
    """True when ``COURSE_QUICK`` is set to 1/true/yes: notebooks then use a small subset."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def set_seeds(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy and TensorFlow so that a re-run reproduces the same numbers."""
    import numpy as np
    import tensorflow as tf

    random.seed(seed)
    np.random.seed(seed)
    tf.keras.utils.set_random_seed(seed)


def setup(seed: int = DEFAULT_SEED, verbose: bool = True) -> dict:
    """One call at the top of every notebook: seeds, quiet TensorFlow, a short summary.

    Returns a dict with the seed, whether the quick setting is on, the cache folder
    and the TensorFlow version, and prints it when ``verbose``.
    """
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    set_seeds(seed)
    info = {
        "seed": seed,
        "quick": quick_mode(),
        "cache": str(cache_dir()),
        "tensorflow": tf.__version__,
    }
    if verbose:
        mode = "quick (subset, for tests)" if info["quick"] else "full"
        print(f"TensorFlow {info['tensorflow']} | setting: {mode} | seed {seed} | cache: {info['cache']}")
    return info


def build_dir(*parts: str) -> Path:
    """Return (and create) a folder under ``build/`` (``$COURSE_BUILD_DIR`` overrides).

    Build products live here: executed notebooks, the results summary, benchmark
    tables, screenshots. Nothing under it is committed.
    """
    root = os.environ.get("COURSE_BUILD_DIR")
    base = Path(root).expanduser() if root else PROJECT_ROOT / "build"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_results(notebook: str, results: dict) -> Path:
    """Record a notebook's headline numbers in ``build/results/<notebook>.json``.

    ``scripts/run_course.py`` gathers these files into ``build/results.md`` after
    executing every notebook, so the summary quotes the run, never typed-in figures.
    Values must be JSON-serialisable (numbers, strings, lists, dicts); NumPy scalars
    are converted. Returns the file written.
    """
    import json

    import numpy as np

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        return value

    path = build_dir("results") / f"{notebook}.json"
    record = {"notebook": notebook, "quick": quick_mode(), "results": plain(results)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path
