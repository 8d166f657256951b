"""The reference runs' machinery (stopping rule, resume, records) and the trunk weights shipped with the package."""
import json

import pytest
import torch

from deepminer.erase import erase_mask
from deepminer.reference import (REFERENCE_RESULTS, REFERENCE_SEEDS, REFERENCE_VARIANTS, TRUNK_PREFIXES, TRUNK_WEIGHTS,
                                 StopWhenConverged, load_reference_trunk, reference_config, reference_probe,
                                 trunk_fingerprint)
from deepminer.synthetic import PARTS, make_synthetic_reid
from deepminer.train import load_checkpoint, train
from deepminer.visualize import read_part_layouts


@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    "The default synthetic set, the one the reference model was trained and tested on."
    return make_synthetic_reid(tmp_path_factory.mktemp("data") / "synthetic", progress=False)


def test_the_shipped_trunk_loads_and_still_computes_the_features_it_was_saved_with():
    data = torch.load(TRUNK_WEIGHTS, weights_only=True)
    assert TRUNK_WEIGHTS.stat().st_size < 10 * 2**20                       # a few MB, shipped with the package
    assert all(k.startswith(TRUNK_PREFIXES) for k in data["trunk"])
    assert all(v.dtype == torch.float16 for v in data["trunk"].values() if v.is_floating_point())
    model = load_reference_trunk()                                         # raises if the fingerprint differs
    assert trunk_fingerprint(model, 128, 64) == pytest.approx(data["fingerprint"], rel=1e-3, abs=1e-5)
    assert (model.reference_input["height"], model.reference_input["width"]) == (128, 64)
    assert model.reference_input["variant"] == "deep_miner" and model.reference_input["seed"] == 0


def test_the_shipped_trunk_comes_from_a_recorded_converged_run():
    source = load_reference_trunk().reference_input
    records = json.loads((TRUNK_WEIGHTS.parents[2] / REFERENCE_RESULTS).read_text())
    run = next(r for r in records if (r["variant"], r["seed"]) == ("deep_miner", 0))
    assert (source["epochs"], source["mAP"]) == (run["epochs"], run["mAP"])
    assert run["converged"] and run["config"]["height"] == 128


def test_the_cache_holds_every_seed_of_both_models_converged_at_8x4_maps_with_device_and_provenance():
    records = json.loads((TRUNK_WEIGHTS.parents[2] / REFERENCE_RESULTS).read_text())
    runs = {(r["variant"], r["seed"]): r for r in records}
    assert set(runs) == {(v, s) for v in REFERENCE_VARIANTS for s in REFERENCE_SEEDS}
    for r in runs.values():
        config = r["config"]
        assert (config["height"], config["width"]) == (128, 64)    # ResNet-18, last stride 1: last maps 8×4
        assert r["device"] == "cpu" or r["device"].startswith("cuda")
        assert r["converged"] and r["stopping"]["gain"] < 1.0 and r["epochs"] <= config["epochs"]
        assert [h["epoch"] for h in r["history"]] == list(range(1, r["epochs"] + 1))
        assert set(r["part_shares"]) == {"global", "ie1", "ie2", "local"}
        assert all(r[k] for k in ("command", "commit", "date", "machine", "wall_seconds"))


def test_the_shipped_trunk_erases_parts_of_each_person_and_more_as_tau_falls(default_set):
    model = load_reference_trunk()
    images, records = reference_probe(default_set, n=6)
    layouts = read_part_layouts([r.path for r in records], 128, 64)
    with torch.no_grad():
        outputs = model.inspect(images).block_outputs
    for block in (2, 3):
        erased = {tau: 1 - erase_mask(outputs[block], tau) for tau in (0.5, 0.8, 0.95)}     # (6, 1, h, w), 1 = erased
        fractions = {tau: e.mean(dim=(1, 2, 3)) for tau, e in erased.items()}
        assert (fractions[0.5] >= fractions[0.8]).all() and (fractions[0.8] >= fractions[0.95]).all()
        assert (fractions[0.8] > 0).all() and (fractions[0.5] < 1).all()
    # after B2, what is erased at tau = 0.8 lies mostly on the person (after B3 it is mostly background: see 09_widgets)
    on_person = (layouts != PARTS.index("background")).float()                              # (6, H, W)
    up = torch.nn.functional.interpolate(1 - erase_mask(outputs[2], 0.8), size=layouts.shape[1:], mode="nearest")[:, 0]
    assert ((up * on_person).sum() / up.sum()).item() > 0.5


def test_a_converged_run_stops_and_is_not_trained_further_when_resumed(tmp_path):
    root = make_synthetic_reid(tmp_path / "tiny", train_ids=8, test_ids=8, cameras=3, distractors=4, junk=2, progress=False)
    config = reference_config("deep_miner", 0, root=str(root), epochs=4, P=4, K=2, warmup_epochs=0, milestones=(),
                              eval_every=1, height=64, width=32, cpu_bf16=False)   # float32: fast on any CPU
    always = StopWhenConverged(min_gain=1e9, check_from=2)      # every check says converged: stops at the first, epoch 2
    result = train(config, tmp_path / "run", callbacks=[always], progress=False)
    assert result["epochs"] == 2 and always.check["converged"] and always.check["since_epoch"] == 1
    again = train(config, tmp_path / "run", resume=True, callbacks=[StopWhenConverged(min_gain=1e9, check_from=2)],
                  progress=False)
    assert again["epochs"] == 2 and load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 2
    never = StopWhenConverged(min_gain=-1e9, check_from=2)
    assert train(config, tmp_path / "run", resume=True, callbacks=[never], progress=False)["epochs"] == 4
