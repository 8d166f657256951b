"""Several training sets, cross-domain evaluation and CUHK03 from its official download, through the console scripts
(each in a subprocess, on sets the tests write)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from deepminer.synthetic import make_synthetic_reid
from test_datasets_real import write_release

TINY = dict(train_ids=6, test_ids=4, cameras=3, distractors=3, junk=2, progress=False)
FLAGS = ["--recipe", "cpu", "--no-baseline", "--quiet", "--epochs", "1", "--P", "3", "--K", "2", "--warmup-epochs", "0",
         "--backbone", "resnet18", "--ie-after", "3", "--no-local", "--no-sam", "--no-cham"]


def run(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    code = f"from deepminer.cli import {script}_main; {script}_main()"
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                            timeout=900)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result


def test_two_sets_together_then_a_third_cross_domain(tmp_path):
    a, b, c = (make_synthetic_reid(tmp_path / name, seed=seed, **TINY) for seed, name in enumerate("abc"))
    run("train", "--dataset", "synthetic", "synthetic", "--root", a, b, "--output", tmp_path / "run", *FLAGS, cwd=tmp_path)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["dataset"], config["root"]) == ("synthetic+synthetic", [str(a), str(b)])
    result = run("eval", "--checkpoint", tmp_path / "run" / "checkpoint.pt", "--dataset", "synthetic", "--root", c,
                 "--rerank", "--num-workers", "1", "--quiet", cwd=tmp_path)
    assert f"at {c.resolve()}: mAP" in result.stdout                          # the set it scored, named
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["root"] == str(c) and metrics["rerank"] and 0 <= metrics["mAP"] <= 100


def test_cuhk03_classic_split_from_the_official_file(tmp_path):
    pytest.importorskip("h5py")
    root = tmp_path / "cuhk03"
    write_release(root)                                                       # root/cuhk03_release/cuhk-03.mat
    result = run("train", "--dataset", "cuhk03", "--root", root, "--dataset-option", "protocol=classic", "split=0",
                 "--output", tmp_path / "run", *FLAGS, cwd=tmp_path)
    assert "extracting the labeled images" in result.stdout + result.stderr
    assert (root / "images_labeled").is_dir()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset_options"] == {"protocol": "classic", "split": 0}
    # a copy of the extracted images that lacks some (copied by hand, half of it) is refused, not scored as if whole
    for path in sorted((root / "images_labeled").glob("1_*.png")):
        path.unlink()
    code = "from deepminer.cli import eval_main; eval_main()"
    refused = subprocess.run([sys.executable, "-c", code, "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"),
                              "--dataset", "cuhk03", "--root", str(root), "--dataset-option", "protocol=classic",
                              "--quiet"], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and "labeled images of" in refused.stderr and "lacks" in refused.stderr


def _custom_twins(synthetic: Path, eight: Path, sixteen: Path):
    """The synthetic set in the custom layout twice, as grayscale PNGs: 8-bit (value g) and 16-bit (value g·257, which
    scales back to g exactly)."""
    from PIL import Image
    import numpy as np
    for split, folder in (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")):
        for path in sorted((synthetic / folder).glob("*.jpg")):
            pid, cam = path.name.split("_")[:2]
            if pid == "-1":
                continue                                                      # junk: not a person folder
            gray = np.asarray(Image.open(path).convert("L"))
            for root, image in ((eight, Image.fromarray(gray)), (sixteen, Image.fromarray(gray.astype(np.uint16) * 257))):
                target = root / split / str(int(pid)) / f"{cam[1]}_{path.stem}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                image.save(target)


def test_sixteen_bit_pngs_score_as_their_eight_bit_twins(tmp_path):
    from PIL import Image
    synthetic = make_synthetic_reid(tmp_path / "synthetic", seed=0, **TINY)
    _custom_twins(synthetic, tmp_path / "eight", tmp_path / "sixteen")
    some = next((tmp_path / "sixteen" / "query").rglob("*.png"))
    assert Image.open(some).mode.startswith("I")                              # really 16-bit on disk
    run("train", "--dataset", "synthetic", "--root", synthetic, "--output", tmp_path / "run", *FLAGS, cwd=tmp_path)
    scores = {}
    for twin in ("eight", "sixteen"):
        run("eval", "--checkpoint", tmp_path / "run" / "checkpoint.pt", "--dataset", "custom", "--root", tmp_path / twin,
            "--output", tmp_path / f"eval-{twin}", "--quiet", cwd=tmp_path)
        metrics = json.loads((tmp_path / f"eval-{twin}" / "metrics.json").read_text())
        scores[twin] = {key: metrics[key] for key in ("mAP", "mINP", "rank1", "rank5")}
    assert scores["eight"] == pytest.approx(scores["sixteen"], abs=1e-6), scores
