"deepminer.visualize: Figure 2 maps, Grad-CAM per branch, masks over the image, part shares — on a small ResNet-18 Deep Miner."
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from matplotlib import pyplot as plt

from deepminer.model import DeepMiner
from deepminer.synthetic import PARTS, make_synthetic_reid
from deepminer.visualize import (BranchHead, EmbeddingSimilarity, activation_energy, activation_map,
                                 branch_grad_cam, branch_layer, figure2, heat_overlay, inspect_eval, mask_overlay,
                                 part_shares, read_part_layouts, to_pictures)

B, H, W = 3, 64, 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DeepMiner(5, backbone="resnet18").eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(B, 3, H, W)


def test_figure2_draws_the_image_and_every_branch_without_pyplot(model, images):
    open_figures = plt.get_fignums()
    fig = figure2(model, images)
    assert len(fig.axes) == B * 5 + 1  # and the colour bar
    assert [ax.get_title() for ax in fig.axes[:5]] == ["image", "G", "IE1 (B2)", "IE2 (B3)", "L"]
    assert all(ax.images[0].get_array().shape == (H, W, 3) for ax in fig.axes[:B * 5])
    fig = figure2(model, images, masks=True)
    assert [ax.get_title() for ax in fig.axes[:7]][-2:] == ["M1 (B2)\ndark = erased", "M2 (B3)\ndark = erased"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["M columns: dark = erased by the mask"]
    assert plt.get_fignums() == open_figures  # drawn on Figures that pyplot does not hold on to


def test_figure2_reads_the_model_through_one_inspect_call(model, images, monkeypatch):
    calls = []
    inspect = DeepMiner.inspect
    monkeypatch.setattr(DeepMiner, "inspect", lambda self, x: calls.append(x.shape) or inspect(self, x))
    figure2(model, images, masks=True)
    assert calls == [images.shape]


def test_activation_maps_have_the_image_size_and_unit_range(model, images):
    inspection = inspect_eval(model, images)
    for name, maps in inspection.feature_maps.items():
        m = activation_map(maps, (H, W))
        assert m.shape == (B, H, W)
        assert torch.allclose(m.amin(dim=(1, 2)), torch.zeros(B)) and torch.allclose(m.amax(dim=(1, 2)), torch.ones(B))
        energy = activation_energy(maps, maps.shape[2:])
        assert torch.allclose(energy, maps.pow(2).sum(1), rtol=1e-5)  # at the maps' own size: the sum of squares


def test_inspect_eval_restores_training_mode_and_keeps_batchnorm_statistics(model, images):
    model.train()
    stats = model.stem[1].running_mean.clone()
    try:
        inspect_eval(model, images)
        assert model.training
        assert torch.equal(model.stem[1].running_mean, stats)
    finally:
        model.eval()


def test_overlays_keep_the_picture_size(model, images):
    pictures = to_pictures(images)
    assert pictures.shape == (B, H, W, 3) and pictures.dtype == np.uint8
    heat = heat_overlay(pictures, np.random.default_rng(0).random((B, H, W)))
    assert heat.shape == pictures.shape and heat.dtype == np.uint8
    mask = torch.ones(B, 1, 8, 4)
    mask[:, :, :2] = 0  # the top quarter erased
    darkened = mask_overlay(pictures, mask)
    assert np.array_equal(darkened[:, H // 4:], pictures[:, H // 4:])
    assert (darkened[:, : H // 4].astype(int) <= pictures[:, : H // 4]).all()
    with pytest.raises(ValueError, match="mask must be"):
        mask_overlay(pictures, torch.ones(B + 1, 1, 8, 4))


def test_branch_heads_are_the_models_own_outputs(model, images):
    with torch.no_grad():
        embeddings = torch.cat([BranchHead(model, name, "embedding")(images) for name in model.branch_names], dim=1)
        assert torch.allclose(embeddings, model(images), atol=1e-6)  # eval mode: the concatenated BNNeck features
    with pytest.raises(ValueError, match="branch must be one of"):
        BranchHead(model, "ie3")
    with pytest.raises(ValueError, match="output must be"):
        BranchHead(model, "global", "features")


@pytest.mark.parametrize("branch", ["global", "ie1", "ie2", "local"])
def test_grad_cam_per_branch_has_the_image_size_and_leaves_the_model_as_it_was(model, images, branch):
    model.train()
    try:
        cam = branch_grad_cam(model, images, branch, pids=[0, 1, 2])
        assert model.training
    finally:
        model.eval()
    assert cam.shape == (B, H, W) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    assert not branch_layer(model, branch)._forward_hooks  # grad-cam's hooks are released


def test_grad_cam_similarity_target(model, images):
    reference = torch.flip(images, dims=[0])
    cam = branch_grad_cam(model, images, "ie1", reference=reference)
    assert cam.shape == (B, H, W)
    e = torch.randn(7)
    assert torch.isclose(EmbeddingSimilarity(e)(2 * e), torch.tensor(1.0))
    with pytest.raises(ValueError, match="not both"):
        branch_grad_cam(model, images, "ie1", pids=[0, 1, 2], reference=reference)
    with pytest.raises(ValueError, match="one image per image"):
        branch_grad_cam(model, images, "ie1", reference=reference[:1])


def test_part_shares_of_a_model_on_synthetic_layouts_sum_to_one(model, tmp_path):
    root = make_synthetic_reid(tmp_path / "synthetic", train_ids=4, test_ids=4, cameras=2, distractors=0, junk=0,
                               progress=False)
    paths = sorted((root / "query").glob("*.jpg"))[:4]
    layouts = read_part_layouts(paths, H, W)
    assert layouts.shape == (len(paths), H, W) and 0 <= layouts.min() and layouts.max() < len(PARTS)
    from PIL import Image
    from deepminer.data import build_transforms
    transform = build_transforms(H, W, train=False)
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    inspection = inspect_eval(model, images)
    shares = part_shares({k: activation_energy(v, (H, W)) for k, v in inspection.feature_maps.items()}, layouts)
    assert list(shares) == model.branch_names
    for s in shares.values():
        assert s.shape == (len(PARTS),) and (s >= 0).all()
        assert abs(s.sum().item() - 1) < 1e-9


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_part_shares_sum_to_one_and_uniform_energy_gives_the_areas(batch, height, width, seed):
    g = torch.Generator().manual_seed(seed)
    layouts = torch.randint(0, len(PARTS), (batch, height, width), generator=g)
    energy = torch.rand(batch, height, width, generator=g) + 1e-3
    shares = part_shares({"a": energy, "uniform": torch.ones(batch, height, width)}, layouts)
    assert abs(shares["a"].sum().item() - 1) < 1e-9 and (shares["a"] >= 0).all()
    areas = torch.nn.functional.one_hot(layouts, len(PARTS)).double().mean((1, 2)).mean(0)
    assert torch.allclose(shares["uniform"], areas)


def test_part_shares_errors():
    layouts = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="zero everywhere"):
        part_shares({"g": torch.zeros(1, 2, 2)}, layouts)
    with pytest.raises(ValueError, match="negative"):
        part_shares({"g": -torch.ones(1, 2, 2)}, layouts)
    with pytest.raises(ValueError, match="has shape"):
        part_shares({"g": torch.ones(1, 3, 2)}, layouts)
    with pytest.raises(ValueError, match="part indices"):
        part_shares({"g": torch.ones(1, 2, 2)}, layouts + len(PARTS))
    with pytest.raises(FileNotFoundError, match="no part layout"):
        read_part_layouts(["/nowhere/query/x.jpg"], 4, 2)


def test_08s_printouts_are_the_reference_models_kept_ones():
    """08_visualize prints through `report`: every printout it names is kept in results/visualize.json, and the
    notebook's stored output of each such cell is the kept text — so a fresh clone, which has no reference checkpoint
    and shows the kept pictures, prints the numbers of the same model its prose describes."""
    import json
    import re
    from pathlib import Path
    nbs = Path(__file__).parent.parent / "nbs"
    record = json.loads((nbs / "results" / "visualize.json").read_text())
    cells = [c for c in json.loads((nbs / "08_visualize.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
    reporting = {m: c for c in cells for m in re.findall(r'report\("(\w+)"', "".join(c["source"]))}
    assert set(reporting) == set(record["printouts"]) and len(reporting) >= 4
    for name, cell in reporting.items():
        printed = "".join("".join(o["text"]) for o in cell.get("outputs", []) if o.get("name") == "stdout")
        assert record["printouts"][name] in printed, name
