"Training runs end to end through the console script; a SIGKILLed run resumes to the same metrics."
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepminer.synthetic import make_synthetic_reid
from deepminer.train import TrainConfig, load_checkpoint

TRAIN = [sys.executable, "-c", "from deepminer.cli import train_main; train_main()"]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return make_synthetic_reid(tmp_path_factory.mktemp("data") / "tiny", seed=0, train_ids=6, test_ids=4, cameras=3,
                               distractors=3, junk=2, progress=False)


def tiny_args(root, output, epochs=2):
    return ["--root", str(root), "--output", str(output), "--no-baseline", "--quiet", "--epochs", str(epochs),
            "--P", "4", "--K", "2", "--height", "64", "--width", "32", "--eval-every", "1", "--warmup-epochs", "1",
            "--ie-after", "--no-local", "--no-sam", "--no-cham"]   # the global branch alone, for speed


def comparable(metrics: dict) -> dict:
    "metrics.json without timings."
    out = {k: v for k, v in metrics.items() if k != "train_seconds_this_process"}
    out["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]]
    return out


def test_sigkill_after_first_checkpoint_then_resume_gives_the_same_metrics(tiny_set, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = subprocess.run(TRAIN + tiny_args(tiny_set, straight), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "mAP" in result.stdout and "Rank-1" in result.stdout
    assert sorted(p.name for p in straight.iterdir()) == ["best.pt", "checkpoint.pt", "config.json", "log", "metrics.json"]

    process = subprocess.Popen(TRAIN + tiny_args(tiny_set, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoint.pt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert load_checkpoint(checkpoint)["epoch"] == 1
    assert not (killed / "metrics.json").exists()

    subprocess.run(TRAIN + tiny_args(tiny_set, killed) + ["--resume"], check=True, capture_output=True, timeout=600)
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert comparable(a) == comparable(b)
    assert a["epochs"] == 2 and len(a["history"]) == 2
    for key in ("mAP", "rank1", "rank5", "mINP"):
        assert 0 <= a[key] <= 100
    state = torch.load(straight / "checkpoint.pt", weights_only=True)
    assert TrainConfig.from_dict(state["config"]).epochs == 2
    log = (straight / "log").read_text()
    assert log.index("epoch   1  lr") < log.index("epoch   1  evaluation") < log.index("epoch   2  lr")


def test_bad_root_is_a_one_line_error(tmp_path):
    result = subprocess.run(TRAIN + ["--dataset", "market1501", "--root", str(tmp_path / "missing"), "--quiet"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "missing") in result.stderr
