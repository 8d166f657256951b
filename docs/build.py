"""Build the lessons as a website, offline: `python docs/build.py [FOLDER]` (default: `_docs/`, settings.ini's
doc_path). The notebooks are copied with nbdev's directives taken out (`#| hide` and `#| default_exp` cells dropped,
`#|` lines removed), the index gets the reading order as two tables of contents (the main path, then the
appendices), MathJax is copied from jupyter-server-mathjax into the site, and Sphinx + myst-nb render the stored
outputs; nothing is executed. Open FOLDER/index.html in a browser."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATHJAX_PARTS = ("MathJax.js", "config", "jax/input/TeX", "jax/output/HTML-CSS", "jax/element", "extensions",
                 "fonts/HTML-CSS/STIX-Web")   # what TeX input and HTML-CSS output need (3 of its 10 MB)
MATHJAX_SKIP = ("extensions/a11y",)


def is_appendix(notebook: dict) -> bool:
    "True when the notebook's opening says it is an appendix (`01a_…`, `10_cli`, …)."
    opening = " ".join("".join(c["source"]) for c in notebook["cells"][:3] if c["cell_type"] == "markdown")
    return "appendix" in opening.lower()


def lesson_cells(notebook: dict) -> dict:
    "The notebook as a reader sees it: `#| hide` and `#| default_exp` cells dropped, other `#|` lines removed."
    cells = []
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code":
            first = source.lstrip().split("\n", 1)[0]
            if re.match(r"#\|\s*(hide|default_exp)\b", first):
                continue
            source = "\n".join(line for line in source.split("\n") if not line.lstrip().startswith("#|")).strip("\n")
        cells.append({**cell, "source": source})
    return {**notebook, "cells": cells}


def reading_order(names: list[str], appendix: dict[str, bool]) -> str:
    "The index's tables of contents, as MyST: the main path in order, then the appendices."
    def toctree(caption: str, entries: list[str]) -> str:
        return "```{toctree}\n:caption: " + caption + "\n:maxdepth: 1\n\n" + "\n".join(entries) + "\n```\n"
    lessons = [n for n in names if n != "index" and not appendix[n]]
    appendices = [n for n in names if n != "index" and appendix[n]]
    return toctree("The lessons", lessons) + "\n" + toctree("Appendices", appendices)


def copy_mathjax(static: Path):
    "MathJax 2's TeX input and HTML-CSS output, from the jupyter-server-mathjax package, into `static`/mathjax."
    import jupyter_server_mathjax
    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    for part in MATHJAX_PARTS:
        for path in [source / part] if (source / part).is_file() else sorted((source / part).rglob("*")):
            relative = path.relative_to(source)
            if path.is_file() and not str(relative).startswith(MATHJAX_SKIP):
                (static / "mathjax" / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, static / "mathjax" / relative)


def prepare(source: Path, nbs: Path = ROOT / "nbs"):
    "Write the notebooks as pages into `source`, with conf.py's folder beside them, and MathJax in _static."
    notebooks = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(nbs.glob("*.ipynb"))}
    appendix = {name: is_appendix(nb) for name, nb in notebooks.items()}
    for name, notebook in notebooks.items():
        page = lesson_cells(notebook)
        if name == "index":
            page["cells"].append({"cell_type": "markdown", "id": "reading-order", "metadata": {},
                                  "source": reading_order(list(notebooks), appendix)})
        (source / f"{name}.ipynb").write_text(json.dumps(page), encoding="utf-8")
    shutil.copyfile(ROOT / "docs" / "conf.py", source / "conf.py")
    copy_mathjax(source / "_static")
    for asset in (ROOT / "docs" / "_static").glob("*") if (ROOT / "docs" / "_static").is_dir() else []:
        shutil.copyfile(asset, source / "_static" / asset.name)


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
