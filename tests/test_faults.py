"""Fault injection through the console scripts, each run in a subprocess: bad options; missing, damaged, foreign or
existing files; unreadable images; Ctrl-C, SIGKILL and errors at chosen points (DEEPMINER_FAULT); a missing optional
package. Every case checks the exit status, that an error is one line on stderr, that no traceback is printed, and
that the files that were there before the command are byte-identical after it (unless its flags named them).

A subprocess spends about 4 s importing torch and torchvision, so the commands that must stop at once (REFUSALS) are
started when the module's first test starts, one at a time in a background thread, and checked at the end: the other
tests (training runs, mostly) use the second core meanwhile."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from deepminer.data import RandomIdentitySampler, build_dataset
from deepminer.synthetic import make_synthetic_reid
from deepminer.train import load_checkpoint

TINY = dict(seed=0, train_ids=6, test_ids=4, cameras=3, distractors=3, junk=2)   # the synthetic set's sizes
TINY_FLAGS = ["--no-baseline", "--quiet", "--P", "3", "--K", "2", "--height", "64", "--width", "32", "--warmup-epochs", "0",
              "--backbone", "resnet18", "--ie-after", "--no-local", "--no-sam", "--no-cham"]
# the last four: the global branch alone, for speed (a 134 MB checkpoint instead of Deep Miner's 463 MB, written and
# fsynced at every epoch); nothing tested here depends on the branches
SYNTH_SIZES = ["--train-ids", "6", "--test-ids", "4", "--cameras", "3", "--distractors", "3", "--junk", "2", "--quiet"]


# ------------------------------------------------------------------ helpers

def run(script: str, *args, env: dict | None = None, prelude: str = "", cwd: Path | None = None
        ) -> subprocess.CompletedProcess:
    """Run console script `deepminer-<script>` with `args` in a subprocess, after Python code `prelude`, with `env`
    added to a clean environment (no DEEPMINER_FAULT or DEEPMINER_DEBUG), in `cwd` (default: the test's tmp_path)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DEEPMINER_FAULT", "DEEPMINER_DEBUG")}
    code = f"{prelude}from deepminer.cli import {script}_main; {script}_main()"
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300,
                            env={**clean, **(env or {})}, cwd=cwd)
    result.prog = f"deepminer-{script}"
    return result


def no_traceback(result: subprocess.CompletedProcess):
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def succeeded(result: subprocess.CompletedProcess):
    "Assert that the command exited 0 without a traceback."
    no_traceback(result)
    assert result.returncode == 0, result.stderr


def one_line_error(result: subprocess.CompletedProcess, status: int = 2, *needles: str) -> str:
    """Assert that the command exited with `status` and said why in one line on stderr, `<prog>: error: <message>`
    (`<prog>: <message>` for Ctrl-C, 130), holding each of `needles`; return that line."""
    no_traceback(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"not one line on stderr: {result.stderr!r}"
    assert result.returncode == status, f"exit {result.returncode}, not {status}: {lines[0]}"
    prefix = f"{result.prog}: " + ("" if status == 130 else "error: ")
    assert lines[0].startswith(prefix) and len(lines[0]) > len(prefix), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    "{path relative to `folder`: SHA-256 of its bytes} for every file below it, and 'folder' for every folder."
    folder = Path(folder)
    return {str(p.relative_to(folder)): "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def unchanged(before: dict[str, str], folder: Path):
    "Assert that every file and folder of snapshot `before` is still in `folder`, byte-identical (new ones may appear)."
    after = snapshot(folder)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"changed or removed in {folder}: {changed}"


def train_args(root, output, epochs: int = 1, *more) -> list:
    "deepminer-train's arguments for a tiny run of `epochs` on the synthetic set at `root`, in run folder `output`."
    return ["--root", root, "--output", output, "--epochs", epochs, *TINY_FLAGS, *more]


def copy_run(run_folder: Path, to: Path, checkpoint: bool = True) -> Path:
    "A copy of `run_folder` at `to` (without its checkpoint.pt unless `checkpoint`)."
    return Path(shutil.copytree(run_folder, to, ignore=None if checkpoint else shutil.ignore_patterns("checkpoint.pt")))


def copy_set(root: Path, to: Path, lose_an_identity: bool = False) -> Path:
    "A copy of the set at `root`, at `to`; `lose_an_identity`: without any training image of its first identity."
    to = Path(shutil.copytree(root, to))
    if lose_an_identity:
        pid = sorted(p.name for p in (to / "bounding_box_train").glob("*.jpg"))[0][:4]
        for image in (to / "bounding_box_train").glob(f"{pid}_*.jpg"):
            image.unlink()
    return to


def first_training_image(root: Path) -> Path:
    "The image the tiny run's first training batch loads first (so that a damaged copy of it is read in epoch 1)."
    train = build_dataset("synthetic", root).train
    return Path(train[next(iter(RandomIdentitySampler(train, P=3, K=2, seed=0)))].path)


class PickledCode:
    "Unpickling it runs os.makedirs(marker): the kind of code a checkpoint must not be able to run when it is read."

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def write_not_a_checkpoint(path: Path, kind: str, trained: Path):
    "Write a checkpoint.pt that is not one: the first 1000 bytes of a real one, a tensor, a dict, or pickled code."
    if kind == "truncated":
        with open(trained / "checkpoint.pt", "rb") as f:
            path.write_bytes(f.read(1000))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        marker = path.parent / "the-pickled-code-ran"     # must never appear: the case's folder is watched
        content = {"tensor": torch.zeros(3), "dict": {"a": 1},
                   "pickled code": {"epoch": 1, "model": PickledCode(marker)}}[kind]
        torch.save(content, path)


# ------------------------------------------------------------------ fixtures

@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    "Every command runs in the test's own folder, so that a default path (runs/, data/) never lands in the repository."
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    "A tiny synthetic set, in Market-1501's layout. No test changes it."
    return make_synthetic_reid(tmp_path_factory.mktemp("data") / "tiny", progress=False, **TINY)


@pytest.fixture(scope="module")
def trained(tiny_set, tmp_path_factory) -> Path:
    "A run folder of one epoch on the tiny set. No test changes it: copy it first (copy_run)."
    run_folder = tmp_path_factory.mktemp("runs") / "tiny"
    succeeded(run("train", *train_args(tiny_set, run_folder), cwd=run_folder.parent))
    return run_folder


# ------------------------------------------------------------------ Ctrl-C, SIGKILL and errors at chosen points

def test_ctrl_c_in_the_first_epoch_stops_with_130_and_no_checkpoint(tiny_set, tmp_path):
    out = tmp_path / "run"
    result = run("train", *train_args(tiny_set, out), env={"DEEPMINER_FAULT": "sigint@batch:1"})
    one_line_error(result, 130, "interrupted at epoch 1", "no checkpoint was written yet")
    assert not (out / ".checkpoint.pt.tmp").exists() and not (out / "checkpoint.pt").exists()


def test_ctrl_c_in_the_second_epoch_keeps_the_first_and_resume_finishes(tiny_set, tmp_path):
    out = tmp_path / "run"
    # SIGINT while epoch 1's checkpoint is written: the checkpoint completes, the run stops at epoch 2's first batch end
    result = run("train", *train_args(tiny_set, out, 2), env={"DEEPMINER_FAULT": "sigint@checkpoint-write:1"})
    one_line_error(result, 130, "interrupted at epoch 2", "checkpoint of epoch 1", "--resume")
    assert not (out / ".checkpoint.pt.tmp").exists()
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    config = (out / "config.json").read_bytes()
    succeeded(run("train", *train_args(tiny_set, out, 2), "--resume"))
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2 and (out / "metrics.json").is_file()
    assert (out / "config.json").read_bytes() == config


def test_sigkill_while_writing_the_second_checkpoint_keeps_the_first(tiny_set, tmp_path):
    out = tmp_path / "run"
    result = run("train", *train_args(tiny_set, out, 2), env={"DEEPMINER_FAULT": "sigkill@checkpoint-write:2"})
    no_traceback(result)
    assert result.returncode == -9, result.stderr
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert not (out / "metrics.json").exists()
    succeeded(run("train", *train_args(tiny_set, out, 2), "--resume"))
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    assert not (out / ".checkpoint.pt.tmp").exists()


def test_an_error_in_the_evaluation_keeps_the_epochs_checkpoint(tiny_set, tmp_path):
    out = tmp_path / "run"
    result = run("train", *train_args(tiny_set, out, 1, "--eval-every", "1"), env={"DEEPMINER_FAULT": "error@evaluate"})
    one_line_error(result, 2, "a fault injected at evaluate")
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert not (out / "metrics.json").exists()


def test_an_error_while_writing_the_checkpoint_leaves_no_temporary_file(tiny_set, tmp_path):
    out = tmp_path / "run"
    result = run("train", *train_args(tiny_set, out), env={"DEEPMINER_FAULT": "error@checkpoint-write"})
    one_line_error(result, 2, "a fault injected at checkpoint-write")
    assert not (out / ".checkpoint.pt.tmp").exists() and not (out / "checkpoint.pt").exists()


def test_resume_on_a_set_that_lost_an_identity_is_refused(tiny_set, tmp_path):
    root, out = copy_set(tiny_set, tmp_path / "set"), tmp_path / "run"
    succeeded(run("train", *train_args(root, out)))
    shutil.rmtree(root)
    copy_set(tiny_set, root, lose_an_identity=True)          # the same root, one identity fewer
    before = snapshot(out)
    one_line_error(run("train", *train_args(root, out, 2), "--resume"), 2, "was trained on 6 identities",
                   "5 training identities")
    assert snapshot(out) == before


# ------------------------------------------------------------------ unreadable images

def test_an_unreadable_training_image_is_named(tiny_set, tmp_path):
    root = copy_set(tiny_set, tmp_path / "set")
    image = first_training_image(root)
    image.write_bytes(b"")
    before = snapshot(root)
    one_line_error(run("train", *train_args(root, tmp_path / "run")), 2, image.name, "--bad-images skip")
    assert snapshot(root) == before


def test_bad_images_skip_leaves_the_unreadable_image_out_and_says_so(tiny_set, tmp_path):
    root = copy_set(tiny_set, tmp_path / "set")
    image = first_training_image(root)
    image.write_bytes(image.read_bytes()[:100])
    result = run("train", *train_args(root, tmp_path / "run", 1, "--bad-images", "skip"))
    succeeded(result)
    warnings = [line for line in result.stderr.splitlines() if "left out" in line]
    assert len(warnings) == 1 and warnings[0].startswith("deepminer-train: warning: left out 1 unreadable image(s)")
    assert image.name in warnings[0]


def test_an_unreadable_query_image_fails_the_evaluation_not_the_epoch(tiny_set, tmp_path):
    root, out = copy_set(tiny_set, tmp_path / "set"), tmp_path / "run"
    query = sorted((root / "query").glob("*.jpg"))[0]
    query.write_bytes(query.read_bytes()[:100])
    one_line_error(run("train", *train_args(root, out)), 2, query.name, "--bad-images skip")
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1          # the epoch's work is kept
    before = snapshot(out)
    result = run("eval", "--checkpoint", out / "checkpoint.pt", "--bad-images", "skip", "--quiet")
    succeeded(result)
    assert "deepminer-eval: warning: left out 1 unreadable image(s)" in result.stderr
    assert (out / "eval" / "metrics.json").is_file()
    unchanged(before, out)


# ------------------------------------------------------------------ what a command may write, and may not overwrite

def test_eval_writes_a_new_folder_each_time(trained, tmp_path):
    out = copy_run(trained, tmp_path / "run")
    succeeded(run("eval", "--checkpoint", out / "checkpoint.pt", "--quiet"))
    assert (out / "eval" / "metrics.json").is_file()
    before = snapshot(out)
    result = run("eval", "--checkpoint", out / "checkpoint.pt", "--quiet")
    succeeded(result)
    assert (out / "eval-2" / "metrics.json").is_file() and "eval-2" in result.stdout
    unchanged(before, out)


def test_eval_replace_keeps_the_users_files(trained, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    before = snapshot(out)
    succeeded(run("eval", "--checkpoint", trained / "checkpoint.pt", "--output", out, "--replace", "--quiet"))
    assert (out / "metrics.json").is_file()
    unchanged(before, out)


def test_export_does_not_overwrite_unless_output_names_the_file(trained, tmp_path):
    out = copy_run(trained, tmp_path / "run")
    export = ["--checkpoint", out / "checkpoint.pt", "--format", "torchscript"]
    succeeded(run("export", *export))
    exported = out / "checkpoint.torchscript.pt"
    assert exported.is_file()
    before = snapshot(out)
    one_line_error(run("export", *export), 2, "exists")
    assert snapshot(out) == before
    succeeded(run("export", *export, "--output", exported))
    unchanged({k: v for k, v in before.items() if k != exported.name}, out)


def test_synth_overwrite_keeps_the_users_files(tiny_set, tmp_path):
    root = copy_set(tiny_set, tmp_path / "set")
    (root / "query" / "notes.txt").write_text("my notes\n")
    notes = snapshot(root / "query")["notes.txt"]
    succeeded(run("synth", root, "--seed", "1", *SYNTH_SIZES, "--overwrite"))   # other settings: seed 1
    assert snapshot(root / "query")["notes.txt"] == notes
    assert '"seed": 1' in (root / "synthetic.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]               # no .set.partial left


# ------------------------------------------------------------------ refusals: exit 2 in one line, nothing written
# Each case: (setup, needles). setup(folder, tiny_set, trained) prepares what the command needs in `folder`, the case's
# own (empty) folder, and returns the command as (script, args, options for `run`, other folders to watch). The
# command runs in `folder`; afterwards `folder` and the watched folders must be exactly as before: no file changed,
# none added. The fixture and the set are watched wherever a command reads them.

def train_refusal(*flags):
    "A deepminer-train case: the tiny run into folder/run (which must not appear) with `flags` added."
    return lambda folder, root, trained: ("train", [*train_args(root, folder / "run"), *flags], {}, [root])


def weights_text_file(folder, root, trained):
    (folder / "weights.txt").write_text("not weights\n")
    return train_refusal("--backbone-weights", folder / "weights.txt")(folder, root, trained)


def user_files(folder, root, trained):
    (folder / "mine").mkdir()
    (folder / "mine" / "notes.txt").write_text("my notes\n")
    return "eval", ["--checkpoint", trained / "checkpoint.pt", "--output", folder / "mine", "--quiet"], {}, [trained]


def not_synthetic(folder, root, trained):
    (folder / "mine").mkdir()
    (folder / "mine" / "notes.txt").write_text("my notes\n")
    return "synth", [folder / "mine", *SYNTH_SIZES], {}, []


def not_a_checkpoint(kind: str, command: str):
    "A command that reads a run folder's checkpoint.pt, which is not a checkpoint (see write_not_a_checkpoint)."
    def setup(folder, root, trained):
        out = copy_run(trained, folder / "run", checkpoint=False)
        write_not_a_checkpoint(out / "checkpoint.pt", kind, trained)
        checkpoint = ["--checkpoint", out / "checkpoint.pt"]
        args = {"train --resume": [*train_args(root, out, 2), "--resume"],
                "train --resume 1": [*train_args(root, out, 1), "--resume"], "eval": [*checkpoint, "--quiet"],
                "export": [*checkpoint, "--format", "torchscript"]}[command]
        return command.split()[0], args, {}, [root]
    return setup


def resume_on_a_copy_that_lost_an_identity(folder, root, trained):
    "Literally: --root names a copy of the set, so the root changed as well as the identities; either stops it."
    copy_set(root, folder / "set", lose_an_identity=True)
    return "train", [*train_args(folder / "set", copy_run(trained, folder / "run"), 2), "--resume"], {}, []


def tampered(kind: str, command: str):
    "A command that reads a copy of the trained run whose checkpoint was changed by hand (`kind`)."
    def setup(folder, root, trained):
        out = copy_run(trained, folder / "run")
        state = load_checkpoint(out / "checkpoint.pt")
        if kind == "epoch 1000":
            state["epoch"] = 1000
        elif kind == "two epochs":                           # as a finished run of two epochs would hold
            state["epoch"], state["config"]["epochs"] = 2, 2
            state["history"] = state["history"] * 2
        elif kind == "other model":
            state["config"]["model"]["ie_after"] = [3]        # the weights have no IE branch
        elif kind == "missing weight":
            del state["model"]["heads.global.bn.weight"]
        elif kind == "no config":
            del state["config"]
        torch.save(state, out / "checkpoint.pt")
        args = {"train --resume": [*train_args(root, out, 2), "--resume"],
                "train --resume 1": [*train_args(root, out, 1), "--resume"],
                "eval": ["--checkpoint", out / "checkpoint.pt", "--quiet"]}[command]
        return command.split()[0], args, {}, [root]
    return setup


HIDE_ONNX = "import sys; sys.modules['onnx'] = None; sys.modules['onnxscript'] = None; "
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


REFUSALS = {  # case id -> (setup, needles[, marks])
    # deepminer-train: bad options, refused before training
    "train --gamma -1": (train_refusal("--gamma", "-1"), ["gamma"]),
    "train --lr 0": (train_refusal("--lr", "0"), ["lr must be a finite number > 0"]),
    "train --lr inf": (train_refusal("--lr", "inf"), ["lr must be a finite number > 0, got inf"]),
    "train --K 1": (train_refusal("--K", "1"), ["K must be an integer >= 2"]),
    "train --keep -1": (train_refusal("--keep", "-1"), ["keep must be an integer >= 0"]),
    "train --height 20000": (train_refusal("--height", "20000"), ["height must be an integer >= 1 and <= 4096, got 20000"]),
    "train --tensorboard without tensorboard": (lambda folder, root, trained: (
        "train", [*train_args(root, folder / "run"), "--tensorboard"],
        {"prelude": "import sys; sys.modules['tensorboard'] = None; "}, [root]), ["pip install tensorboard"]),
    "train --no-augment --pad-crop": (train_refusal("--no-augment", "--pad-crop"), ["--pad-crop", "--no-augment"]),
    "train --config MISSING": (train_refusal("--config", "/missing.json"), ["--config: no file at /missing.json"]),
    "train --config NOT-UTF-8": (lambda folder, root, trained: (
        (folder / "c.json").write_bytes(b"\xff\xfe{"), train_refusal("--config", folder / "c.json")(folder, root, trained))[1],
        ["cannot be read as JSON"]),
    **{f"train --config holding {text.strip()}": (lambda folder, root, trained, text=text: (
        (folder / "c.yaml").write_text(text), train_refusal("--config", folder / "c.yaml")(folder, root, trained))[1],
        needles) for text, needles in (
        ("milestones: 5\n", ["milestones must be a list of integers, got 5"]),
        ("dataset_options: detected\n", ["dataset_options must be a mapping of strings", "got 'detected'"]),
        ("lr: fast\n", ["lr must be a number, got 'fast'"]),
        ("eval_every: true\n", ["eval_every must be an integer, got True"]),
        ("model: resnet50\n", ["model must be a mapping of DeepMinerConfig options"]),
        ("model: {tau: high}\n", ["tau must be a number, got 'high'"]))},
    "train --config and --recipe": (lambda folder, root, trained: train_refusal(
        "--config", trained / "config.json", "--recipe", "cpu")(folder, root, trained), ["choose one"]),
    "train --backbone-weights EMPTY": (lambda folder, root, trained: (
        (folder / "w.pth").write_bytes(b""), train_refusal("--backbone-weights", folder / "w.pth")(folder, root, trained))[1],
        ["cannot be read as PyTorch weights"]),
    "train --label-smoothing 1": (train_refusal("--label-smoothing", "1"), ["label_smoothing"]),
    "train --milestones 5 3": (train_refusal("--milestones", "5", "3"), ["milestones"]),
    "train --num-workers -1": (train_refusal("--num-workers", "-1"), ["num_workers"]),
    "train --height 8 --width 4": (train_refusal("--height", "8", "--width", "4"), ["too small"]),
    "train --device cuda": (train_refusal("--device", "cuda"), ["no CUDA GPU"], NO_CUDA),
    "train --with-baseline --no-baseline": (train_refusal("--with-baseline", "--no-baseline"), ["not allowed with"]),
    "train --backbone-weights TEXT": (weights_text_file, ["cannot be read as PyTorch weights"]),
    "train --backbone-weights MISSING": (train_refusal("--backbone-weights", "/missing.pth"), ["/missing.pth"]),
    "train --unknown-flag": (train_refusal("--unknown-flag"), ["unrecognized arguments"]),
    "train market1501 at a missing root": (train_refusal("--dataset", "market1501", "--root", "/nonexistent"),
                                           ["/nonexistent"]),
    "train --dataset synthetic --root a b": (train_refusal("--dataset", "synthetic", "--root", "a", "b"),
                                             ["the datasets ['synthetic'] and the roots ['a', 'b'] do not pair up"]),
    "train --root a b without --dataset": (train_refusal("--root", "a", "b"), ["['synthetic']", "['a', 'b']"]),
    "train a mistyped synthetic root": (lambda folder, root, trained: (
        "train", train_args(folder / "typo", folder / "run"), {}, []), ["no synthetic set at"]),
    # deepminer-train: a run folder is never overwritten, nor resumed on another set
    "train into a run folder": (lambda folder, root, trained: ("train", train_args(root, trained), {}, [root, trained]),
                                ["already holds a run"]),
    "train --resume a finished run with fewer epochs": (tampered("two epochs", "train --resume 1"),
                                                        ["has trained 2 epochs already", "asks for fewer"]),
    "train --resume a checkpoint that says epoch 1000": (tampered("epoch 1000", "train --resume"), ["finished epoch 1000"]),
    "eval a checkpoint of another model": (tampered("other model", "eval"), ["does not hold this model's weights"]),
    "eval a checkpoint with a missing weight": (tampered("missing weight", "eval"), ["1 missing"]),
    "eval a checkpoint without a config": (tampered("no config", "eval"), ["not a deepminer training checkpoint"]),
    "train --resume on a copy that lost an identity": (resume_on_a_copy_that_lost_an_identity, ["cannot resume"]),
    # checkpoints that are not one
    **{f"{command} reads a {kind} checkpoint": (not_a_checkpoint(kind, command), ["checkpoint.pt"] + (
        ["cannot be read as a checkpoint"] if kind == "truncated" else [])) for kind, command in (
        ("truncated", "train --resume"), ("truncated", "eval"), ("truncated", "export"), ("tensor", "eval"),
        ("pickled code", "train --resume"), ("empty", "eval"), ("empty", "export"), ("empty", "train --resume"))},
    "train --resume reads a dict checkpoint": (
        not_a_checkpoint("dict", "train --resume"), ["not a deepminer-train checkpoint"]),
    # deepminer-eval
    "eval --output a run folder": (lambda folder, root, trained: (
        "eval", ["--checkpoint", trained / "checkpoint.pt", "--output", trained, "--quiet"], {}, [trained]),
        ["is a run folder"]),
    "eval --output a folder with files": (user_files, ["already holds files", "--replace"]),
    **{f"eval --rerank-memory-gb {value}": (lambda folder, root, trained, value=value: (
        "eval", ["--checkpoint", trained / "checkpoint.pt", "--rerank", "--rerank-memory-gb", value, "--quiet"], {},
        [trained]), ["--rerank-memory-gb must be a finite number of GiB > 0", value]) for value in ("inf", "nan", "0")},
    # deepminer-export
    **{f"eval --config holding {text}": (lambda folder, root, trained, text=text: (
        (folder / "e.yaml").write_text(text + "\n"),
        ("eval", ["--checkpoint", trained / "checkpoint.pt", "--config", folder / "e.yaml", "--quiet"], {}, [trained]))[1],
        needles) for text, needles in (
        ('rerank: "maybe"', ["rerank must be true or false, got 'maybe'"]),
        ("batch_size: many", ["batch_size must be int", "'many'"]),
        ("normalize: l2", ["normalize must be one of ['none', 'branch', 'all']", "'l2'"]),
        ("branches: [global, 3]", ["branches must name", "3"]))},
    "eval --config with an unknown setting": (lambda folder, root, trained: (
        (folder / "e.json").write_text('{"flipp": true}'),
        ("eval", ["--checkpoint", trained / "checkpoint.pt", "--config", folder / "e.json", "--quiet"], {}, [trained]))[1],
        ["flipp name no option"]),
    "export --output the run's checkpoint": (lambda folder, root, trained: (
        "export", ["--checkpoint", trained / "checkpoint.pt", "--output", trained / "checkpoint.pt"], {}, [trained]),
        ["never replaces one"]),
    "export --format torchscript --output x.onnx": (lambda folder, root, trained: (
        "export", ["--checkpoint", trained / "checkpoint.pt", "--format", "torchscript", "--output", folder / "x.onnx"],
        {}, [trained]), ["the onnx suffix"]),
    "export --atol -1": (lambda folder, root, trained: (
        "export", ["--checkpoint", trained / "checkpoint.pt", "--atol", "-1"], {}, [trained]), ["--atol"]),
    "export --format onnx without onnx": (lambda folder, root, trained: (
        "export", ["--checkpoint", trained / "checkpoint.pt", "--format", "onnx", "--output", folder / "x.onnx"],
        {"prelude": HIDE_ONNX}, [trained]), ["pip install onnx"]),
    # deepminer-synth, deepminer-summary, deepminer-ablate
    "synth into a folder with other files": (not_synthetic, ["not a deepminer synthetic set"]),
    "synth into /dev/null/x": (lambda folder, root, trained: ("synth", ["/dev/null/x", *SYNTH_SIZES], {}, []),
                               ["/dev/null"]),
    "synth --height 20000": (lambda folder, root, trained: ("synth", [folder / "set", "--height", "20000", *SYNTH_SIZES],
                                                            {}, []), ["2048x1024", "20000x"]),
    "summary --height 16": (lambda folder, root, trained: (
        "summary", ["--height", "16", "--backbone", "resnet18"], {}, []), ["too small"]),
    "ablate a mistyped root": (lambda folder, root, trained: (   # baseline: a variant deepminer-ablate --list names
        "ablate", ["--root", folder / "typo", "--results", folder / "r.json", "--variants", "baseline", "--seeds", "0",
                   "--epochs", "2", "--quiet"], {}, []), ["no synthetic set at"]),
}


@pytest.fixture(scope="module", autouse=True)
def refusals(request, tmp_path_factory):
    """Start the selected REFUSALS cases when the module's first test starts, one at a time in a background thread,
    each in its own folder: case id -> ({watched folder: its snapshot}, needles, the future of its result)."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.originalname == "test_refused_in_one_line"
                and not any(mark.args and mark.args[0] for mark in item.iter_markers("skipif"))]
    if not selected:
        yield {}
        return
    tiny, trained = request.getfixturevalue("tiny_set"), request.getfixturevalue("trained")
    pool, started = ThreadPoolExecutor(1), {}
    for case in selected:
        setup, needles, *_ = REFUSALS[case]
        folder = tmp_path_factory.mktemp("refusal")
        script, args, options, watched = setup(folder, tiny, trained)
        before = {path: snapshot(path) for path in (folder, *watched)}
        started[case] = before, needles, pool.submit(run, script, *args, cwd=folder, **options)
    yield started
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("case", [pytest.param(case, marks=marks) for case, (_, _, *marks) in REFUSALS.items()])
def test_refused_in_one_line(refusals, case):
    before, needles, future = refusals[case]
    one_line_error(future.result(), 2, *needles)
    for folder, files in before.items():
        assert snapshot(folder) == files, f"{folder} changed"


# ------------------------------------------------------------------ two commands on one folder; folders a crash left

def start(script: str, *args, cwd: Path) -> subprocess.Popen:
    "Start console script `deepminer-<script>` in the background (see `run`)."
    clean = {k: v for k, v in os.environ.items() if k not in ("DEEPMINER_FAULT", "DEEPMINER_DEBUG")}
    code = f"from deepminer.cli import {script}_main; {script}_main()"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean, cwd=cwd)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240):
    "Wait until `path` exists (the first command holds its folder), failing if `process` ends first."
    import time
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_two_trainings_into_one_folder(tiny_set, tmp_path):
    out = tmp_path / "run"
    first = start("train", *train_args(tiny_set, out, 4), cwd=tmp_path)
    wait_for(out / ".deepminer.lock", first)
    second = run("train", *train_args(tiny_set, out, 1, "--seed", "5"))
    one_line_error(second, 2, f"{out} is in use by process {first.pid} (deepminer-train")
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert '"seed": 0' in (out / "config.json").read_text()                  # the config of the run that ran
    assert not (out / ".deepminer.lock").exists()


def test_an_evaluation_into_a_held_folder_and_default_folders(trained, tmp_path):
    from concurrent.futures import ThreadPoolExecutor as Pool
    from deepminer.folders import hold_folder, new_folder
    with hold_folder(tmp_path / "ev", "deepminer-eval"):                       # another process holds it (this one)
        second = run("eval", "--checkpoint", trained / "checkpoint.pt", "--output", tmp_path / "ev", "--quiet")
    one_line_error(second, 2, f"is in use by process {os.getpid()} (deepminer-eval")
    assert not (tmp_path / "ev").exists()                                     # nothing was written
    with Pool(8) as pool:                                                     # eight commands in the same second
        names = list(pool.map(lambda _: new_folder(tmp_path / "runs" / "synthetic-20261203-120000"), range(8)))
    assert len(set(names)) == 8


def test_a_synthetic_root_being_written_is_refused(tmp_path):
    from deepminer.folders import hold
    with hold(tmp_path / ".set.lock", str(tmp_path / "set"), "deepminer-synth"):
        second = run("synth", tmp_path / "set", *SYNTH_SIZES)
    one_line_error(second, 2, f"is in use by process {os.getpid()} (deepminer-synth")
    succeeded(run("synth", tmp_path / "set", *SYNTH_SIZES))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]              # no lock or partial folder left


def test_a_run_that_crashed_before_its_checkpoint_can_be_reused_or_resumed(tiny_set, trained, tmp_path):
    for resume in ([], ["--resume"]):
        out = tmp_path / f"run{len(resume)}"
        out.mkdir()
        shutil.copy(trained / "config.json", out)                              # all a crash in epoch 1 leaves
        result = run("train", *train_args(tiny_set, out), *resume)
        succeeded(result)
        assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
        assert ("holds no checkpoint" in result.stderr) == bool(resume)


# ------------------------------------------------------------------ silent before, said now

def test_a_warm_up_longer_than_the_run_is_warned(tiny_set, tmp_path):
    result = run("train", *train_args(tiny_set, tmp_path / "run", 1, "--warmup-epochs", "3"))
    succeeded(result)
    assert "deepminer-train: warning: warmup_epochs=3 is not shorter than the run" in result.stderr


def test_eval_names_the_set_it_scored(trained, tmp_path):
    result = run("eval", "--checkpoint", trained / "checkpoint.pt", "--quiet")
    succeeded(result)
    assert f"at {Path(load_checkpoint(trained / 'checkpoint.pt')['config']['root']).resolve()}:" in result.stdout


def test_a_zero_byte_image_in_a_worker_is_one_line(tiny_set, tmp_path):
    root = copy_set(tiny_set, tmp_path / "set")
    image = first_training_image(root)
    image.write_bytes(b"")
    result = run("train", *train_args(root, tmp_path / "run", 1, "--num-workers", "1"))
    line = one_line_error(result, 2, image.name)
    assert "worker" not in line.lower()


def test_a_csv_that_is_not_utf8_is_named(tmp_path):
    root = tmp_path / "custom"
    root.mkdir()
    for split in ("train", "query", "gallery"):
        (root / f"{split}.csv").write_bytes("path,pid,camid\nb\xe9b\xe9.jpg,1,1\n".encode("latin-1"))
    one_line_error(run("train", "--dataset", "custom", "--root", root, "--epochs", "1", *TINY_FLAGS), 2,
                   "train.csv is not UTF-8")


def same_run(old: Path, new: Path):
    "Assert that run folders `old` and `new` hold the same config.json, metrics and per-epoch losses."
    assert json.loads((old / "config.json").read_text()) == json.loads((new / "config.json").read_text())
    before, after = (json.loads((folder / "metrics.json").read_text()) for folder in (old, new))
    for key in ("mAP", "mINP", "rank1", "rank5", "rank10"):
        assert after[key] == before[key], key
    assert [h["loss"] for h in after["history"]] == [h["loss"] for h in before["history"]]


def test_config_reproduces_a_run_without_a_baseline_in_its_layout(tiny_set, trained, tmp_path):
    succeeded(run("train", "--config", trained / "config.json", "--output", tmp_path / "again", "--quiet"))
    assert not (tmp_path / "again" / "baseline").exists()                   # no baseline: the run had none
    same_run(trained, tmp_path / "again")


def test_config_reproduces_a_run_with_a_baseline_in_its_layout(tiny_set, tmp_path):
    flags = [f for f in TINY_FLAGS if f != "--no-baseline"]
    succeeded(run("train", "--root", tiny_set, "--output", tmp_path / "run", "--epochs", 1, *flags, "--with-baseline"))
    succeeded(run("train", "--config", tmp_path / "run" / "deep_miner" / "config.json", "--output", tmp_path / "again",
                  "--quiet"))
    for model in ("deep_miner", "baseline"):
        same_run(tmp_path / "run" / model, tmp_path / "again" / model)


def test_quiet_and_progress_bars_train_the_same_model(tiny_set, trained, tmp_path):
    flags = [f for f in TINY_FLAGS if f != "--quiet"]
    succeeded(run("train", "--root", tiny_set, "--output", tmp_path / "bars", "--epochs", 1, *flags))
    quiet, bars = (load_checkpoint(folder / "checkpoint.pt")["model"] for folder in (trained, tmp_path / "bars"))
    assert all(torch.equal(quiet[k], bars[k]) for k in quiet)


def test_a_partial_config_file_means_what_the_same_flags_mean(tmp_path):
    from deepminer.cli import train_config_from_args, train_parser
    (tmp_path / "c.yaml").write_text("root: data/x\nepochs: 3\nlr: 1e-3\nmilestones: [2]\n")   # YAML: '1e-3' is a string
    from_file = train_config_from_args(train_parser().parse_args(["--config", str(tmp_path / "c.yaml")]))
    from_flags = train_config_from_args(train_parser().parse_args(
        ["--root", "data/x", "--epochs", "3", "--lr", "1e-3", "--milestones", "2"]))
    assert from_file == from_flags and from_file.recipe == "cpu" and from_file.lr == 0.001
    assert from_file.with_baseline                                          # the synthetic set's default, as for flags


def test_eval_config_reads_typed_values_and_an_absolute_root(tiny_set, trained, tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    shutil.copytree(tiny_set, here / "tiny")
    elsewhere.mkdir()
    succeeded(run("eval", "--checkpoint", trained / "checkpoint.pt", "--root", "tiny", "--output", here / "ev", "--quiet",
                  cwd=here))
    first = json.loads((here / "ev" / "metrics.json").read_text())
    assert first["root"] == str((here / "tiny").resolve())
    (here / "e.yaml").write_text(f'rerank: "false"\nroot: {first["root"]}\n')
    succeeded(run("eval", "--checkpoint", trained / "checkpoint.pt", "--config", here / "e.yaml", "--output",
                  elsewhere / "ev", "--quiet", cwd=elsewhere))
    again = json.loads((elsewhere / "ev" / "metrics.json").read_text())
    assert again["rerank"] is False and again["mAP"] == first["mAP"]      # "false" is false: no re-ranking
    succeeded(run("eval", "--config", here / "ev" / "metrics.json", "--output", elsewhere / "ev2", "--quiet",
                  cwd=elsewhere))                                           # its own metrics.json, from elsewhere
    assert json.loads((elsewhere / "ev2" / "metrics.json").read_text())["data"] == first["data"]


@pytest.mark.parametrize("fault", ["sigkill", "error"])
def test_an_export_stopped_before_its_check_leaves_the_earlier_export(trained, tmp_path, fault):
    out = copy_run(trained, tmp_path / "run")
    export = ["--checkpoint", out / "checkpoint.pt", "--output", out / "model.torchscript.pt"]
    succeeded(run("export", *export))
    before = snapshot(out)
    result = run("export", *export, env={"DEEPMINER_FAULT": f"{fault}@export-written"})
    if fault == "sigkill":
        assert result.returncode == -9, result.stderr
    else:
        one_line_error(result, 2, "a fault injected at export-written")
        assert not list(out.glob(".model.torchscript.pt.*.tmp"))              # the temporary file is removed
    unchanged(before, out)                                                    # the earlier export is intact
