"""The lessons' website as a reader uses it: `docs/build.py` builds it into a temporary folder (offline: Sphinx and
myst-nb render the stored outputs, MathJax comes from the site itself), and headless Chromium, with every network
request refused, opens the landing page, follows a link to a lesson, waits for its equations to be typeset and its
pictures to load, then drags the kernel-free τ explorer of `09_widgets` and checks that its picture and erased shares
change. Needs the Debian package `chromium` and playwright (see tests/test_browser.py); skips when one is missing,
and fails instead under CI. DEEPMINER_SCREENSHOTS=folder keeps pictures of the pages there."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_browser import CHROMIUM, CHROMIUM_FLAGS, require_browser_tools

ROOT = Path(__file__).resolve().parents[1]
MATHJAX_DONE = "() => window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0 && !MathJax.Hub.queue.running"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The website, built by the README's command into a temporary folder."
    require_browser_tools("the docs test")
    out = tmp_path_factory.mktemp("docs") / "site"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "build.py"), str(out)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path_factory.getbasetemp())
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"site built in {time.perf_counter() - start:.1f} s")
    return out


def test_every_notebook_has_a_page(site):
    pages = {p.stem for p in site.glob("*.html")}
    assert {p.stem for p in (ROOT / "nbs").glob("*.ipynb")} <= pages
    assert not any((site.parent / name).exists() for name in ("jupyter_execute", ".doctrees")), "wrote beside the site"


def test_a_reader_follows_a_link_sees_typeset_equations_and_drags_the_static_explorer(site):
    from playwright.sync_api import sync_playwright
    shots = Path(os.environ["DEEPMINER_SCREENSHOTS"]) if os.environ.get("DEEPMINER_SCREENSHOTS") else None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            refused = []
            page.route("http*://**", lambda route: (refused.append(route.request.url), route.abort()))  # offline
            page.goto((site / "index.html").as_uri())
            page.get_by_role("link", name="Erasing Operation (ErO)").first.click()
            page.wait_for_url("**/02_erase.html")
            page.wait_for_function(MATHJAX_DONE, timeout=60_000)
            assert page.locator("span.MathJax, div.MathJax_Display").count() >= 10        # equations typeset
            assert page.locator(".MathJax_Error").count() == 0
            loaded = page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
            assert loaded >= 1 and loaded == page.evaluate("document.images.length")        # every picture shown
            if shots:
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=shots / "site_02_erase.png")

            page.goto((site / "09_widgets.html").as_uri())
            slider = page.locator("input.deepminer-static-tau").first
            explorer = page.locator(".deepminer-static-explorer", has=slider).first
            frame, erased = explorer.locator("img.deepminer-static-frame").first, explorer.locator(".deepminer-static-erased").first
            slider.scroll_into_view_if_needed()
            before = (frame.get_attribute("src"), erased.inner_text(), frame.screenshot())
            box = slider.bounding_box()
            page.mouse.click(box["x"] + 0.1 * box["width"], box["y"] + box["height"] / 2)   # a low τ: more erased
            after = (frame.get_attribute("src"), erased.inner_text(), frame.screenshot())
            assert after[0] != before[0] and after[1] != before[1] and after[2] != before[2]
            if shots:
                explorer.screenshot(path=shots / "site_static_tau_explorer.png")
            assert not refused, f"the pages asked the network for {refused[:3]}"
        finally:
            browser.close()
