"""The mechanism's measurements and worlds: part reliance finds a planted part, the shortcut world's cue is crisp
and its test groups share it, erase sources read the mask where they say, the grid's runner and its cache."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deepminer.erase import ErO, erase_mask
from deepminer.mechanism import MECHANISM_MODELS, WORLD_ROOTS, make_world, mechanism_config
from deepminer.model import DeepMiner, DeepMinerConfig
from deepminer.synthetic import (PARTS, SHORTCUT_TOPS, SyntheticConfig, make_synthetic_reid,
                                 nearest_neighbour_accuracy, part_colour_descriptor)
from deepminer.visualize import background_ring, erase_placement, erased_reliance, part_reliance, reliance_losses

H, W = 32, 16
BOXES = {"head": (slice(1, 6), slice(5, 11)), "torso": (slice(6, 16), slice(3, 13)),
         "legs": (slice(16, 27), slice(4, 12)), "shoes": (slice(27, 31), slice(4, 12))}


class ReadsOnePart(nn.Module):
    "A made-up model whose every branch reads the mean colour of one fixed box: {branch: part}."

    def __init__(self, parts: dict[str, str]):
        super().__init__()
        self.parts = parts
        self.feature_dims = {branch: 3 for branch in parts}

    def forward(self, x):
        return torch.cat([x[:, :, BOXES[p][0], BOXES[p][1]].mean((2, 3)) for p in self.parts.values()], dim=1)


@pytest.fixture(scope="module")
def planted_set(tmp_path_factory):
    "16 people, each part a colour of their own, at fixed boxes over a noisy background; query in c1, gallery in c2 and c3."
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    query, gallery = [], []
    for folder in ("query", "bounding_box_test"):
        (root / folder).mkdir(); (root / "parts" / folder).mkdir(parents=True)
    for pid in range(1, 17):
        colours = {part: rng.integers(0, 256, 3) for part in BOXES}
        for cam, folder in ((0, "query"), (1, "bounding_box_test"), (2, "bounding_box_test")):
            rgb = rng.integers(0, 256, (H, W, 3))
            layout = np.zeros((H, W), np.uint8)
            for part, (rows, cols) in BOXES.items():
                rgb[rows, cols] = colours[part]
                layout[rows, cols] = PARTS.index(part)
            name = f"{pid:04d}_c{cam + 1}s1_000001_01"
            Image.fromarray(rgb.astype(np.uint8)).save(root / folder / f"{name}.png")
            Image.fromarray(layout).save(root / "parts" / folder / f"{name}.png")
            (query if folder == "query" else gallery).append((str(root / folder / f"{name}.png"), pid, cam))
    return query, gallery


@pytest.mark.parametrize("planted", [{"global": "torso", "ie1": "legs"}, {"global": "shoes", "ie1": "head"}])
def test_part_reliance_names_the_part_a_planted_branch_reads(planted_set, planted):
    reliance = part_reliance(ReadsOnePart(planted), *planted_set, H, W, parts=list(BOXES), progress=False)
    losses, control = reliance_losses(reliance), reliance_losses(reliance, kind="control")
    for branch, part in planted.items():
        assert reliance["clean"][branch]["mAP"] > 95
        assert max(losses[branch], key=losses[branch].get) == part
        assert losses[branch][part] > 50
        assert all(abs(loss) < 1 for p, loss in losses[branch].items() if p != part)   # other parts: nothing
        assert all(abs(loss) < 1 for loss in control[branch].values())                 # background rings: nothing
    assert reliance["area"]["torso"]["part"] == pytest.approx(reliance["area"]["torso"]["control"])


class ErasesTheMoreActiveBox(nn.Module):
    """G reads the torso box; IE1 erases, as eq. (1) erases the most active places, the more active of the torso and
    legs boxes (the torso, weighted 10x, unless it is painted grey) and reads the box its mask keeps."""
    feature_dims = {"global": 3, "ie1": 3}

    def inspect(self, x, masks=None):
        boxes = [x[:, :, BOXES[p][0], BOXES[p][1]] for p in ("torso", "legs")]                      # (B, 3, h, w) each
        activity = torch.stack([b.abs().mean((1, 2, 3)) for b in boxes], 1) * torch.tensor([10.0, 1.0])  # (B, 2)
        mask = (masks or {}).get("ie1", (activity < activity.amax(1, keepdim=True)).float()[:, None, :, None])
        colours = torch.stack([b.mean((2, 3)) for b in boxes], 2)                                     # (B, 3, 2)
        ie1 = (colours * mask[:, :, :, 0]).sum(2)                                                     # (B, 3) kept box
        return type("Inspection", (), {"erase_masks": {"ie1": mask}, "descriptor": torch.cat([colours[:, :, 0], ie1], 1)})

    def forward(self, x, masks=None):
        return self.inspect(x, masks).descriptor


def test_frozen_masks_keep_a_moving_mask_from_booking_its_move_to_the_painted_part(planted_set):
    "IE1 never reads the torso: frozen masks find that; recomputed ones book the mask's move onto the legs to the torso."
    losses = {mode: reliance_losses(part_reliance(ErasesTheMoreActiveBox(), *planted_set, H, W, parts=["torso", "legs"],
                                                  masks=mode, progress=False)) for mode in ("frozen", "recomputed")}
    assert abs(losses["frozen"]["ie1"]["torso"]) < 1 and losses["frozen"]["ie1"]["legs"] > 50
    assert losses["recomputed"]["ie1"]["torso"] > 50                   # the mask moved onto the legs
    assert losses["frozen"]["global"] == losses["recomputed"]["global"]  # no mask, no difference
    with pytest.raises(ValueError, match="masks must be one of"):
        part_reliance(ErasesTheMoreActiveBox(), *planted_set, H, W, masks="moving", progress=False)


@pytest.mark.parametrize("training", [True, False])
def test_random_placement_erases_as_many_positions_as_eq1_elsewhere(training):
    torch.manual_seed(0)
    model = DeepMiner(5, backbone="resnet18", erase_placement="random").train(training)
    x = torch.randn(6, 3, 128, 64)
    with torch.no_grad():
        inspection = model.inspect(x)
        again = model.inspect(x).erase_masks
    for name, mask in inspection.erase_masks.items():
        eq1 = erase_mask(inspection.erase_inputs[name], 0.8)
        assert torch.equal((mask == 0).sum((1, 2, 3)), (eq1 == 0).sum((1, 2, 3)))    # the same count, image by image
        assert not torch.equal(mask, eq1)                                         # not the same places
        assert torch.equal(again[name], mask) != training                          # fresh in training, fixed in eval


def test_background_ring_is_background_of_equal_area_next_to_the_part():
    layout = torch.zeros(12, 8, dtype=torch.long)
    layout[3:7, 2:6] = PARTS.index("torso")
    region = layout == PARTS.index("torso")
    ring = background_ring(layout, region)
    assert int(ring.sum()) == int(region.sum()) and not (ring & region).any()
    rows, cols = ring.nonzero(as_tuple=True)
    assert rows.min() >= 1 and rows.max() <= 8 and cols.min() >= 0 and cols.max() <= 7   # hugs the part
    full = torch.full((4, 4), PARTS.index("torso"))
    assert int(background_ring(full, full == PARTS.index("torso")).sum()) == 0            # no background: no ring


def test_erased_reliance_weighs_erased_shares_by_loss():
    placement = {"of_part": {"torso": 1.0, "legs": 0.0, "head": 0.5}}
    assert erased_reliance(placement, {"torso": 30.0, "legs": 10.0, "head": -5.0}) == pytest.approx(0.75)
    assert np.isnan(erased_reliance(placement, {"torso": 0.0, "legs": -1.0}))


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds")
    return {w: make_synthetic_reid(root / w, world=w, progress=False) for w in ("balanced", "shortcut")}


def test_shortcut_world_training_identities_are_told_apart_by_the_torso_alone(worlds):
    manifest = json.loads((worlds["shortcut"] / "synthetic.json").read_text())
    train = manifest["identities"]["train"]
    tops = [(p["torso_colour"], p["torso_band"]) for p in train]
    assert len(set(tops)) == len(train) == 100 and set(tops) <= set(SHORTCUT_TOPS)
    shortcut = nearest_neighbour_accuracy(*part_colour_descriptor(worlds["shortcut"], "bounding_box_train", "torso"))
    balanced = nearest_neighbour_accuracy(*part_colour_descriptor(worlds["balanced"], "bounding_box_train", "torso"))
    legs = nearest_neighbour_accuracy(*part_colour_descriptor(worlds["shortcut"], "bounding_box_train", "legs"))
    assert shortcut > 0.95 and balanced < 0.5 and legs < 0.5


def test_shortcut_world_test_identities_share_their_top_in_groups(worlds):
    config = json.loads((worlds["shortcut"] / "synthetic.json").read_text())
    test = config["identities"]["test"]
    groups = {}
    for p in test:
        groups.setdefault((p["torso_colour"], p["torso_band"], p["torso_pattern"]), []).append(p)
    assert sorted(len(g) for g in groups.values()) == [4] + [6] * 16
    appearances = {json.dumps({k: v for k, v in p.items() if k != "pid"}, sort_keys=True) for p in test}
    assert len(appearances) == len(test)                                      # told apart by the other parts
    assert nearest_neighbour_accuracy(*part_colour_descriptor(worlds["shortcut"], "bounding_box_test", "torso")) < 0.5


def test_balanced_world_is_unchanged_by_the_world_option(worlds, tmp_path):
    manifest = json.loads((worlds["balanced"] / "synthetic.json").read_text())
    assert all(p["torso_band"] == "none" for split in manifest["identities"].values() for p in split)
    old = dict(manifest, config={k: v for k, v in manifest["config"].items() if k not in ("world", "shortcut_group")})
    (worlds["balanced"] / "synthetic.json").write_text(json.dumps(old))      # a set written before the option existed
    assert make_synthetic_reid(worlds["balanced"], progress=False) == worlds["balanced"]   # is still this set


@pytest.mark.parametrize("sizes, message", [
    (dict(world="flat"), "world must be one of"),
    (dict(world="shortcut", train_ids=200), "train_ids must be at most 132"),
    (dict(world="shortcut", shortcut_group=101), "shortcut_group must be between 1 and test_ids"),
])
def test_bad_world_settings_name_the_field(sizes, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**sizes)


def test_erase_source_global_reads_the_mask_from_g_last_maps():
    torch.manual_seed(0)
    model = DeepMiner(5, backbone="resnet18", erase_source="global").eval()
    with torch.no_grad():
        ins = model.inspect(torch.randn(2, 3, 64, 32))
    for k, branch in enumerate(model.ie_branches, start=1):
        grid = ins.block_outputs[branch.position].shape[-2:]
        assert torch.equal(ins.erase_masks[f"ie{k}"], erase_mask(ins.block_outputs[4], 0.8, grid))
        assert ins.erase_sources[f"ie{k}"] is ins.block_outputs[4]
    block = DeepMiner(5, backbone="resnet18").eval()
    with torch.no_grad():
        ins = block.inspect(torch.randn(2, 3, 64, 32))
    assert ins.erase_sources["ie1"] is ins.erase_inputs["ie1"]
    with pytest.raises(ValueError, match="erase_source must be one of"):
        DeepMinerConfig(erase_source="image")
    assert DeepMinerConfig.from_dict({"tau": 0.5}).erase_source == "block"   # configs written before the option


def test_ero_source_on_another_grid_erases_where_the_source_is_strong():
    y = torch.rand(1, 4, 16, 8)
    source = torch.zeros(1, 2, 4, 2)
    source[..., 3, :] = 1.0                                  # strong in the bottom row of a 4x2 grid
    erased, mask = ErO(0.5)(y, return_mask=True, source=source)
    assert mask.shape == (1, 1, 16, 8)
    assert (mask[0, 0, 12:] == 0).all() and (mask[0, 0, :8] == 1).all()
    assert torch.equal(erased, y * mask)


def test_erase_placement_shares_add_up(worlds):
    from deepminer.data import SyntheticMarket
    people = [r for r in SyntheticMarket(worlds["balanced"]).query][:24]
    torch.manual_seed(0)
    placement = erase_placement(DeepMiner(5, backbone="resnet18"), people, 64, 32)
    assert set(placement) == {"ie1", "ie2"}
    for p in placement.values():
        assert sum(p["on_part"].values()) == pytest.approx(1.0) and sum(p["area"].values()) == pytest.approx(1.0)
        assert 0 <= p["erased"] <= 1 and 0 <= p["border_erased"] <= 1
    assert 0 < placement["ie1"]["border_grid"] < 1          # 8x4 after B2: 20 of 32 positions on the border
    assert placement["ie2"]["border_grid"] == 1.0           # 4x2 after B3: every position is on the border


def test_mechanism_grid_configs_and_world_roots(tmp_path):
    assert set(MECHANISM_MODELS) == {"deep_miner", "deep_miner_global", "deep_miner_tau1.0", "deep_miner_random", "baseline"}
    assert mechanism_config("shortcut", "deep_miner").root == WORLD_ROOTS["shortcut"]
    balanced = make_synthetic_reid(tmp_path / "b", train_ids=4, test_ids=4, cameras=2, distractors=1, junk=1, progress=False)
    with pytest.raises(ValueError, match="not a synthetic set of the shortcut world"):
        make_world(mechanism_config("shortcut", "baseline", root=str(balanced)), "shortcut")
    assert make_world(mechanism_config("balanced", "baseline", root=str(balanced)), "balanced") == balanced


def test_committed_mechanism_cache_matches_todays_grid():
    "Every cached run is a run of today's grid (same config for its key), trained to its rule or cap, fully measured."
    from deepminer.mechanism import MECHANISM_RESULTS
    from deepminer.runs import load_results
    from deepminer.train import TrainConfig
    repo = Path(__file__).resolve().parents[1]
    records = load_results(repo / MECHANISM_RESULTS, ("world", "model", "seed", "config"))
    assert records, "nbs/results/mechanism.json holds no run"
    for r in records:
        assert TrainConfig.from_dict(r["config"]) == mechanism_config(r["world"], r["model"], r["seed"])
        last = max(h["epoch"] for h in r["history"] if "eval/mAP" in h)
        assert r["epochs"] == last and (r["converged"] or r["epochs"] == r["config"]["epochs"])
        branches = {"global", "all"} | ({"ie1", "ie2", "local"} if r["model"] != "baseline" else set())
        assert set(r["reliance"]["clean"]) == branches
        assert set(r["reliance"]["painted"]) == set(r["reliance"]["control"]) == set(PARTS[1:])
        assert set(r["placement"]) == ({"ie1", "ie2"} if r["model"] != "baseline" else set())
        assert r["commit"] != "unknown" and r["machine"] and r["command"] == "run_mechanism_grid()"


def test_committed_128x64_cache_runs_of_todays_grid_fully_measured():
    "Every cached run of the 128x64 grid is a run of GRID_128 (same config), to its rule or cap, with every measurement."
    from deepminer.mechanism import GRID_128
    from deepminer.runs import load_results
    from deepminer.train import TrainConfig
    repo = Path(__file__).resolve().parents[1]
    records = load_results(repo / GRID_128["results"], ("world", "model", "seed", "config"))
    assert records, f"{GRID_128['results']} holds no run"
    sizes = {k: v for k, v in GRID_128.items() if k not in ("worlds", "models", "seeds", "results", "runs", "heldout")}
    for r in records:
        assert (r["world"], r["model"], r["seed"]) in {(w, m, s) for w in GRID_128["worlds"] for m in GRID_128["models"]
                                                     for s in GRID_128["seeds"]}
        assert TrainConfig.from_dict(r["config"]) == mechanism_config(r["world"], r["model"], r["seed"], **sizes)
        assert r["converged"] or r["epochs"] == r["config"]["epochs"]
        assert r["reliance"]["masks"] == "frozen" and set(r["reliance"]["painted"]) == set(PARTS[1:])
        assert ("reliance_recomputed" in r) == (r["model"] != "baseline")
        assert r["heldout"]["world"] == GRID_128["heldout"] and set(r["heldout"]["reliance"]["painted"]) == {"torso"}
        assert r["commit"] != "unknown" and r["machine"] and r["wall_seconds"] > 0


def test_committed_mechanism_cache_holds_the_whole_grid():
    "2 worlds × 4 networks × 3 seeds: every run of the grid is in the cache, once."
    from deepminer.mechanism import MECHANISM_RESULTS, MECHANISM_SEEDS
    from deepminer.runs import load_results
    from deepminer.synthetic import WORLDS
    repo = Path(__file__).resolve().parents[1]
    records = load_results(repo / MECHANISM_RESULTS, ("world", "model", "seed", "config"))
    keys = [(r["world"], r["model"], r["seed"]) for r in records]
    models = ("deep_miner", "deep_miner_global", "deep_miner_tau1.0", "baseline")   # the 64x32 grid's networks
    expected = {(w, m, s) for w in WORLDS for m in models for s in MECHANISM_SEEDS}
    assert len(expected) == 24 and len(keys) == len(set(keys))
    assert set(keys) == expected, f"missing: {sorted(expected - set(keys))}"
