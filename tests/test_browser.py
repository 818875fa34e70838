"""The notebooks as a person uses them: JupyterLab in a real Chromium, driven by Playwright.

Each notebook is opened in JupyterLab with its saved outputs. Then every notebook's Play cells (each
builds a panel and imports what it needs) run in one kernel: every panel's Run is pressed, and each
panel's results table must gain a row and its plot change while the trial ran (a trial too short for a
live redraw shows its final picture), while the kernel answers another cell. Screenshots land in
``test-artifacts/browser/`` (``LABKIT_ARTIFACTS`` moves them). nbval runs every cell of every notebook
in the same suite; running them all again here would double the notebooks' share of CI for no new check
of the front end.

Needs Debian's ``chromium`` (``apt install chromium``; Playwright cannot download a browser here) and
the ``test`` extra (playwright, jupyterlab). Without them the test skips, unless
``LABKIT_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes a missing browser a failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # the closed network refuses Chromium's own calls
SETTINGS = {  # every cell in the DOM (no virtual scrolling), no news toast over the page
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}
PLAY_CELL = "panel("  # the cells that build a panel; each imports what it needs
HANGS = {"04_tokenizer_deadlocks.ipynb"}  # its first panel's default settings hang (broken tokenizer fork)
RUN_TIMEOUT_S = 180  # one panel cell (first import of torch in a fresh kernel) or one trial

pytestmark = pytest.mark.browser


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt install chromium)"
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            return f"no {module} (pip install -e '.[test]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on loopback over a copy of the notebooks (autosave never touches the repo)."""

    def __init__(self, home: Path):
        self.root, self.token, self.port = home / "notebooks", secrets.token_hex(16), _free_port()
        self.root.mkdir(parents=True)
        for nb in NOTEBOOKS:
            shutil.copy(nb, self.root / nb.name)
        for name, values in SETTINGS.items():
            path = home / "settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_CONFIG_DIR": str(home / "config")}
        self.log = (home / "jupyterlab.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={self.root}", f"--LabApp.user_settings_dir={home / 'settings'}",
             f"--LabApp.workspaces_dir={home / 'workspaces'}", "--LabApp.extension_manager=readonly",
             "--ServerApp.terminals_enabled=False", *(["--allow-root"] if os.geteuid() == 0 else [])],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while self.api("status") is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"JupyterLab did not start; its log: {(home / 'jupyterlab.log').read_text()[-2000:]}")
            time.sleep(0.5)

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = response.read()
                return json.loads(body) if body else {}
        except OSError:
            return None

    def kernel_state(self, notebook: str) -> str | None:
        for session in self.api("sessions") or []:
            if session["path"] == notebook and session.get("kernel"):
                return session["kernel"]["execution_state"]
        return None

    def shut_down_kernels(self) -> None:
        for session in self.api("sessions") or []:
            self.api(f"sessions/{session['id']}", method="DELETE")

    def stop(self) -> None:
        """Shut every kernel down, stop the server, and kill whatever of theirs is still alive."""
        self.shut_down_kernels()
        try:
            family = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if self.process.poll() is None:
            self.process.terminate()  # the server's own shutdown stops its kernels too
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for child in family:
            if child.is_running():
                child.kill()
        psutil.wait_procs(family, timeout=5)
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    why = _missing()
    if why:
        if os.environ.get("LABKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test is required here, and: {why}")
        pytest.skip(why)
    server = Lab(tmp_path_factory.mktemp("lab"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("LABKIT_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(condition, timeout: float, what, poll: float = 0.25):
    """Poll ``condition`` until it is true; ``what`` (text, or a function giving it) says what failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"waited {timeout:.0f} s for {what() if callable(what) else what}")


def _within(seconds: float, condition) -> bool:
    """Whether ``condition()`` holds within ``seconds``: for a step that is retried when it did not take."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _execute(page, cell) -> None:
    """Ctrl+Enter on the active ``cell``, again while its prompt has not changed (to ``[*]``, which
    JupyterLab shows before the kernel is even asked): a key pressed during a re-render can be lost."""
    prompt = cell.locator(".jp-InputPrompt")
    before = prompt.inner_text()

    def started() -> bool:
        page.keyboard.press("Control+Enter")
        return _within(5, lambda: prompt.inner_text() != before)

    _wait(started, 15, f"the cell to start running (its prompt stayed {before!r})")


def _scratch_cell(page, cell, code: str):
    """Add a cell under ``cell``, type ``code`` into it and run it; its output area.

    Each step waits for the page to show that it took: a key pressed before JupyterLab has moved focus
    is lost without a sign, and the cell would run empty."""
    cells = page.locator(".jp-Notebook .jp-Cell")
    count = cells.count()

    def add_below() -> bool:  # command mode on this cell, then "b"; again if no cell came within 5 s
        cell.locator(".jp-InputPrompt").click()
        page.keyboard.press("Escape")
        page.keyboard.press("b")
        return _within(5, lambda: cells.count() > count)

    _wait(add_below, 15, "a new cell under the panel's cell")
    scratch = cell.locator("xpath=following-sibling::*[1]")
    editor = scratch.locator(".jp-InputArea-editor")
    editor.click()
    _wait(lambda: scratch.locator(".cm-focused").count(), 10, "the new cell's editor to take the keyboard")
    page.keyboard.type(code)
    _wait(lambda: code in editor.inner_text(), 10, lambda: f"the typed code in the new cell (it holds {editor.inner_text()!r})")
    _execute(page, scratch)
    return scratch.locator(".jp-OutputArea-output")


def _press_run(page, cell, ask_kernel: bool) -> dict:
    """Press Run on a cell's panel and watch it until its table has one more row; with ``ask_kernel``,
    ask the kernel for something while the trial goes on."""
    box = cell.locator(".labkit-panel")
    plot, rows = box.locator("img.labkit-plot"), box.locator(".labkit-table tbody tr")
    before, count = plot.get_attribute("src"), rows.count()
    box.locator(".labkit-run-button").click()
    start, seen, answered = time.monotonic(), [], {}
    reply = _scratch_cell(page, cell, "print('the kernel answers')") if ask_kernel else None

    def finished():
        src = plot.get_attribute("src")
        if src and src != before and (not seen or seen[-1] != src):
            seen.append(src)
        done = rows.count() > count and bool(seen)  # the row, and this run's picture (it may land after the row)
        # any of its outputs: a warning printed by the kernel may come first
        if reply is not None and not answered and any("answers" in text for text in reply.all_inner_texts()):
            answered.update(after=time.monotonic() - start, run_going_on=not done)
        return done and (answered or reply is None)

    _wait(finished, RUN_TIMEOUT_S, lambda: f"the panel's table to gain a row (rows: {count} before, {rows.count()} now) "
          f"and its plot to change ({len(seen)} pictures)"
          + (f" and the other cell to answer (its output: {reply.all_inner_texts()})" if reply is not None else ""),
          poll=0.1)
    status = box.locator(".labkit-status").inner_text()
    took = re.search(r" in ([0-9.]+) s", status)
    return {"seconds": round(time.monotonic() - start, 1), "trial_seconds": float(took[1]) if took else None,
            "pictures": len(seen), "rows": rows.count() - count, **answered, "status": status,
            "details": box.locator(".labkit-details").inner_text()[:300]}


def _run_then_stop(page, cell) -> str:
    """Press Run, then Stop while the trial runs: the panel says it stopped and kills the trial."""
    box = cell.locator(".labkit-panel")
    status = box.locator(".labkit-status")
    box.locator(".labkit-run-button").click()
    _wait(lambda: "running" in status.inner_text(), 30, lambda: f"the run to start (status: {status.inner_text()!r})")
    box.locator(".labkit-stop-button").click()
    _wait(lambda: "stopped" in status.inner_text(), 30, lambda: f"the panel to stop (status: {status.inner_text()!r})")
    return status.inner_text()


def _code_cells(notebook: Path) -> list[dict]:
    return [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]


def _saved_images(notebook: Path) -> int:
    return sum("image/png" in out.get("data", {}) for cell in _code_cells(notebook) for out in cell.get("outputs", []))


@pytest.mark.parametrize("notebook", [nb.name for nb in NOTEBOOKS])
def test_each_notebook_opens_with_its_saved_outputs(notebook, lab, browser, artifacts):
    """What an attendee sees before running anything: every cell, every saved figure drawn, no error box."""
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    try:
        # a workspace of its own, so that no tab of an earlier test comes back with it
        page.goto(f"{lab.url}/lab/workspaces/{Path(notebook).stem}/tree/{notebook}?token={lab.token}")
        cells = page.locator(".jp-Notebook .jp-CodeCell")
        expected, saved = len(_code_cells(ROOT / "notebooks" / notebook)), _saved_images(ROOT / "notebooks" / notebook)
        _wait(lambda: cells.count() == expected, 90, lambda: f"{notebook}'s {expected} code cells (shown: {cells.count()})")
        images = page.locator(".jp-OutputArea-output img")
        _wait(lambda: images.count() >= saved, 30, lambda: f"{notebook}'s {saved} saved figures (shown: {images.count()})")
        assert all(img.evaluate("i => i.complete && i.naturalWidth > 100") for img in images.all())
        assert not page.locator(".jp-OutputArea-output[data-mime-type*='error']").count()
    finally:
        page.screenshot(path=str(artifacts / f"{Path(notebook).stem}-page.png"))
        page.close()
        lab.shut_down_kernels()


LIVE_CELL = """import labkit
live = labkit.LivePlot("thread-storm / one-thread")
trial = labkit.run("thread-storm", "one-thread", knobs={"tokens": 64}, on_tick=live).trials[0]  # 4 to 5 s
print("finished:", trial.outcome)"""


def _play_cells() -> list[tuple[str, str]]:
    """Every notebook's Play cells, in order: ``(notebook, source)``. Each imports what it needs."""
    return [(nb.name, "".join(cell["source"])) for nb in NOTEBOOKS for cell in _code_cells(nb)
            if PLAY_CELL in "".join(cell["source"])]


def test_every_panel_runs_in_the_browser(lab, browser, artifacts):
    """Every notebook's panels in one kernel (what differs between them is the scenario and its controls,
    not the kernel): build each, press its Run, and watch its table and plot; a cell asked meanwhile
    answers (during the kernel's first trial, which starts its warm process, and during a hang); Stop
    ends a trial that would hang; a plain cell's ``LivePlot`` redraws while its trial runs."""
    import nbformat

    plays = _play_cells()
    kernel = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}  # else Lab asks
    cells = [nbformat.v4.new_code_cell(source) for _, source in plays] + [nbformat.v4.new_code_cell(LIVE_CELL)]
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=kernel), lab.root / "panels.ipynb")
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    try:
        page.goto(f"{lab.url}/lab/workspaces/panels/tree/panels.ipynb?token={lab.token}")
        code = page.locator(".jp-Notebook .jp-CodeCell")
        _wait(lambda: code.count() == len(cells), 90, "the panels' notebook to open")
        # found by their text: the cells that ask the kernel something are added between them
        shown = code.filter(has=page.locator(".jp-InputArea-editor", has_text=PLAY_CELL))
        _wait(lambda: lab.kernel_state("panels.ipynb") == "idle", 90, "its kernel to start")
        runs = []
        for i, (notebook, _) in enumerate(plays):
            cell = shown.nth(i)
            cell.locator(".jp-InputArea-editor").click()
            _wait(lambda: "jp-mod-active" in (cell.get_attribute("class") or ""), 10, "the Play cell to be active")
            _execute(page, cell)
            box, error = cell.locator(".labkit-panel"), cell.locator("[data-mime-type*='error']")
            _wait(lambda: box.count() or error.count(), RUN_TIMEOUT_S, f"the panel of {notebook}'s Play cell")
            assert not error.count(), error.first.inner_text()
            assert "ipywidgets" not in cell.locator(".jp-OutputArea").inner_text()  # the widget, not its fallback
            stderr = cell.locator("[data-mime-type='application/vnd.jupyter.stderr']")
            assert not stderr.count(), f"the panel opens under a stderr box: {stderr.first.inner_text()}"  # reads as an error
            assert box.locator(".labkit-run-button").is_enabled()
            hangs = notebook in HANGS and not any(run["notebook"] == notebook for run in runs)
            run = _press_run(page, cell, ask_kernel=i == 0 or hangs)  # the kernel's first trial starts its warm process
            runs.append({"notebook": notebook, "hangs": hangs, **run})
            box.screenshot(path=str(artifacts / f"{Path(notebook).stem}-panel{sum(r['notebook'] == notebook for r in runs)}.png"))
        print(json.dumps(runs, indent=1))
        for run in runs:
            assert run["rows"] == 1, run
            assert "Error" not in run["status"], run  # a finished trial reports its outcome, not an exception
            if (run["trial_seconds"] or 0) >= 2.5:  # long enough for a live redraw before the final picture
                assert run["pictures"] >= 2, f"the plot did not move during the run: {run}"
            if run["hangs"] or (run is runs[0] and (run["trial_seconds"] or 0) >= 3):  # long enough to type a cell
                assert run["run_going_on"], f"the other cell answered only after the run: {run}"
            if run["hangs"]:
                assert " hung " in run["status"] and "stacks of process" in run["details"], run
        # Stop on a trial that would hang until its timeout: the panel says so and is free again
        last_of_hangs = max(i for i, (notebook, _) in enumerate(plays) if notebook in HANGS)
        assert "the trial's processes were killed" in _run_then_stop(page, shown.nth(last_of_hangs))
        again = shown.nth(last_of_hangs).locator(".labkit-run-button")
        _wait(again.is_enabled, 10, "Run to be enabled again after Stop")
        _assert_the_live_cell_moves(page, code.filter(has=page.locator(".jp-InputArea-editor", has_text="LivePlot(")),
                                    artifacts)
    finally:
        page.screenshot(path=str(artifacts / "panels-page.png"))  # what it looked like at the end
        page.close()
        lab.shut_down_kernels()


def _assert_the_live_cell_moves(page, cell, artifacts) -> None:
    """Outside panels, ``LivePlot`` redraws through a display handle in the cell that runs the trial."""
    cell.locator(".jp-InputArea-editor").click()
    _execute(page, cell)
    picture, seen = cell.locator(".jp-OutputArea-output img"), []

    def finished():
        if picture.count() and (src := picture.first.get_attribute("src")) and src not in seen:
            seen.append(src)
        return "finished:" in cell.locator(".jp-OutputArea").inner_text()

    _wait(finished, RUN_TIMEOUT_S, "the live cell to finish", poll=0.1)
    cell.screenshot(path=str(artifacts / "live-cell.png"))
    assert len(seen) >= 3, f"the cell's plot was drawn {len(seen)} times during the trial"


def test_tour_report_shows_every_figure(tmp_path, cheap, browser, artifacts):
    """``labkit tour --out DIR``, its report.html opened in Chromium: every figure loads (on a cheap
    scenario: every scenario's figures come from the same code, and test_cli runs a real one)."""
    from labkit.ui.cli import main

    assert main(["tour", "--quick", "--repeats", "1", "--out", str(tmp_path),
                 "--only", "test-count"]) == 0
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto((tmp_path / "report.html").as_uri())
        shown = page.eval_on_selector_all(
            "section", "ss => ss.map(s => [s.id, [...s.querySelectorAll('img')].map(i => i.complete && i.naturalWidth)])")
        page.screenshot(path=str(artifacts / "tour-report.png"), full_page=True)
    finally:
        page.close()
    assert [name for name, _ in shown] == ["test-count"]
    for name, widths in shown:
        assert widths and all(w > 100 for w in widths), f"{name}: figure widths {widths}"
