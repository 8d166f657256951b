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


def docs_module(name: str):
    "A module of docs/ (build.py, api_cards.py), imported as the build imports it."
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "docs"))


def test_next_links_walk_the_index_tables_in_order(site):
    import json
    import re
    build = docs_module("build")
    names = sorted(p.stem for p in (ROOT / "nbs").glob("*.ipynb"))
    index = json.loads((ROOT / "nbs" / "index.ipynb").read_text(encoding="utf-8"))
    main, appendices = build.reading_order(index, names)
    assert main[:3] == ["00_synthetic", "01_data", "02_erase"] and "01a_datasets" in appendices
    walked, page = [], "index"
    while True:
        html = (site / f"{page}.html").read_text(encoding="utf-8")
        found = re.search(r'<a class="right-next"\s+href="([\w-]+)\.html"', html)
        if not found:
            break
        page = found[1]
        walked.append(page)
        assert len(walked) <= len(names) + 1, f"the next links go round: {walked}"
    assert walked == main + appendices + ["api"]


def test_a_notebook_left_out_of_the_index_tables_is_named():
    build = docs_module("build")
    tables = ("The main path:\n\n| notebook |\n|---|\n| `02_erase` |\n\n"
              "The appendices:\n\n| notebook |\n|---|\n| `07a_ranking` |\n")
    index = {"cells": [{"cell_type": "markdown", "source": tables}]}
    assert build.reading_order(index, ["index", "02_erase", "07a_ranking"]) == (["02_erase"], ["07a_ranking"])
    with pytest.raises(ValueError, match="no row for 03_attention"):
        build.reading_order(index, ["index", "02_erase", "03_attention", "07a_ranking"])


def test_every_exported_name_has_a_card_in_its_lesson_and_a_line_in_the_reference(site):
    cards = docs_module("api_cards").all_cards(ROOT / "deepminer")
    assert len(cards) > 300
    assert not [c.target for c in cards if not c.doc], "an exported name without a docstring or comment"
    pages = {p.stem: p.read_text(encoding="utf-8") for p in site.glob("*.html")}
    missing = [c.target for c in cards if f'id="{c.target}"' not in pages[c.notebook]]
    assert not missing, f"no card for {missing[:5]}"
    assert all(f'href="{c.notebook}.html#{c.target}"' in pages["api"] for c in cards)
    assert "source{target=" not in "".join(pages.values())                     # no raw attribute text of show_doc
    assert not list(site.rglob("*.map")) and not (site / "_static" / "locales").exists()


def test_search_opens_a_function_card_and_no_code_block_scrolls_sideways(site):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto((site / "search.html").as_uri() + "?q=erase_mask")
            first = page.locator("#search-results a").first
            first.wait_for()
            assert first.get_attribute("href").endswith("02_erase.html#deepminer.erase.erase_mask")
            first.click()
            page.wait_for_url("**/02_erase.html#deepminer.erase.erase_mask")
            assert page.locator('dt[id="deepminer.erase.erase_mask"]').is_visible()
            wide = {}
            for html in sorted(site.glob("*.html")):
                page.goto(html.as_uri())
                found = page.evaluate("[...document.querySelectorAll('div.highlight pre')]"
                                      ".filter(p => p.scrollWidth > p.clientWidth + 1).length")
                if found:
                    wide[html.stem] = found
            assert not wide, f"code blocks that scroll sideways at 1280 px, per page: {wide}"
        finally:
            browser.close()


# for the first 20 inline equations of a page: how far (px) the baseline inside the equation lies from the text's,
# each found as the bottom of an empty inline-block put there
BASELINE_OFFSETS = """() => [...document.querySelectorAll('p span.MathJax')].slice(0, 20).map(math => {
    const marker = () => Object.assign(document.createElement('span'), {style: 'display:inline-block;width:0;height:0'});
    const outside = marker(), inside = marker();
    math.before(outside); math.querySelector('span.math').append(inside);
    const offset = inside.getBoundingClientRect().bottom - outside.getBoundingClientRect().bottom;
    outside.remove(); inside.remove();
    return Math.round(offset * 10) / 10; })"""


def test_the_site_is_light_and_every_equation_typesets_from_its_own_files(site):
    """Every page with equations typesets them all, and asks for no file the site lacks — a MathJax font family left
    out by build.py's MATHJAX_FONTS is named here. (MathJax first looks for a reader's own TeX fonts, fonts/HTML-CSS/
    TeX/otf/, which the site does not ship: those requests fail by design.) Inline equations sit on the text's
    baseline. The whole site stays under 8 MB."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    assert size < 8_000_000, f"the site weighs {size / 1e6:.1f} MB"
    missing, errors, lifted, typeset = [], {}, {}, 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("requestfailed", lambda r: missing.append(r.url) if r.url.startswith("file:")
                    and "/fonts/HTML-CSS/TeX/otf/" not in r.url else None)
            for html in sorted(site.glob("*.html")):
                if 'class="math' not in html.read_text(encoding="utf-8"):
                    continue
                page.goto(html.as_uri())
                try:
                    page.wait_for_function(MATHJAX_DONE, timeout=30_000)
                except PlaywrightTimeout:                       # MathJax waits for ever for a file that is missing
                    errors[html.stem] = "not typeset in 30 s"
                    continue
                page.wait_for_load_state("networkidle")
                typeset += page.locator("span.MathJax, div.MathJax_Display").count()
                if page.locator(".MathJax_Error").count():
                    errors[html.stem] = f"{page.locator('.MathJax_Error').count()} errors"
                lifted[html.stem] = page.evaluate(BASELINE_OFFSETS)
        finally:
            browser.close()
    assert not missing, f"files the site lacks: {sorted(set(missing))}"
    assert typeset > 300 and not errors, f"equations not typeset, per page: {errors}"
    lifted = {name: offsets for name, offsets in lifted.items() if any(abs(o) > 1 for o in offsets)}
    assert not lifted, f"inline equations off the text's baseline (px), per page: {lifted}"


# pictures that hold one panel (one plot, one heat map) and may be narrower; every other stored picture holds several
ONE_PANEL = {"02_erase": {"09e793e2"}, "06_train": {"fd1f7c7d"}, "07c_plots": {"1057068c", "bb23462e"},
             "11_ablation": {"1f0459bf", "465ffa75", "97a53cce", "db9a73a8", "f531eb15", "7e91e14b", "46298875"},
             "11b_mechanism": {"f0e5a003"}}


def stored_pictures() -> dict[str, tuple[str, str]]:
    "Every picture stored in a notebook's outputs, by the file name myst-nb gives it (the sha256 of its bytes): (notebook, cell id)."
    import base64
    import hashlib
    import json
    found = {}
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            for output in cell.get("outputs", []):
                for mime in ("image/png", "image/jpeg"):
                    if mime in output.get("data", {}):
                        data = base64.b64decode("".join(output["data"][mime]))
                        found[hashlib.sha256(data).hexdigest()] = (nb.stem, cell["id"])
    return found


def test_no_picture_of_several_panels_is_narrower_than_600_px(site):
    "At 1280 px a reader sees every stored picture that holds more than one panel at least 600 px wide."
    from playwright.sync_api import sync_playwright
    pictures, seen, narrow = stored_pictures(), set(), {}
    assert all(cell in {c for n, c in pictures.values() if n == nb} for nb, cells in ONE_PANEL.items() for cell in cells), \
        "ONE_PANEL names a cell that stores no picture"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for html in sorted(site.glob("*.html")):
                page.goto(html.as_uri())
                page.wait_for_load_state("load")
                shown = page.evaluate("[...document.querySelectorAll('div.cell_output img')].map(i => "
                                      "[i.src.split('/').pop().split('.')[0], i.getBoundingClientRect().width])")
                for name, width in shown:
                    if name not in pictures:
                        continue
                    notebook, cell = pictures[name]
                    seen.add(name)
                    if width < 600 and cell not in ONE_PANEL.get(notebook, ()):
                        narrow[f"{notebook} {cell}"] = round(width)
        finally:
            browser.close()
    assert seen == set(pictures), f"pictures the site does not show: {[pictures[n] for n in set(pictures) - seen]}"
    assert not narrow, f"pictures of several panels narrower than 600 px at 1280 px (cell: width): {narrow}"
