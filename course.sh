#!/usr/bin/env bash
# The course's one entry point. Every sub-command first makes sure the environment exists.
#
#   bash course.sh run       set up, then execute every notebook in order (full setting) into build/
#   bash course.sh test      set up, then run all tests (unit, command, notebooks via nbval, browser)
#   bash course.sh lab       set up, then open JupyterLab on the notebooks
#   bash course.sh prepare   set up, then build backbones, locate/download data, fill the caches (workshop eve)
#   bash course.sh benchmark set up, then run scripts/benchmark.py (full data; minutes)
#
# Options: COURSE_QUICK=1 runs the notebooks on a subset; COURSE_VENV=path picks the virtual environment.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${COURSE_VENV:-.venv}"
PY="$VENV/bin/python"

find_python() {
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
      echo "$candidate"; return 0
    fi
  done
  echo "course.sh: Python 3.11 is needed (TensorFlow 2.21 and the pins in requirements.txt); install it or use environment.yml with conda." >&2
  return 1
}

setup_python() {
  if [ ! -x "$PY" ]; then
    echo "== creating the virtual environment $VENV"
    "$(find_python)" -m venv "$VENV"
  fi
  local stamp="$VENV/.course-installed"
  local want
  want="$(cat requirements.txt pyproject.toml | sha1sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "== installing the pinned packages (requirements.txt) and the helpers package"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -r requirements.txt
    "$PY" -m pip install --quiet --no-deps -e .
    echo "$want" > "$stamp"
  fi
}

setup_browser() {
  # The browser test drives Debian's Chromium through Playwright (no browser download).
  if command -v chromium >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian's chromium for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
  else
    echo "course.sh: the browser test needs Chromium (Debian/Ubuntu: sudo apt-get install chromium); it will fail without it." >&2
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  run)
    setup_python
    "$PY" -m helpers.prepare
    "$PY" scripts/run_course.py "$@"
    ;;
  test)
    setup_python
    setup_browser
    export COURSE_QUICK=1
    "$PY" -m pytest tests notebooks --nbval-lax --nbval-cell-timeout=900 -p no:cacheprovider "$@"
    ;;
  lab)
    setup_python
    exec "$PY" -m jupyter lab notebooks --LabApp.news_url=None --LabApp.extension_manager=readonly "$@"
    ;;
  prepare)
    setup_python
    "$PY" -m helpers.prepare "$@"
    ;;
  benchmark)
    setup_python
    "$PY" scripts/benchmark.py "$@"
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
