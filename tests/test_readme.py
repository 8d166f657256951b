"""README.md tells the same story as nbs/index.ipynb, and its quick start is what CI runs.

README.md is the index notebook's markdown, in order. After editing nbs/index.ipynb, regenerate it with
`python tests/test_readme.py` (nbdev's own `nbdev_readme` needs the quarto binary, which is not on PyPI as a wheel).
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by `python tests/test_readme.py`: edit the notebook, not this file. -->\n\n"


def readme_from_index() -> str:
    "The README text made from the markdown cells of nbs/index.ipynb."
    nb = json.loads((ROOT / "nbs" / "index.ipynb").read_text(encoding="utf-8"))
    cells = ["".join(c["source"]).strip() for c in nb["cells"] if c["cell_type"] == "markdown"]
    return HEADER + "\n\n".join(cells) + "\n"


def quick_start_commands(readme: str) -> list[str]:
    "The commands of the first ```sh block after the '## Quick start' heading."
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_readme_matches_index():
    assert (ROOT / "README.md").read_text(encoding="utf-8") == readme_from_index(), \
        "README.md is out of date with nbs/index.ipynb: run `python tests/test_readme.py`"


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "deepminer-" in main_job
    assert "nbdev_test" in tests and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "quick_start_commands" in ci  # CI reads the command from the README rather than keeping a copy


if __name__ == "__main__":
    if sys.argv[1:] == ["--test-command"]:
        print(quick_start_commands((ROOT / "README.md").read_text(encoding="utf-8"))[1])
    else:
        (ROOT / "README.md").write_text(readme_from_index(), encoding="utf-8")
        print("wrote README.md")
