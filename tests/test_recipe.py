"""The paper recipe against the paper: eqs. (2)-(6) computed literally, the recipe table against what `recipe("paper")`
builds, CHAM's Softmax, and the ImageNet weights it needs (from a file, or a one-line stop offline). Never downloads."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision import transforms as T

from deepminer.attention import CHAM, SAM
from deepminer.data import build_transforms
from deepminer.model import RESNETS, DeepMiner
from deepminer.synthetic import make_synthetic_reid
from deepminer.train import (PAPER_RECIPE, RECIPES, TrainConfig, Trainer, prepare_data, recipe, recipe_departures,
                             recipe_value)

TRAIN = [sys.executable, "-c", "from deepminer.cli import train_main; train_main()"]


@pytest.fixture(scope="module")
def market_like(tmp_path_factory):
    "A tiny set in Market-1501's exact layout (the synthetic generator writes that format)."
    return make_synthetic_reid(tmp_path_factory.mktemp("data") / "market", seed=0, train_ids=6, test_ids=4, cameras=3,
                               distractors=3, junk=2, progress=False)


def small_paper(root) -> TrainConfig:
    "The paper recipe on a tiny set: only the sizes change (and the backbone, so that no weights are needed)."
    return recipe("paper", dataset="market1501", root=str(root), height=64, width=32, P=3, K=2,
                  model=dict(backbone="resnet18", pretrained=False))


# ------------------------------------------------------------------ eqs. (2)-(6), literally, with loops

def literal_id_loss(logits, labels, epsilon):
    "Eqs. (3)-(4): mean over the N samples of -sum over identities of q log p, q the smoothed label over C identities."
    n, classes = logits.shape
    total = 0.0
    for b in range(n):
        p = torch.softmax(logits[b].double(), 0)
        for i in range(classes):
            q = 1 - epsilon * (classes - 1) / classes if i == labels[b] else epsilon / classes
            total -= q * math.log(p[i])
    return total / n


def literal_triplet_loss(f, labels):
    "Eq. (5): sum over every anchor of softplus(hardest positive distance - hardest negative distance)."
    total = 0.0
    for a in range(len(f)):
        positives = [torch.dist(f[a], f[k]).item() for k in range(len(f)) if labels[k] == labels[a]]
        negatives = [torch.dist(f[a], f[k]).item() for k in range(len(f)) if labels[k] != labels[a]]
        total += math.log1p(math.exp(max(positives) - min(negatives)))
    return total


def literal_center_loss(f, labels, centers):
    "Eq. (6): one half of the sum over the batch of the squared distance to the identity's center."
    return 0.5 * sum(((f[b].double() - centers[labels[b]].double()) ** 2).sum().item() for b in range(len(f)))


def test_paper_recipe_loss_is_eqs_2_to_6_as_written(market_like):
    config = small_paper(market_like)
    trainer = Trainer(config, progress=False)
    torch.manual_seed(0)
    images = torch.randn(6, 3, 64, 32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    outputs = trainer.model.train()(images)
    total, terms = trainer.criterion(outputs, labels)
    expected = 0.0
    for name, (features, logits) in outputs.items():
        f, z = features.detach(), logits.detach()
        centers = trainer.criterion.centers[name].centers.detach()
        id_term, triplet_term = literal_id_loss(z, labels, 0.1), literal_triplet_loss(f, labels)
        center_term = literal_center_loss(f, labels, centers)
        assert terms[f"{name}/id"].item() == pytest.approx(id_term, rel=1e-5)
        assert terms[f"{name}/triplet"].item() == pytest.approx(triplet_term, rel=1e-5)
        assert terms[f"{name}/center"].item() == pytest.approx(center_term, rel=1e-5)
        expected += id_term + triplet_term + 5e-4 * center_term      # eq. (2), lambda = 5e-4, summed over branches
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_strong_recipe_averages_where_the_paper_sums(market_like):
    strong = recipe("strong", dataset="market1501", root=str(market_like), height=64, width=32, P=3, K=2,
                    model=dict(backbone="resnet18", pretrained=False))
    trainer = Trainer(strong, progress=False)
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    outputs = trainer.model.train()(torch.randn(6, 3, 64, 32))
    _, terms = trainer.criterion(outputs, labels)
    f = outputs["global"][0].detach()
    assert terms["global/triplet"].item() == pytest.approx(literal_triplet_loss(f, labels) / 6, rel=1e-5)
    centers = trainer.criterion.centers["global"].centers.detach()
    assert terms["global/center"].item() == pytest.approx(literal_center_loss(f, labels, centers) * 2 / 6, rel=1e-5)


# ------------------------------------------------------------------ the table against the recipe

def test_recipe_table_is_what_the_paper_recipe_builds():
    paper = recipe("paper")
    settings = [row.setting for row in PAPER_RECIPE if row.setting]
    assert len(settings) == len(set(settings))
    for row in PAPER_RECIPE:
        if row.setting:
            assert recipe_value(paper, row.setting) == row.value, row
            assert row.source.startswith(("§", "silent")), row
    assert recipe_departures(paper) == {}
    assert json.loads(json.dumps(paper.to_dict()))["recipe"] == "paper"


def test_every_setting_a_recipe_changes_is_in_the_table():
    listed = {row.setting for row in PAPER_RECIPE if row.setting}
    for name, settings in RECIPES.items():
        changed = {f"model.{k}" for k in settings.get("model", {})} | {k for k in settings if k != "model"}
        unlisted = changed - listed - {"dataset", "root", "eval_every"}
        assert not unlisted, (name, unlisted)


def test_the_code_fixed_rows_hold():
    paper = recipe("paper", model=dict(pretrained=False))
    model = DeepMiner(10, paper.model).eval()
    inspection = model.inspect(torch.randn(1, 3, 384, 128))
    assert inspection.feature_maps["global"].shape[2:] == (24, 8)                    # last stride 1 (§3.1)
    assert all(m.gamma.item() == 0 for m in model.modules() if isinstance(m, SAM))  # SAM's gamma starts at 0
    steps = build_transforms(paper.height, paper.width, train=True, pad=0).transforms
    assert [type(s) for s in steps if isinstance(s, (T.RandomHorizontalFlip, T.RandomErasing))] == \
        [T.RandomHorizontalFlip, T.RandomErasing]
    assert [s.p for s in steps if isinstance(s, (T.RandomHorizontalFlip, T.RandomErasing))] == [0.5, 0.5]


@pytest.mark.parametrize("name, crops", [("paper", False), ("strong", True), ("cpu", True)])
def test_pad_and_crop_only_where_the_recipe_says(market_like, name, crops):
    config = recipe(name, dataset="market1501", root=str(market_like), height=64, width=32, P=3, K=2,
                    model=dict(backbone="resnet18", pretrained=False))
    _, loaders = prepare_data(config, progress=False)
    steps = loaders.train.dataset.transform.transforms
    assert any(isinstance(s, T.RandomCrop) for s in steps) == crops
    assert any(isinstance(s, T.RandomErasing) for s in steps)


def test_paper_recipe_cham_is_a_softmax_over_channels():
    model = DeepMiner(10, recipe("paper", model=dict(backbone="resnet18", pretrained=False)).model)
    chams = [m for m in model.modules() if isinstance(m, CHAM)]
    assert len(chams) == 3 and all(m.gate == "softmax" for m in chams)   # after B2, B3 and IE1's B3 (§3.4)
    z = torch.randn(2, chams[0].excite.out_channels, 8, 4)
    weights = chams[0].weights(z)
    assert torch.allclose(weights.sum(1), torch.ones(2, 8, 4), atol=1e-5)
    assert all(m.gate == "sigmoid" for m in DeepMiner(10, recipe("strong", model=dict(
        backbone="resnet18", pretrained=False)).model).modules() if isinstance(m, CHAM))


# ------------------------------------------------------------------ ImageNet weights: file, or a one-line stop

def offline_env(tmp_path) -> dict:
    "An empty TORCH_HOME and a proxy that refuses every connection: torchvision can neither find nor fetch weights."
    return {**os.environ, "TORCH_HOME": str(tmp_path / "torch-home"), "https_proxy": "http://127.0.0.1:9",
            "http_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}


@pytest.mark.parametrize("chosen", [["--recipe", "paper"], []])   # [] is the strong recipe, real datasets' default
def test_recipe_without_weights_offline_stops_at_once_with_one_line(market_like, tmp_path, chosen):
    output = tmp_path / "run"
    result = subprocess.run(TRAIN + ["--dataset", "market1501", "--root", str(market_like), "--output", str(output),
                                     "--P", "3", "--K", "2", "--quiet", *chosen],
                            capture_output=True, text=True, timeout=300, env=offline_env(tmp_path))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error) == 1, result.stderr
    filename = Path(RESNETS["resnet50"][1].url).name
    assert filename in error[0] and str(tmp_path / "torch-home" / "hub" / "checkpoints") in error[0]
    assert "--backbone-weights" in error[0] and "--no-pretrained" in error[0]
    assert not output.exists()                                   # stopped before anything was written


def test_paper_recipe_trains_from_a_weights_file_and_says_where_it_departs(market_like, tmp_path):
    weights = tmp_path / "resnet18-imagenet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    output = tmp_path / "run"
    result = subprocess.run(TRAIN + ["--recipe", "paper", "--dataset", "market1501", "--root", str(market_like),
                                     "--backbone", "resnet18", "--backbone-weights", str(weights), "--height", "64",
                                     "--width", "32", "--P", "3", "--K", "2", "--epochs", "1", "--output", str(output),
                                     "--quiet"], capture_output=True, text=True, timeout=600, env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "paper recipe" in result.stdout and "(ImageNet weights)" in result.stdout
    departs = [line for line in result.stdout.splitlines() if "departs from the paper in" in line]
    assert len(departs) == 1 and "model.backbone resnet18 (paper: resnet50)" in departs[0], result.stdout
    assert "height 64 (paper: 384)" in departs[0] and "model.pretrained" not in departs[0]
    saved = json.loads((output / "config.json").read_text())
    assert saved["recipe"] == "paper" and saved["model"]["pretrained"] is True
    assert (saved["triplet_reduction"], saved["center_reduction"], saved["pad_crop"]) == ("sum", "half_sum", False)
    assert not (tmp_path / "torch-home" / "hub" / "checkpoints" / Path(RESNETS["resnet18"][1].url).name).exists()


def test_no_pretrained_trains_from_scratch_and_says_so(market_like, tmp_path):
    output = tmp_path / "run"
    result = subprocess.run(TRAIN + ["--recipe", "paper", "--no-pretrained", "--dataset", "market1501", "--root",
                                     str(market_like), "--backbone", "resnet18", "--height", "64", "--width", "32",
                                     "--P", "3", "--K", "2", "--epochs", "1", "--output", str(output), "--quiet"],
                            capture_output=True, text=True, timeout=600, env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "(from scratch)" in result.stdout
    assert "model.pretrained False (paper: True)" in result.stdout
    assert json.loads((output / "config.json").read_text())["model"]["pretrained"] is False


def test_the_table_is_what_the_command_line_paper_recipe_builds():
    from deepminer.cli import train_config_from_args, train_parser
    config = train_config_from_args(train_parser().parse_args(["--recipe", "paper", "--dataset", "market1501"]))
    for row in PAPER_RECIPE:
        if row.setting:
            assert recipe_value(config, row.setting) == row.value, row
    assert config.recipe == "paper" and recipe_departures(config) == {}
