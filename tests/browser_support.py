"""Drive JupyterLab in headless Chromium the way a learner uses it (support for test_browser.py).

``JupyterLab`` starts the project's JupyterLab on a free loopback port with a random
token, ``chromium_context`` opens the system's Chromium through Playwright (never a
browser download), and ``LabNotebook`` opens one notebook, runs all its cells from the
Run menu and reads back what the page shows: errors, widgets, images, and whether
moving a slider changes what is drawn.

JupyterLab runs with a throw-away settings folder: notebooks are drawn whole (no
windowing, so every cell is in the page), autosave is off (the source notebooks are
never written), the default kernel starts without asking, and nothing is fetched from
the internet (no news, a read-only extension manager).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Self
from urllib.parse import urlparse

#: Environment variable naming the Chromium executable, when it is not on PATH as ``chromium``.
CHROMIUM_ENV = "COURSE_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
#: Flags that keep Chromium quiet and local: on a closed network its background
#: connections (updates, sync, field trials) would otherwise be refused and slow it down.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-proxy-server", "--disable-dev-shm-usage",
]
#: User settings JupyterLab starts with (folder ``JUPYTERLAB_SETTINGS_DIR``).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
#: Command-line options: loopback only, no network fetches, the app object reachable for reading the model.
LAB_OPTIONS = [
    "--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.allow_root=True",
    "--LabApp.extension_manager=readonly", "--LabApp.news_url=None",
    "--LabApp.expose_app_in_browser=True",
]
WIDGET_SELECTORS = {
    "slider": ".widget-slider",
    "dropdown": ".widget-dropdown",
    "upload": ".widget-upload",
    "button": ".widget-button",
    "output": ".widget-output",
}


def find_chromium() -> str:
    """Return the path of the system's Chromium, or raise with how to install it."""
    path = os.environ.get(CHROMIUM_ENV)
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{CHROMIUM_ENV}={path} is not a file")
        return path
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(
        "The browser test needs Chromium: `apt-get install chromium` on Debian/Ubuntu, or set "
        f"{CHROMIUM_ENV}=/path/to/chrome. Leave the browser test out with `pytest -m 'not browser'`."
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_lab_settings(settings_dir: Path, settings: dict = LAB_SETTINGS) -> None:
    """Write JupyterLab user settings (plugin id -> values) as ``<plugin>.jupyterlab-settings`` files."""
    for plugin, values in settings.items():
        path = settings_dir / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 serving ``root_dir``; use it as a context manager.

    ``env`` is added to this process's environment (for example ``COURSE_QUICK=1``).
    The server's output goes to ``log_path``; on exit the server and its kernels stop.
    """

    def __init__(self, root_dir: Path, env: dict | None = None, log_path: Path | None = None,
                 start_timeout: float = 120.0):
        self.root_dir = Path(root_dir)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self._tmp = Path(tempfile.mkdtemp(prefix="course-lab-"))
        self.log_path = Path(log_path) if log_path else self._tmp / "jupyterlab.log"
        self.process = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, relative_path: str) -> str:
        """The address that opens ``relative_path`` (relative to the root) in JupyterLab, in a fresh layout.

        ``reset`` drops the remembered workspace, so notebooks opened earlier do not reopen beside it."""
        return f"{self.url}/lab/tree/{relative_path}?reset&token={self.token}"

    def _environment(self) -> dict:
        env = dict(os.environ)
        env.pop("MPLBACKEND", None)  # a learner's kernel draws inline; an Agg backend would hide the figures
        settings_dir = self._tmp / "settings"
        write_lab_settings(settings_dir)
        env.update(JUPYTERLAB_SETTINGS_DIR=str(settings_dir),
                   JUPYTERLAB_WORKSPACES_DIR=str(self._tmp / "workspaces"),
                   JUPYTER_RUNTIME_DIR=str(self._tmp / "runtime"))
        env.update(self.extra_env)
        return env

    def api(self, path: str, method: str = "GET"):
        """Call the server's REST API and return the decoded JSON (None for an empty answer)."""
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with self._opener.open(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "jupyter", "lab", *LAB_OPTIONS, f"--ServerApp.port={self.port}",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}",
                   # checkpoints in the throw-away folder, not as .ipynb_checkpoints/ beside the notebooks
                   f"--FileCheckpoints.checkpoint_dir={self._tmp / 'checkpoints'}"]
        self._log = open(self.log_path, "w")  # noqa: SIM115  (open as long as the server runs)
        self.process = subprocess.Popen(command, env=self._environment(), stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.process.returncode}:\n{self.log()}")
            try:
                self.api("/api/status")
                return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer within {self.start_timeout:.0f} s:\n{self.log()}")

    def shutdown_kernels(self) -> None:
        """Stop every kernel this server runs (after a notebook, to free its memory)."""
        for session in self.api("/api/sessions") or []:
            self.api(f"/api/sessions/{session['id']}", method="DELETE")

    def log(self, last_lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-last_lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL to its process group) and remove its settings."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def chromium_context(viewport=(1400, 1000)):
    """A Playwright browser context on the system's headless Chromium, with a fresh profile."""
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    profile = tempfile.mkdtemp(prefix="course-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": viewport[0], "height": viewport[1]})
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# JavaScript run in the page. Cells are read in notebook order; with windowing off the
# n-th ``.jp-Notebook-cell`` element is the n-th cell of the model.
_JS_PROMPTS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-Notebook-cell'))
    .map(c => { const p = c.querySelector('.jp-InputPrompt'); return p ? p.innerText.trim() : null; })"""

_JS_STATUS = """() => {
    const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
    const bar = document.querySelector('#jp-main-statusbar');
    return {indicator: ind ? ind.getAttribute('data-status') : null, statusbar: bar ? bar.innerText : ''};
}"""

_JS_MODEL = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    return panel.content.model.toJSON();
}"""

# What each cell shows: top-level outputs (their kind and whether a widget rendered
# inside), images with their natural size, and texts that betray a failed rendering.
_JS_CELLS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-Notebook-cell')).map((cell, index) => {
    const area = cell.querySelector('.jp-Cell-outputArea');
    const top = area ? Array.from(area.querySelectorAll(':scope > .jp-OutputArea-child > .jp-OutputArea-output')) : [];
    return {
        index: index,
        outputs: top.map(o => ({mime: o.getAttribute('data-mime-type'),
                                widget: o.querySelector('.jupyter-widgets') !== null,
                                text: (o.innerText || '').slice(0, 300)})),
        images: Array.from(cell.querySelectorAll('.jp-OutputArea-output img')).map(
            i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
        widgets: Object.fromEntries(Object.entries(SELECTORS).map(([k, s]) => [k, cell.querySelectorAll(s).length])),
        text: area ? area.innerText.slice(0, 5000) : '',
    };
})""".replace("SELECTORS", json.dumps(WIDGET_SELECTORS))

# A fingerprint of a cell's output that ignores the controls themselves (a slider's
# own readout changes when it moves, an upload button counts its files, even if nothing
# is linked to them).
_JS_OUTPUT_FINGERPRINT = """(cell) => {
    const area = cell.querySelector('.jp-Cell-outputArea');
    if (!area) return '';
    const copy = area.cloneNode(true);
    const controls = '.widget-readout, .widget-label, select, input, button, .widget-upload, .jupyter-button, .noUi-target';
    copy.querySelectorAll(controls).forEach(e => e.remove());
    const images = Array.from(area.querySelectorAll('img')).map(i => i.src).join('|');
    return images + '||' + copy.innerText;
}"""

FAILED_RENDER_MARKERS = ("Error displaying widget", "Loading widget...", "<Figure size")


class LabNotebook:
    """One notebook opened in a JupyterLab page: run it, read what it shows, interact, screenshot."""

    def __init__(self, lab: JupyterLab, page, relative_path: str, screenshot_dir: Path):
        self.lab = lab
        self.page = page
        self.relative_path = relative_path
        self.screenshot_dir = Path(screenshot_dir)
        self.screenshot_dir.mkdir(parents=True, exist_ok=True)
        self.outside_requests: list[str] = []
        self.page.on("request", self._record_request)

    def _record_request(self, request) -> None:
        url = urlparse(request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname not in ("127.0.0.1", "localhost"):
            self.outside_requests.append(request.url)

    # -- opening and running -------------------------------------------------------------
    def open(self, timeout: float = 180.0) -> None:
        """Open the notebook and wait until its kernel is idle (accepting a kernel dialog if one asks)."""
        self.page.goto(self.lab.notebook_url(self.relative_path), timeout=timeout * 1000)
        self.page.wait_for_selector(".jp-Notebook .jp-Notebook-cell", timeout=timeout * 1000)
        open_notebooks = self.page.locator(".jp-Notebook").count()
        if open_notebooks != 1:
            raise AssertionError(f"expected only {self.relative_path} open, found {open_notebooks} notebooks")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dialog = self.page.locator(".jp-Dialog")
            if dialog.count():
                dialog.locator(".jp-mod-accept").first.click()
            status = self.page.evaluate(_JS_STATUS)
            if status["indicator"] == "idle" and "| Idle" in status["statusbar"] \
                    and "No Kernel" not in status["statusbar"]:
                return
            time.sleep(0.5)
        raise TimeoutError(f"the kernel of {self.relative_path} did not become idle: {self.page.evaluate(_JS_STATUS)}")

    def hide_left_sidebar(self) -> None:
        """More room for the notebook in the screenshots."""
        self.page.evaluate("() => window.jupyterapp.shell.collapseLeft()")

    def run_all_from_menu(self, timeout: float = 900.0) -> float:
        """Click Run > Run All Cells and wait until no cell is queued or running; return the seconds taken.

        Fails early when a dialog appears (for example "the kernel died")."""
        start = time.monotonic()
        self.page.get_by_role("menuitem", name="Run", exact=True).click()
        self.page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        deadline = start + timeout
        while time.monotonic() < deadline:
            time.sleep(1.0)
            dialog = self.page.locator(".jp-Dialog")
            if dialog.count():
                raise AssertionError(f"JupyterLab showed a dialog while running: {dialog.first.inner_text()}")
            prompts = [p for p in self.page.evaluate(_JS_PROMPTS) if p is not None]
            started = any(any(ch.isdigit() for ch in p) for p in prompts)
            busy = any("*" in p for p in prompts)
            if started and not busy and self.page.evaluate(_JS_STATUS)["indicator"] == "idle":
                self.wait_for_widgets()
                return time.monotonic() - start
        raise TimeoutError(f"{self.relative_path} still running after {timeout:.0f} s; prompts: {prompts}")

    def wait_for_widgets(self, timeout: float = 60.0) -> None:
        """Widgets render after their cell finished; wait until none says it is loading."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.page.locator(".jp-Notebook").inner_text()
            if "Loading widget..." not in text:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # let the last images decode

    # -- reading what the page shows -----------------------------------------------------
    def model(self) -> dict:
        """The notebook as JupyterLab holds it (nbformat JSON, with the outputs of this run)."""
        return self.page.evaluate(_JS_MODEL)

    def cells(self) -> list[dict]:
        return self.page.evaluate(_JS_CELLS)

    def prompts(self) -> list[str | None]:
        return self.page.evaluate(_JS_PROMPTS)

    def output_fingerprint(self, cell_index: int) -> str:
        return self.page.locator(".jp-Notebook .jp-Notebook-cell").nth(cell_index).evaluate(_JS_OUTPUT_FINGERPRINT)

    # -- interacting ---------------------------------------------------------------------
    def _settled_change(self, cell_index: int, before: str, timeout: float) -> bool:
        """Wait until the kernel has answered an interaction; True when the cell's output then differs from ``before``.

        Settled means: the kernel idle and the output unchanged for two seconds, after the
        kernel was seen busy or the output changed (or 10 s passed with neither). A callback
        that redraws exactly the same picture counts as no change."""
        start = time.monotonic()
        seen, steady, answered = [], 0, False
        while time.monotonic() - start < timeout:
            time.sleep(1.0)
            seen.append(self.output_fingerprint(cell_index))
            status = self.page.evaluate(_JS_STATUS)
            idle = status["indicator"] == "idle" and "| Idle" in status["statusbar"]
            answered = answered or not idle or seen[-1] != before or time.monotonic() - start > 10
            steady = steady + 1 if idle and len(seen) > 1 and seen[-1] == seen[-2] else 0
            if answered and steady >= 2:
                self.wait_for_widgets(timeout=10)
                return seen[-1] != before
        return False

    def move_slider(self, cell_index: int, slider_index: int = 0, timeout: float = 120.0) -> bool:
        """Move a slider with the keyboard, a little and then further; True when the cell's output changed.

        First three steps right, then four pages (PageUp), then to the end (End): some
        controls only change their picture when a value crosses a threshold."""
        cell = self.page.locator(".jp-Notebook .jp-Notebook-cell").nth(cell_index)
        handle = cell.locator(".widget-slider .noUi-handle").nth(slider_index)
        before = self.output_fingerprint(cell_index)
        handle.scroll_into_view_if_needed()
        for key, times in (("ArrowRight", 3), ("PageUp", 4), ("End", 1)):
            handle.focus()
            for _ in range(times):
                self.page.keyboard.press(key)
            if self._settled_change(cell_index, before, timeout):
                return True
        return False

    def choose_dropdown(self, cell_index: int, dropdown_index: int = 0, timeout: float = 120.0) -> bool:
        """Select the dropdown's next option; True when the cell's output changed."""
        select = self.page.locator(".jp-Notebook .jp-Notebook-cell").nth(cell_index) \
            .locator(".widget-dropdown select").nth(dropdown_index)
        options = select.locator("option").all_inner_texts()
        if len(options) < 2:
            return False
        current = select.evaluate("s => s.selectedIndex")
        before = self.output_fingerprint(cell_index)
        select.scroll_into_view_if_needed()
        select.select_option(index=(current + 1) % len(options))
        return self._settled_change(cell_index, before, timeout)

    def upload_file(self, cell_index: int, path, timeout: float = 120.0) -> bool:
        """Click the cell's upload button, choose ``path`` in the file dialog; True when the output changed."""
        button = self.page.locator(".jp-Notebook .jp-Notebook-cell").nth(cell_index).locator(".widget-upload").first
        before = self.output_fingerprint(cell_index)
        button.scroll_into_view_if_needed()
        with self.page.expect_file_chooser() as chooser:
            button.click()
        chooser.value.set_files(str(path))
        return self._settled_change(cell_index, before, timeout)

    # -- screenshots ---------------------------------------------------------------------
    def screenshot_page(self, name: str) -> Path:
        path = self.screenshot_dir / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def screenshot_cell(self, cell_index: int, name: str | None = None) -> Path:
        path = self.screenshot_dir / f"{name or f'cell-{cell_index:02d}'}.png"
        cell = self.page.locator(".jp-Notebook .jp-Notebook-cell").nth(cell_index)
        cell.scroll_into_view_if_needed()
        cell.screenshot(path=str(path))
        return path


# -- judging a run (pure functions on what LabNotebook read) --------------------------------
def error_outputs(model: dict, allowed_tag: str = "raises-exception") -> list[str]:
    """'cell N: Ename: value' for every error output, except in cells tagged ``allowed_tag``."""
    errors = []
    for index, cell in enumerate(model["cells"]):
        if allowed_tag in cell.get("metadata", {}).get("tags", []):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append(f"cell {index}: {output.get('ename')}: {output.get('evalue')}")
    return errors


def unexecuted_cells(model: dict) -> list[int]:
    """Indices of non-empty code cells that have no execution count after the run."""
    return [i for i, cell in enumerate(model["cells"])
            if cell["cell_type"] == "code" and "".join(cell["source"]).strip() and cell.get("execution_count") is None]


def widget_outputs_in_model(model: dict) -> list[int]:
    """Per cell, how many outputs are ipywidgets views (what the page should draw as widgets)."""
    return [sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in c.get("outputs", []))
            for c in model["cells"]]


def rendering_problems(model: dict, cells: list[dict]) -> list[str]:
    """Widgets shown as text, broken images and figures printed as text instead of drawn."""
    problems = []
    for expected, cell in zip(widget_outputs_in_model(model), cells):
        drawn = sum(o["widget"] for o in cell["outputs"])
        if drawn < expected:
            problems.append(f"cell {cell['index']}: {expected} widget outputs, {drawn} drawn as widgets")
        for image in cell["images"]:
            if not image["complete"] or image["width"] == 0:
                problems.append(f"cell {cell['index']}: an image did not load")
        for marker in FAILED_RENDER_MARKERS:
            if marker in cell["text"]:
                problems.append(f"cell {cell['index']}: shows {marker!r}")
    return problems
