"""Build the lessons as a website, offline: `python docs/build.py [FOLDER]` (default: `_docs/`, settings.ini's
doc_path). The notebooks are copied with nbdev's directives taken out (`#| hide` and `#| default_exp` cells dropped,
`#|` lines removed), notebook names in the prose become links, every exported name gets an API card below the cell
that defines it (`api_cards.py`) and a line on the API reference page, and the index gets the reading order — read
from its own two tables, the main path then the appendices — as tables of contents. MathJax is copied from
jupyter-server-mathjax into the site, Sphinx + myst-nb render the stored outputs (nothing is executed), and what a
reader never loads is left out (source maps, translations, unused icons). Open FOLDER/index.html in a browser."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_cards import Card, all_cards, reference_page  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MATHJAX_PARTS = ("MathJax.js", "config", "jax/output/HTML-CSS", "jax/element", "extensions",
                 "fonts/HTML-CSS/STIX-Web")   # what TeX input and HTML-CSS output need (1.5 of its 10 MB)
# the STIX-Web font families (and styles) the pages' equations use — tests/test_docs.py opens every page and fails,
# naming the file, if an equation asks for one that is left out; the other 30 would add 1 MB to every site
MATHJAX_FONTS = {"Main": ("Regular", "Italic", "Bold"), "Normal": ("Italic", "Bold"), "Variants": ("Regular", "Italic"),
                 **{family: ("Regular",) for family in ("Alphabets", "Arrows", "DoubleStruck", "Latin", "Marks", "Misc",
                                                        "Monospace", "Operators", "Shapes", "Symbols", "Size1", "Size2",
                                                        "Size3", "Size4", "Size5")}}
MATHJAX_SKIP = ("extensions/a11y", "extensions/MathML",                     # not used, or inside the config file
                "extensions/tex2jax.js", "extensions/mml2jax.js", "extensions/MathEvents.js", "extensions/MathMenu.js",
                "extensions/MathZoom.js", "extensions/toMathML.js", "extensions/asciimath2jax.js")


def reading_order(index: dict, names: list[str]) -> tuple[list[str], list[str]]:
    """The main path and the appendices, in the order of the index's two tables (the first column of the table after
    "The main path:" and of the one after "The appendices:"); every notebook must be in one of them."""
    text = "\n".join("".join(c["source"]) for c in index["cells"] if c["cell_type"] == "markdown")
    tables = {}
    for caption in ("The main path:", "The appendices:"):
        start = text.index(caption)
        table = re.match(r"\s*((?:\|.*\n?)+)", text[start + len(caption):])[1]
        tables[caption] = [m for m in re.findall(r"^\|\s*`([\w-]+)`\s*\|", table, re.M) if m in names]
    main, appendices = tables.values()
    missing = [n for n in names if n != "index" and n not in main + appendices]
    if missing:
        raise ValueError(f"nbs/index.ipynb's tables name no row for {', '.join(missing)}: add each to the main path's "
                         f"or the appendices' table")
    return main, appendices


def numbered_title(name: str, notebook: dict) -> str:
    "The sidebar's title of a notebook: its number as the prose says it (`11`, `06a`) and its first heading."
    heading = next((line[2:].strip() for c in notebook["cells"] if c["cell_type"] == "markdown"
                    for line in "".join(c["source"]).splitlines() if line.startswith("# ")), name)
    return f"{name.split('_')[0]} · {heading}"


def toctrees(main: list[str], appendices: list[str], titles: dict[str, str]) -> str:
    "The index's tables of contents, as MyST: the main path in order, then the appendices, then the API reference."
    def toctree(caption: str, entries: list[str]) -> str:
        return "```{toctree}\n:caption: " + caption + "\n:maxdepth: 1\n\n" + "\n".join(entries) + "\n```\n"
    def entry(name: str) -> str:
        return f"{titles[name]} <{name}>"
    return "\n".join([toctree("The lessons", [entry(n) for n in main]),
                      toctree("Appendices", [entry(n) for n in appendices]), toctree("Reference", ["api"])])


def link_names(markdown: str, names: list[str]) -> str:
    "Backquoted notebook names in prose (`02_erase`) become links to their pages; code blocks stay as written."
    parts = re.split(r"(^```.*?^```)", markdown, flags=re.M | re.S)
    alternatives = "|".join(map(re.escape, sorted(names, key=len, reverse=True)))   # the longest name first
    pattern = re.compile(r"(?<![\[\w])`(" + alternatives + r")`(?![\]\w])")
    return "".join(part if part.startswith("```") else pattern.sub(r"[`\1`](\1.ipynb)", part) for part in parts)


def markdown_cell(source: str, cell_id: str) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": source}


def lesson_cells(notebook: dict, names: list[str] = (), cards: list[Card] = ()) -> dict:
    """The notebook as a reader sees it: `#| hide` and `#| default_exp` cells dropped, other `#|` lines removed,
    notebook names linked, each of `cards` below the cell that defines its name, and a `show_doc(Class.method)` cell
    replaced by that method's card."""
    below = {}
    for card in cards:
        below.setdefault(card.cell, []).append(card)
    methods = {f"{c.name}.{m.name}": m for c in cards for m in c.methods}
    cells = []
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code":
            first = source.lstrip().split("\n", 1)[0]
            if re.match(r"#\|\s*(hide|default_exp)\b", first):
                continue
            shown = re.fullmatch(r"show_doc\(([\w.]+)\)", source.strip())
            if shown and shown[1] in methods:
                owner = shown[1].split(".")[0] + "."
                cells.append(markdown_cell(methods[shown[1]].directive(no_index=True, prefix=owner), cell["id"]))
                continue
            source = "\n".join(line for line in source.split("\n") if not line.lstrip().startswith("#|")).strip("\n")
        elif cell["cell_type"] == "markdown":
            source = link_names(source, names)
        cells.append({**cell, "source": source})
        for i, card in enumerate(below.pop(cell.get("id"), [])):
            cells.append(markdown_cell(card.directive(), f"{cell['id']}-api-{i}"))
    for i, card in enumerate(c for stranded in below.values() for c in stranded):   # defined in a hidden cell
        cells.append(markdown_cell(card.directive(), f"api-{i}"))
    return {**notebook, "cells": cells}


def font_used(relative: Path) -> bool:
    """Whether a MathJax file is not a STIX-Web font (or its metrics) or is one of `MATHJAX_FONTS`:
    fonts/HTML-CSS/STIX-Web/woff/STIXMathJax_<Family>-<Style>.woff, jax/output/HTML-CSS/fonts/STIX-Web/<Family>/<Style>/."""
    parts = relative.parts
    if parts[:4] == ("fonts", "HTML-CSS", "STIX-Web", "woff"):
        family, style = relative.stem.removeprefix("STIXMathJax_").split("-")
    elif parts[:5] == ("jax", "output", "HTML-CSS", "fonts", "STIX-Web") and len(parts) > 7:
        family, style = parts[5:7]
    else:
        return True
    return style in MATHJAX_FONTS.get(family, ())


def copy_mathjax(static: Path):
    "MathJax 2's TeX input and HTML-CSS output, from the jupyter-server-mathjax package, into `static`/mathjax."
    import jupyter_server_mathjax
    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    for part in MATHJAX_PARTS:
        for path in [source / part] if (source / part).is_file() else sorted((source / part).rglob("*")):
            relative = path.relative_to(source)
            if path.is_file() and not str(relative).startswith(MATHJAX_SKIP) and font_used(relative):
                (static / "mathjax" / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, static / "mathjax" / relative)


def prepare(source: Path, nbs: Path = ROOT / "nbs"):
    "Write the notebooks as pages into `source`, with conf.py's folder beside them, and MathJax in _static."
    notebooks = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(nbs.glob("*.ipynb"))}
    main, appendices = reading_order(notebooks["index"], list(notebooks))
    titles = {name: numbered_title(name, nb) for name, nb in notebooks.items()}
    cards = all_cards(ROOT / "deepminer")
    for name, notebook in notebooks.items():
        page = lesson_cells(notebook, list(notebooks), [c for c in cards if c.notebook == name])
        if name == "index":
            page["cells"].append(markdown_cell(toctrees(main, appendices, titles), "reading-order"))
        (source / f"{name}.ipynb").write_text(json.dumps(page), encoding="utf-8")
    (source / "api.md").write_text(reference_page(cards, titles), encoding="utf-8")
    shutil.copyfile(ROOT / "docs" / "conf.py", source / "conf.py")
    copy_mathjax(source / "_static")
    for asset in (ROOT / "docs" / "_static").glob("*") if (ROOT / "docs" / "_static").is_dir() else []:
        shutil.copyfile(asset, source / "_static" / asset.name)


UNSTYLED_TOKENS = ("n", "p", "w")   # names, punctuation, spaces: pygments gives them the text's own colour


def unwrap_unstyled(html: str) -> str:
    """Pages without the spans that change nothing a reader sees (a third of their bytes): pygments' spans for names,
    punctuation and spaces in highlighted code (they take the text's colour), and docutils' one span per word of
    inline code (`span.pre`; custom.css lets inline code break only between words instead)."""
    html = re.sub(r'<span class="pre">([^<]*)</span>', r"\1", html)
    return re.sub(r'<span class="(?:' + "|".join(UNSTYLED_TOKENS) + r')">([^<]*)</span>', r"\1", html)


def trim_fontawesome(static: Path, pages: list[str]):
    """Keep only the icons the pages and the theme's scripts name (`fa-…`) in fontawesome.js (1.5 MB of 1.6 MB go),
    and the brands and regular web fonts only where something names that style (`fa-brands`, `fa-regular`)."""
    script = static / "scripts" / "fontawesome.js"
    if not script.is_file():
        return
    used = {name for text in pages for name in re.findall(r"fa-([a-z0-9-]+)", text)}
    used |= {name for js in static.rglob("*.js") if js != script
             for name in re.findall(r"fa-([a-z0-9-]+)", js.read_text(errors="ignore"))}
    icon = re.compile(r'(?<=[{,])(?:"([a-z0-9-]+)"|([a-z0-9_]+)):'                 # "name": or name:
                      r'\[\d+,\d+,\[[^\]]*\],"[0-9a-f]*",(?:"[^"]*"|\[[^\]]*\])\],?')     # [w, h, [aliases], hex, path]
    script.write_text(icon.sub(lambda m: m[0] if (m[1] or m[2]) in used else "", script.read_text(encoding="utf-8")),
                      encoding="utf-8")
    for style in ("brands", "regular"):                 # a font face no page or theme script asks for is never loaded
        if style not in used:
            (static / "vendor" / "fontawesome" / "webfonts" / f"fa-{style}-400.woff2").unlink(missing_ok=True)


def slim(site: Path):
    "Leave out what a reader never loads (source maps, the theme's translations, unused icons) and unneeded spans."
    for path in site.rglob("*.map"):
        path.unlink()
    shutil.rmtree(site / "_static" / "locales", ignore_errors=True)
    pages = []
    for page in site.glob("*.html"):
        text = unwrap_unstyled(page.read_text(encoding="utf-8"))
        page.write_text(text, encoding="utf-8")
        pages.append(text)
    trim_fontawesome(site / "_static", pages)


def build(out: str | Path = ROOT / "_docs", quiet: bool = True) -> Path:
    "Build the site into `out` (replacing a site built there before, and nothing else) and return `out`."
    from sphinx.cmd.build import build_main
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / ".buildinfo").exists():
        raise FileExistsError(f"{out} holds files that are not a site built here: choose an empty or new folder")
    with tempfile.TemporaryDirectory() as tmp:   # myst-nb writes beside its output folder: keep that in tmp too
        source, site = Path(tmp) / "src", Path(tmp) / "site"
        (source / "_static").mkdir(parents=True)
        prepare(source)
        status = build_main(["-b", "html", "-E", "-q" if quiet else "-v", "-d", str(Path(tmp) / "doctrees"),
                             str(source), str(site)])
        if status:
            raise RuntimeError(f"sphinx-build failed (status {status}); `python docs/build.py --verbose` says why")
        slim(site)
        if out.exists():
            shutil.rmtree(out)                     # a site built here before (checked above)
        shutil.copytree(site, out)
    return out


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="docs/build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=str(ROOT / "_docs"), help="the site's folder (default: _docs/)")
    parser.add_argument("--verbose", action="store_true", help="show Sphinx's output")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = build(args.out, quiet=not args.verbose)
    except (FileExistsError, RuntimeError, ImportError) as err:
        sys.exit(f"docs/build.py: error: {err}")
    print(f"built {out} in {time.perf_counter() - start:.1f} s: open {out / 'index.html'}")


if __name__ == "__main__":
    main()
