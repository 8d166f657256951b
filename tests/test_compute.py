"""The equal-compute study (deepminer.compute, nbs/11a_compute.ipynb): budgets, FLOP counting, the cache and its tables."""
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from deepminer.compute import (COMPUTE_BUDGETS, COMPUTE_KEYS, COMPUTE_RESULTS, COMPUTE_SEEDS, COMPUTE_SERIES,
                               compute_config, compute_frame, compute_gaps, compute_summary, plot_compute, readme_compute,
                               run_compute_grid, scaled_schedule, training_step_flops)
from deepminer.ablation import load_results
from deepminer.train import TrainConfig, recipe

REPO = Path(__file__).resolve().parents[1]


def test_scaled_schedule_is_a_valid_schedule_inside_the_run():
    for epochs in range(1, 121):
        config = recipe("cpu", **scaled_schedule(epochs))          # TrainConfig validates the schedule
        assert 1 <= config.warmup_epochs < max(2, epochs), epochs
        assert config.warmup_epochs <= config.milestones[0] <= epochs, epochs


def test_scaled_schedule_at_20_epochs_is_the_main_job():
    assert compute_config("deep_miner", 20) == recipe("cpu")
    with pytest.raises(ValueError, match="positive integer"):
        scaled_schedule(0)


def test_baseline_budgets_reach_deep_miners_largest_in_flops():
    base = compute_config("baseline", 56)
    assert (base.model.ie_after, base.model.local_branch, base.model.sam, base.model.cham) == ((), False, False, False)
    ratio = training_step_flops(recipe("cpu"), 751) / training_step_flops(base, 751)
    assert 2.6 < ratio < 3.0
    # the largest baseline budget is Deep Miner's largest in FLOPs, to within a FLOP ratio rounded to one decimal
    assert max(COMPUTE_BUDGETS["baseline"]) == pytest.approx(ratio * max(COMPUTE_BUDGETS["deep_miner"]), rel=0.03)


def record(model, epochs, seed, mAP, g=None):
    scores = {"all": {"mAP": mAP, "rank1": mAP + 1, "gmacs": 0.34 if model == "deep_miner" else 0.12}}
    if g is not None:
        scores["G"] = {"mAP": g, "rank1": g + 1, "gmacs": 0.125}
    return {"model": model, "epochs": epochs, "seed": seed, "scores": scores, "train_seconds": 60.0 * epochs,
            "wall_seconds": 61.0 * epochs, "steps": 12 * epochs, "step_gflops": 100.0, "config": {}}


def test_summary_means_and_stds_over_seeds_per_curve_and_budget():
    records = [record("baseline", 20, s, 10.0 + s) for s in range(3)] + \
              [record("deep_miner", 20, s, 20.0 + 2 * s, g=15.0) for s in range(3)]
    frame = compute_frame(records)
    assert set(frame.curve) == set(COMPUTE_SERIES)
    stats = compute_summary(records)
    assert stats.loc[("baseline", 20), "mAP"] == 11.0 and stats.loc[("baseline", 20), "mAP_std"] == 1.0
    assert stats.loc[("Deep Miner", 20), "mAP"] == 22.0 and stats.loc[("Deep Miner", 20), "mAP_std"] == 2.0
    assert stats.loc[("Deep Miner served as G", 20), "mAP"] == 15.0
    assert stats.loc[("baseline", 20), "train_tflops"] == pytest.approx(12 * 20 * 100 / 1e3)
    assert stats.loc[("baseline", 20), "train_minutes"] == 20.0
    axes = plot_compute(records)
    assert [len(ax.containers) for ax in axes] == [3, 3, 3]   # one error-bar series per curve, in every panel
    assert "equal epochs" in axes[0].get_title() and "equal compute" in axes[1].get_title()


def test_gaps_pair_seeds_at_equal_epochs_and_at_the_nearest_flops():
    records = [record("baseline", e, s, e + s) for e in (20, 56) for s in range(3)] + \
              [record("deep_miner", 20, s, 40.0 + 2 * s, g=30.0 + s) for s in range(3)]
    for r in records:   # a Deep Miner step costs 2.8 baseline steps: 20 of its epochs are 56 of the baseline's
        r["step_gflops"] = 280.0 if r["model"] == "deep_miner" else 100.0
    gaps = compute_gaps(records)
    assert gaps.loc[("equal epochs", "Deep Miner", 20), "baseline epochs"] == 20
    assert gaps.loc[("equal epochs", "Deep Miner", 20), "per seed"] == "+20.0, +21.0, +22.0"
    assert gaps.loc[("equal FLOPs", "Deep Miner served as G", 20), "baseline epochs"] == 56
    assert gaps.loc[("equal FLOPs", "Deep Miner served as G", 20), "Δ mAP"] == "-26.0 ± 0.0"


def test_a_broken_cache_is_refused_and_left_as_it_was(tmp_path):
    broken = tmp_path / "compute.json"
    broken.write_text('[{"model": "baseline"}]')
    with pytest.raises(ValueError, match="'epochs'"):
        run_compute_grid({"baseline": (1,)}, seeds=[0], results=broken, progress=False)
    assert broken.read_text() == '[{"model": "baseline"}]'


def test_committed_cache_covers_the_study_and_matches_the_readme():
    records = load_results(REPO / COMPUTE_RESULTS, COMPUTE_KEYS)
    grid = {(m, e, s) for m, budgets in COMPUTE_BUDGETS.items() for e in budgets for s in COMPUTE_SEEDS}
    assert {(r["model"], r["epochs"], r["seed"]) for r in records} == grid
    for r in records:   # each run is the main job's recipe at its budget, as compute_config builds it today
        assert TrainConfig.from_dict(r["config"]) == compute_config(r["model"], r["epochs"], r["seed"])
        assert {"command", "commit", "date", "machine"} <= set(r)
    stats = compute_summary(records)
    # Deep Miner served as G costs the baseline's inference within 10 %
    assert stats.loc[("Deep Miner served as G", 20), "gmacs"] <= 1.1 * stats.loc[("baseline", 20), "gmacs"]
    assert readme_compute(records) in (REPO / "README.md").read_text(encoding="utf-8")
