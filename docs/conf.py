"""Sphinx configuration of the lessons' website: myst-nb renders the notebooks with their stored outputs (nothing is
executed), sphinx-book-theme lays them out, and MathJax is served from the site itself so that equations are typeset
without the network. Built by `python docs/build.py` (see there), which prepares the notebooks first."""
import configparser
from pathlib import Path

_settings = configparser.ConfigParser()
_settings.read(Path(__file__).resolve().parent.parent / "settings.ini")
_lib = _settings["DEFAULT"]

project = "deepminer"
author = _lib.get("author", "")
copyright = f"{_lib.get('copyright', '')}"
release = _lib.get("version", "")

extensions = ["myst_nb"]
nb_execution_mode = "off"                       # the stored outputs are the lesson's; nothing runs at build time
myst_enable_extensions = ["dollarmath", "amsmath"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type", "misc.highlighting_failure"]

html_theme = "sphinx_book_theme"
html_title = "deepminer"
html_theme_options = {"show_toc_level": 2, "use_download_button": False, "use_fullscreen_button": False}
html_static_path = ["_static"]                  # build.py puts MathJax and the explorer's script there
html_css_files = ["custom.css"]                 # docs/_static/custom.css: code wraps, inline code, the explorer
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"   # MathJax 2, from jupyter-server-mathjax
html_show_sourcelink = False
html_copy_source = False                        # the pages are the notebooks; their sources stay in nbs/
mathjax2_config = {                             # the package ships the STIX-Web fonts only (not MathJax's TeX fonts)
    "HTML-CSS": {"availableFonts": ["STIX-Web"], "preferredFont": "STIX-Web", "webFont": "STIX-Web", "imageFont": None},
    "tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]], "processEscapes": True,
                "processClass": "tex2jax_process|mathjax_process|math|output_area",   # myst-nb marks the rest
                "ignoreClass": "tex2jax_ignore|mathjax_ignore|document"},
}
