"""The ablation runner: caching, resuming after a kill, and the committed results the README quotes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepminer.ablation import (ABLATION_VARIANTS, PART_VARIANTS, RESULTS, SEEDS, TABLES, load_results, readme_results,
                                run_grid, summarize)
from deepminer.synthetic import make_synthetic_reid

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ablation") / "synthetic"
    return make_synthetic_reid(root, train_ids=8, test_ids=8, cameras=3, distractors=4, junk=2, progress=False)


def test_killed_grid_resumes_without_redoing_finished_runs(tiny_set, tmp_path):
    results = tmp_path / "results.json"
    command = [sys.executable, "-c", "from deepminer.cli import ablate_main; ablate_main()", "--root", str(tiny_set),
               "--epochs", "1", "--seeds", "0", "--results", str(results), "--quiet",
               "--variants", "baseline", "ie3_tau0.8", "ie23", "deep_miner"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not results.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = load_results(results)
    assert 1 <= len(first) < 4, "the kill came too late to test resuming"

    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = load_results(results)
    assert [r["variant"] for r in records] == ["baseline", "ie3_tau0.8", "ie23", "deep_miner"][:len(records)]
    assert len(records) == 4
    assert records[:len(first)] == first                        # finished runs were kept, not redone
    assert "part_shares" in records[3] and "part_shares" not in records[2]
    assert "deep_miner" in done.stdout and "results cached in" in done.stdout


def test_bad_cache_is_reported_not_overwritten(tmp_path):
    broken = tmp_path / "results.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        run_grid(["baseline"], seeds=[0], results=broken, progress=False)
    assert broken.read_text() == "{not json"


def test_committed_results_cover_the_grid_and_match_the_readme():
    records = load_results(REPO / RESULTS)
    grid = {(v, s) for v in ABLATION_VARIANTS for s in SEEDS}
    assert {(r["variant"], r["seed"]) for r in records} == grid
    configs = {json.dumps({k: v for k, v in r["config"].items() if k not in ("seed", "tau", "ie_after", "local_branch",
                                                                                "sam", "cham")}, sort_keys=True)
               for r in records}
    assert len(configs) == 1, "every cached run should share one size"
    assert all("part_shares" in r for r in records if r["variant"] in PART_VARIANTS)
    assert all(v in summarize(records).index for rows in TABLES.values() for v in rows.values())
    assert readme_results(records) in (REPO / "README.md").read_text()
