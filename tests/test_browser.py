"""The τ explorer in a real browser: JupyterLab on localhost opens nbs/09_widgets.ipynb in headless Chromium and runs
its cells up to the first explorer (the section a learner starts with; `nbdev_test` runs the whole notebook), the test
drags the τ slider with the mouse, and the rendered mask images must change (new image data from the kernel). It then
runs on to the kernel-free explorer (`static_tau_explorer`, an HTML output with a script) and moves its slider: the
picture and the erased shares must change there too.

Needs the Debian package `chromium` (/usr/bin/chromium), and `playwright` and `jupyterlab` in the environment; it
skips, saying which is missing, only when one of them is not installed, and fails instead under CI (CI=true).
Playwright drives the system Chromium: no browser is downloaded. DEEPMINER_SCREENSHOTS=folder keeps pictures of the
page there."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "nbs" / "09_widgets.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
SERVER_START_S, PAGE_S, NOTEBOOK_RUN_S, UPDATE_S = 90, 90, 240, 30   # bounds of each wait, in seconds
FIRST_EXPLORER = "TauExplorer(reference"   # in the source of the cell that shows the notebook's first explorer
STATIC_EXPLORER = "static_tau_explorer(reference, people[:4])"   # the cell that shows the kernel-free one


def cells_to_run(needle: str = FIRST_EXPLORER) -> int:
    "How many cells of the notebook, from the top, run in the browser: up to and including the first holding `needle`."
    sources = ["".join(cell["source"]) for cell in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]]
    found = [i for i, source in enumerate(sources) if needle in source]
    assert found, f"no cell of {NOTEBOOK.name} contains {needle!r}: where does that explorer start?"
    return found[0] + 1


def missing_tools() -> list[str]:
    "What this test needs and is not installed."
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    for module, package in (("playwright.sync_api", "playwright"), ("jupyterlab", "jupyterlab")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the Python package {package} (pip install {package})")
    return missing


def require_browser_tools(test: str = "the browser test"):
    "Skip when a tool is missing — except under CI (CI=true), which installs them all and must run `test`."
    missing = missing_tools()
    if missing and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run {test}, but these are not installed: " + "; ".join(missing))
    if missing:
        pytest.skip("not installed: " + "; ".join(missing))


@pytest.fixture(autouse=True)
def browser_tools():
    require_browser_tools()


def free_port() -> int:
    "A TCP port on 127.0.0.1 that nothing listens on now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, log: Path, timeout: float):
    "Poll `url` until it answers 200; fail with the server's log if it exits or `timeout` passes."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def jupyterlab(tmp_path):
    "JupyterLab serving a copy of the notebook from a temporary folder, on 127.0.0.1 with a token; always shut down."
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    port, token = free_port(), os.urandom(16).hex()
    env = {**os.environ, "IN_TEST": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    # draw every cell (no virtual scrolling), so the widgets exist in the page wherever they are
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    log = tmp_path / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
               "--allow-root", "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", server, log, SERVER_START_S)
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}", log
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)       # the server's own process group: it and its kernels
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)


NOTEBOOK_STATE = """(n) => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
    if (!kernel || kernel.status !== 'idle') return false;
    const cells = panel.content.widgets.slice(0, n).filter(cell => cell.model.type === 'code');
    if (cells.some(cell => cell.model.outputs.toJSON().some(o => o.output_type === 'error'))) return 'error';
    return cells.length > 0 && cells.every(cell => cell.model.executionCount !== null) && 'done';
}"""


def test_dragging_the_tau_slider_changes_the_rendered_masks(jupyterlab):
    from playwright.sync_api import sync_playwright

    url, log = jupyterlab
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True,
                                             timeout=PAGE_S * 1000)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(PAGE_S * 1000)
            page.goto(url)
            page.wait_for_function("""() => { const p = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                return p && p.sessionContext && p.sessionContext.session && p.sessionContext.session.kernel
                    && p.sessionContext.session.kernel.status === 'idle'; }""")
            n = cells_to_run()
            page.evaluate("""(n) => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = n;
                return window.jupyterapp.commands.execute('notebook:run-all-above'); }""", n)   # cells 0 … n-1
            state = page.wait_for_function(NOTEBOOK_STATE, arg=n, timeout=NOTEBOOK_RUN_S * 1000, polling=1000).json_value()
            if state != "done":
                errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
                pytest.fail(f"a cell of the notebook failed in JupyterLab: {[e[-1200:] for e in errors]}")

            slider = page.locator(".deepminer-tau").first            # the first explorer of the notebook
            output = page.locator(".jp-OutputArea-output", has=slider).first
            masks = output.locator("img.deepminer-mask")
            slider.scroll_into_view_if_needed()
            page.wait_for_function("(n) => document.querySelectorAll('img.deepminer-mask').length >= n", arg=6)
            readout = slider.locator(".widget-readout").inner_text()
            sources = [masks.nth(i).get_attribute("src") for i in range(masks.count())]
            shot = masks.first.screenshot()
            assert masks.count() == 6 and all(s and s.startswith("blob:") for s in sources)

            slider.scroll_into_view_if_needed()                       # again: JupyterLab may have scrolled meanwhile
            track = slider.locator(".noUi-target").bounding_box()
            handle = slider.locator(".noUi-handle").bounding_box()
            page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
            page.mouse.down()
            page.mouse.move(track["x"] + 0.15 * track["width"], track["y"] + track["height"] / 2, steps=8)
            page.mouse.up()

            assert slider.locator(".widget-readout").inner_text() != readout, "the slider did not move"
            page.wait_for_function(
                """([selector, before]) => { const imgs = [...document.querySelectorAll(selector)].slice(0, before.length);
                    return imgs.length === before.length && imgs.every((img, i) => img.src !== before[i] && img.complete); }""",
                arg=["img.deepminer-mask", sources], timeout=UPDATE_S * 1000)
            assert masks.first.screenshot() != shot, "the mask image looks the same after moving τ"
            if os.environ.get("DEEPMINER_SCREENSHOTS"):  # a folder to keep pictures of the page in, for a person to look at
                folder = Path(os.environ["DEEPMINER_SCREENSHOTS"])
                folder.mkdir(parents=True, exist_ok=True)
                output.screenshot(path=folder / "tau_explorer.png")
                page.screenshot(path=folder / "jupyterlab.png")
            drag_the_static_explorer(page)
        finally:
            browser.close()


def drag_the_static_explorer(page):
    """Run the notebook on to its kernel-free explorer (an HTML output with a script) and move that slider: its picture
    and its erased shares must change, in JupyterLab as on the website (tests/test_docs.py)."""
    n = cells_to_run(STATIC_EXPLORER)
    page.evaluate("""(n) => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = n;
        return window.jupyterapp.commands.execute('notebook:run-all-above'); }""", n)
    state = page.wait_for_function(NOTEBOOK_STATE, arg=n, timeout=NOTEBOOK_RUN_S * 1000, polling=1000).json_value()
    assert state == "done", "a cell before the static explorer failed in JupyterLab"
    slider = page.locator("input.deepminer-static-tau").first
    explorer = page.locator(".deepminer-static-explorer", has=slider).first
    frame, erased = explorer.locator("img.deepminer-static-frame").first, explorer.locator(".deepminer-static-erased").first
    slider.scroll_into_view_if_needed()
    before = (frame.get_attribute("src"), erased.inner_text())
    box = slider.bounding_box()
    page.mouse.click(box["x"] + 0.1 * box["width"], box["y"] + box["height"] / 2)       # a low τ: more erased
    page.wait_for_function("([img, src]) => document.querySelector(img).getAttribute('src') !== src",
                           arg=[".deepminer-static-explorer img.deepminer-static-frame", before[0]], timeout=UPDATE_S * 1000)
    assert erased.inner_text() != before[1], "the erased shares did not change with the static slider"
    if os.environ.get("DEEPMINER_SCREENSHOTS"):
        explorer.screenshot(path=Path(os.environ["DEEPMINER_SCREENSHOTS"]) / "static_tau_explorer_jupyterlab.png")
