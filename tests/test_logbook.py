"""What a run keeps, through deepminer-train: --tensorboard writes a log TensorBoard reads (losses per branch, lr,
evaluations, Figure 2), --keep N keeps the last N epochs' checkpoints, best.pt is the best evaluation's, and a resumed
run keeps counting from its history."""
import subprocess
import sys

import pytest

from deepminer.checkpoint import load_checkpoint
from deepminer.synthetic import make_synthetic_reid

FLAGS = ["--no-baseline", "--quiet", "--P", "3", "--K", "2", "--height", "64", "--width", "32", "--warmup-epochs", "0",
         "--backbone", "resnet18", "--ie-after", "3", "--no-local", "--no-sam", "--no-cham", "--eval-every", "1"]


def train(*args, cwd):
    result = subprocess.run([sys.executable, "-c", "from deepminer.cli import train_main; train_main()", *map(str, args)],
                            capture_output=True, text=True, cwd=cwd, timeout=900)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_synthetic_reid(tmp_path_factory.mktemp("data") / "tiny", seed=0, train_ids=6, test_ids=4, cameras=3,
                               distractors=3, junk=2, progress=False)


def test_tensorboard_best_and_kept_checkpoints(tiny, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    train("--root", tiny, "--output", run, "--epochs", "2", "--tensorboard", "--keep", "1", *FLAGS, cwd=tmp_path)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("loss", "lr", "eval/mAP", "eval/rank1", "branch loss/global", "branch loss/ie1", "epoch/global/acc"):
        assert tag in scalars, (tag, scalars)
    assert [e.step for e in events.Scalars("eval/mAP")] == [1, 2]
    assert len(events.Images(events.Tags()["images"][0])) == 2                  # Figure 2 at each evaluation
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "checkpoint-epoch002.pt", "checkpoint.pt"]
    history = load_checkpoint(run / "checkpoint.pt")["history"]
    best_epoch = 1 + max(range(2), key=lambda e: (history[e]["eval/mAP"], -e))
    assert load_checkpoint(run / "best.pt")["epoch"] == best_epoch

    # resumed for a third epoch: best.pt changes only if the third evaluation beats the first two
    best_before = (run / "best.pt").read_bytes()
    train("--root", tiny, "--output", run, "--epochs", "3", "--keep", "1", "--resume", *FLAGS, cwd=tmp_path)
    history = load_checkpoint(run / "checkpoint.pt")["history"]
    assert sorted(p.name for p in run.glob("checkpoint-epoch*.pt")) == ["checkpoint-epoch003.pt"]
    if history[2]["eval/mAP"] > max(h["eval/mAP"] for h in history[:2]):
        assert load_checkpoint(run / "best.pt")["epoch"] == 3
    else:
        assert (run / "best.pt").read_bytes() == best_before


def test_no_keep_best(tiny, tmp_path):
    train("--root", tiny, "--output", tmp_path / "run", "--epochs", "1", "--no-keep-best", *FLAGS, cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == ["checkpoint.pt"]
