"""The lean install: `pip install deepminer` (no extra) trains, evaluates and exports without the lessons' stack.

Installing into a fresh environment needs the network, so the test takes the other road: it runs the console scripts
in a subprocess where every package of the `lessons`, `onnx` and `tensorboard` extras (and what they pull in) is made
unimportable, and checks that the core requirements in settings.ini name none of them."""
import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_IN_CORE = ["jupyterlab", "ipywidgets", "IPython", "pytorch_grad_cam", "cv2", "sklearn", "pandas", "seaborn",
               "onnx", "onnxruntime", "tensorboard", "nbdev", "fastcore"]
BLOCK = f"""
import sys
for name in {NOT_IN_CORE!r}:
    sys.modules[name] = None   # `import name` raises ModuleNotFoundError; importlib.util.find_spec(name) gives None
"""


def settings() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(delimiters=["="])
    parser.read(ROOT / "settings.ini", encoding="utf-8")
    return parser["DEFAULT"]


def test_core_requirements_leave_the_lessons_out():
    core = {r.split(">")[0].split("<")[0].split("=")[0] for r in settings()["requirements"].split()}
    lessons = {r.split(">")[0].split("<")[0].split("=")[0] for r in settings()["lessons_requirements"].split()}
    assert lessons == {"jupyterlab", "ipywidgets", "grad-cam", "pandas", "seaborn"}
    assert not core & (lessons | {"onnx", "onnxruntime", "tensorboard"})
    dev = settings()["dev_requirements"].split()
    assert all(r in dev for r in settings()["lessons_requirements"].split())   # [dev] still gives everything


def script(name: str, args: list, cwd: Path) -> subprocess.CompletedProcess:
    code = BLOCK + f"from deepminer.cli import {name}_main; {name}_main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=900)


def test_train_eval_export_without_the_lessons(tmp_path):
    blocked = subprocess.run([sys.executable, "-c", BLOCK + "import pandas"], capture_output=True, text=True)
    assert "ModuleNotFoundError" in blocked.stderr                      # the block works
    synth = script("synth", [tmp_path / "data", "--train-ids", "6", "--test-ids", "4", "--cameras", "3",
                             "--distractors", "3", "--junk", "2", "--quiet"], tmp_path)
    assert synth.returncode == 0, synth.stderr
    train = script("train", ["--root", tmp_path / "data", "--output", tmp_path / "run", "--epochs", "1", "--P", "3",
                             "--K", "2", "--no-baseline", "--quiet", "--ie-after", "--no-local", "--no-sam", "--no-cham"],
                   tmp_path)
    assert train.returncode == 0, train.stderr
    evaluation = script("eval", ["--checkpoint", tmp_path / "run" / "checkpoint.pt", "--quiet"], tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    assert (tmp_path / "run" / "eval" / "metrics.json").is_file()
    export = script("export", ["--checkpoint", tmp_path / "run" / "checkpoint.pt"], tmp_path)
    assert export.returncode == 0, export.stderr                     # the default format needs no extra package
    assert (tmp_path / "run" / "checkpoint.torchscript.pt").is_file()
    onnx = script("export", ["--checkpoint", tmp_path / "run" / "checkpoint.pt", "--format", "onnx"], tmp_path)
    assert onnx.returncode == 2 and "pip install onnx onnxruntime" in onnx.stderr
    assert "Traceback" not in onnx.stderr
