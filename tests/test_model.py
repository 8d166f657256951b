"The Deep Miner network (deepminer.model): every paper variant builds and trains; copies; weights; errors."
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from deepminer.attention import SAM
from deepminer.model import PAPER_VARIANTS, RESNETS, DeepMiner, branch_summary


def train_step(model, x, labels):
    "One loss/backward pass touching every branch's features and logits."
    out = model.train()(x)
    loss = sum(nn.functional.cross_entropy(o.logits, labels) + o.features.pow(2).mean() for o in out.values())
    loss.backward()
    return out, loss


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize("variant", list(PAPER_VARIANTS))
def test_every_paper_variant_runs_forward_and_backward(variant, backbone):
    torch.manual_seed(0)
    config = PAPER_VARIANTS[variant]
    model = DeepMiner(3, config, backbone=backbone)
    x, labels = torch.randn(4, 3, 128, 64), torch.tensor([0, 0, 1, 2])
    out, loss = train_step(model, x, labels)
    expected = ["global"] + [f"ie{k}" for k in range(1, len(config.ie_after) + 1)] + (["local"] if config.local_branch else [])
    assert list(out) == expected
    assert torch.isfinite(loss)
    dim = 512 if backbone == "resnet18" else 2048
    for name, o in out.items():
        assert o.features.shape == (4, dim * (4 if name == "local" else 1))
        assert o.logits.shape == (4, 3)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        embedding = model.eval()(x)
    assert embedding.shape == (4, sum(model.feature_dims.values()))


@pytest.mark.parametrize("ie_after", [(1,), (1, 2, 3), (2, 3)])
def test_every_trainable_parameter_gets_a_nonzero_gradient(ie_after):
    torch.manual_seed(0)
    model = DeepMiner(4, backbone="resnet18", ie_after=ie_after)
    for m in model.modules():
        if isinstance(m, SAM):
            m.gamma.data.fill_(0.5)  # at gamma = 0 SAM's convolutions get exactly zero gradient (identity start)
    train_step(model, torch.randn(4, 3, 128, 64), torch.tensor([0, 1, 2, 3]))
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        else:
            assert name.endswith(".bn.bias") and name.startswith("heads."), name  # BNNeck biases are frozen


def test_gamma_gets_a_gradient_at_its_zero_start():
    model = DeepMiner(4, backbone="resnet18")
    train_step(model, torch.randn(4, 3, 128, 64), torch.tensor([0, 1, 2, 3]))
    gammas = [m.gamma for m in model.modules() if isinstance(m, SAM)]
    assert len(gammas) == 2 + 1  # G after B2 and B3, ie1 after B3^e
    assert all(g.grad is not None and g.grad.abs() > 0 for g in gammas)


def test_copied_branches_start_equal_but_are_distinct_tensors():
    model = DeepMiner(5, backbone="resnet50", ie_after=(1, 2, 3))
    g = {j: model.stages[j].state_dict() for j in range(4)}
    copies = [(branch.stages[k], branch.position + k) for branch in model.ie_branches for k in range(len(branch.stages))]
    copies.append((model.local_branch, 3))
    assert len(copies) == 3 + 2 + 1 + 1
    for module, j in copies:
        state = module.state_dict()
        assert state.keys() == g[j].keys()
        for key, value in state.items():
            assert torch.equal(value, g[j][key]), key
            assert value.data_ptr() != g[j][key].data_ptr(), key
    # a step on one copy leaves the others alone
    with torch.no_grad():
        model.ie_branches[2].stages[0][0].conv1.weight.add_(1.0)
    assert not torch.equal(model.ie_branches[2].stages[0][0].conv1.weight, model.stages[3][0].conv1.weight)
    assert torch.equal(model.local_branch[0].conv1.weight, model.stages[3][0].conv1.weight)


def test_inspect_exposes_masks_inputs_and_maps_of_the_forward_pass():
    torch.manual_seed(0)
    model = DeepMiner(3, backbone="resnet18", ie_after=(1, 3), tau=0.5).eval()
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        ins = model.inspect(x)
        embedding = model(x)
    assert list(ins.feature_maps) == ["global", "ie1", "ie2", "local"]
    assert ins.erase_masks["ie1"].shape == (2, 1, 32, 16) and ins.erase_masks["ie2"].shape == (2, 1, 8, 4)
    # the masks are eq. (1) of the inputs the branches erased
    from deepminer.erase import erase_mask
    for name in ("ie1", "ie2"):
        assert torch.equal(ins.erase_masks[name], erase_mask(ins.erase_inputs[name], 0.5))
    # eval features are the BNNeck of the pooled maps, concatenated in branch order
    parts = []
    for name, maps in ins.feature_maps.items():
        parts.append(model.heads[name].bn(model.pools[name](maps).flatten(1)))
    assert torch.allclose(embedding, torch.cat(parts, 1))


def test_tau_reaches_every_ie_branch():
    model = DeepMiner(3, backbone="resnet18", ie_after=(1, 2, 3), tau=0.3)
    assert [b.ero.tau for b in model.ie_branches] == [0.3, 0.3, 0.3]


@pytest.mark.parametrize("kwargs, message", [
    (dict(ie_after=(0,)), "ie_after must hold block positions 1, 2 or 3"),
    (dict(ie_after=(4,)), "ie_after must hold block positions 1, 2 or 3"),
    (dict(ie_after=(3, 3)), "ie_after must not repeat"),
    (dict(tau=-0.5), "tau must lie in"),
    (dict(stripes=0), "stripes must be an integer >= 1"),
    (dict(cham_gate="tanh"), "cham_gate must be one of"),
    (dict(backbone="resnet20"), "backbone must be one of"),
])
def test_invalid_knobs_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepMiner(3, **({"backbone": "resnet18"} | kwargs))


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_cham_gate_option_reaches_every_cham(gate):
    model = DeepMiner(3, backbone="resnet18", cham_gate=gate)
    from deepminer.attention import CHAM
    gates = [m.gate for m in model.modules() if isinstance(m, CHAM)]
    assert gates == [gate] * 3


def test_pretrained_offline_says_which_file_to_place_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(RuntimeError) as err:
        DeepMiner(3, backbone="resnet18", pretrained=True)
    message = str(err.value)
    assert Path(RESNETS["resnet18"][1].url).name in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "backbone_weights" in message


def test_pretrained_uses_a_file_placed_in_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", lambda *a, **k: pytest.fail("tried to download"))
    reference = torchvision.models.resnet18()
    target = tmp_path / "hub" / "checkpoints" / Path(RESNETS["resnet18"][1].url).name
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    model = DeepMiner(3, backbone="resnet18", pretrained=True)
    assert torch.equal(model.stem[0].weight, reference.conv1.weight)
    assert torch.equal(model.ie_branches[1].stages[0][0].conv1.weight, reference.layer4[0].conv1.weight)


def test_backbone_weights_from_a_local_file(tmp_path):
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = DeepMiner(3, backbone="resnet18", backbone_weights=tmp_path / "r18.pth")
    assert torch.equal(model.stages[2][0][0].conv2.weight, reference.layer3[0].conv2.weight)
    assert torch.equal(model.local_branch[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    with pytest.raises(FileNotFoundError, match="no file at"):
        DeepMiner(3, backbone="resnet18", backbone_weights=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="do not fit resnet34"):
        DeepMiner(3, backbone="resnet34", backbone_weights=tmp_path / "r18.pth")


def test_branch_summary_adds_up_and_counts_the_paper_model():
    model = DeepMiner(751, backbone="resnet50")
    rows = branch_summary(model, 128, 64)
    total = rows[-1]
    assert [r["branch"] for r in rows] == ["global", "ie1", "ie2", "local", "total"]
    assert sum(r["params"] for r in rows[:-1]) == total["params"] == sum(p.numel() for p in model.parameters())
    assert abs(sum(r["macs"] for r in rows[:-1]) - total["macs"]) <= 1e-6 * total["macs"]
    # ResNet-50 without fc has 23.5 M parameters; B4 is 14.96 M, B3 7.10 M
    resnet = torchvision.models.resnet50()
    b3, b4 = (sum(p.numel() for p in layer.parameters()) for layer in (resnet.layer3, resnet.layer4))
    assert rows[2]["params"] - rows[2]["head_params"] == b4  # ie2: a copy of B4
    assert rows[1]["params"] - rows[1]["head_params"] - rows[1]["attention_params"] == b3 + b4
    assert rows[3]["head_params"] == 2 * 8192 + 8192 * 751  # local BNNeck (weight + frozen bias) + classifier
