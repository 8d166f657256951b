"""Re-ranking from features (deepminer.rerank.re_ranking_features) without any N × N matrix: the same result as the
matrix path, its memory bound (counted and measured), its errors, and evaluate_distances(rerank=True) building no
query-query or gallery-gallery matrix."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import deepminer.evaluate as evaluate_module
import deepminer.rerank as rerank_module
from deepminer.evaluate import compute_distance, evaluate_distances
from deepminer.rerank import re_ranking, re_ranking_block, re_ranking_features, re_ranking_memory


def matrix_path(qf, gf, metric, *args, **kwargs):
    "What evaluate_distances(rerank=True) computed before: the three distance matrices, then re_ranking."
    return re_ranking(compute_distance(qf, gf, metric), compute_distance(qf, qf, metric), compute_distance(gf, gf, metric),
                      *args, **kwargs)


# --------------------------------------------------------------------------------------------- same result
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", range(12))
def test_features_path_matches_the_matrix_path(seed, metric):
    rng = np.random.default_rng(seed)
    Q, G = int(rng.integers(1, 9)), int(rng.integers(10, 40))               # Q != G
    # Odd seeds with squared Euclidean distances: integer features, many exactly tied distances (exact in float32 on
    # both paths, so ties break by index on both). Cosine distances of integer features tie only up to rounding (two
    # parallel vectors are at 0 or 6e-8 depending on how a matrix product is blocked), so each path may break such
    # "ties" its own way; cosine is compared on continuous features.
    ties = seed % 2 == 1 and metric == "euclidean"
    f = rng.integers(0, 3, (Q + G, 3)) if ties else rng.standard_normal((Q + G, 5))
    qf, gf = torch.from_numpy(f[:Q]).float(), torch.from_numpy(f[Q:]).float()
    k1, k2, lam = int(rng.integers(1, 10)), int(rng.integers(1, 6)), float(rng.uniform(0, 1))
    try:
        expected = matrix_path(qf, gf, metric, k1, k2, lam).numpy()
    except ValueError as err:
        assert "is at distance 0 from every image" in str(err)
        pytest.skip("an image identical to all others")
    np.testing.assert_allclose(re_ranking_features(qf, gf, metric, k1, k2, lam).numpy(), expected, rtol=0, atol=1e-5)
    # blocks of 3 rows: blocks that hold queries and gallery images, column chunks for cosine, gathers of few pairs
    tight = re_ranking_memory(Q, G, k1, k2, rows=3, dim=f.shape[1]) / 2**30
    assert re_ranking_block(Q, G, k1, k2, tight, dim=f.shape[1]) == 3
    np.testing.assert_allclose(re_ranking_features(qf, gf, metric, k1, k2, lam, max_memory_gb=tight).numpy(), expected,
                               rtol=0, atol=1e-5)


def test_features_path_takes_arrays_and_other_dtypes():
    rng = np.random.default_rng(7)
    f = rng.standard_normal((30, 6))
    expected = re_ranking_features(torch.from_numpy(f[:7]).float(), torch.from_numpy(f[7:]).float(), "cosine", 5, 2)
    torch.testing.assert_close(re_ranking_features(f[:7], f[7:], "cosine", 5, 2), expected, rtol=0, atol=1e-6)  # float64
    f[3] = 0.0                                                       # a zero vector: cosine distance 1 to everything
    np.testing.assert_allclose(re_ranking_features(f[:7], f[7:], "cosine", 5, 2).numpy(),
                               matrix_path(f[:7], f[7:], "cosine", 5, 2).numpy(), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------- nothing N × N
class LargestOutput(TorchDispatchMode):
    "Records the largest number of elements of any tensor an operation produces."
    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_features_path_allocates_nothing_gallery_by_gallery(metric):
    Q, G, D, k1, k2 = 10, 300, 4, 6, 3
    qf, gf = torch.randn(Q, D, generator=torch.Generator().manual_seed(0)), torch.randn(G, D)
    cap = re_ranking_memory(Q, G, k1, k2, rows=8, dim=D) / 2**30                 # blocks of 8 rows
    with LargestOutput() as mode:
        result = re_ranking_features(qf, gf, metric, k1, k2, max_memory_gb=cap)
    assert result.shape == (Q, G)
    assert mode.largest < G * G / 2, mode.largest          # the result has Q·G = 3,000 elements, G·G is 90,000


# --------------------------------------------------------------------------------------------- the bound
def test_the_bound_counts_the_features_path():
    assert rerank_module._METRICS == evaluate_module.METRICS                  # the same metrics on both paths
    for Q, G, k1, k2, rows, D in [(12, 60, 6, 3, 3, 5), (3368, 15913, 20, 6, 100, 2048), (11659, 82161, 20, 6, 1, 14336)]:
        plain = re_ranking_memory(Q, G, k1, k2, rows=rows)
        assert re_ranking_memory(Q, G, k1, k2, rows=rows, dim=D) == plain + (Q + G) * 2 * 4 + rows * 3 * D * 4
    assert re_ranking_block(12, 60, 6, 3) == 72 and re_ranking_block(12, 60, 6, 3, dim=5) == 72
    assert re_ranking_block(11659, 82161, max_memory_gb=16, dim=2048) < re_ranking_block(11659, 82161, max_memory_gb=16)
    with pytest.raises(MemoryError, match="re_ranking of 11659 queries and 82161 gallery images"):
        re_ranking_block(11659, 82161, dim=2048)                 # MSMT17 does not fit the default 4 GiB
    with pytest.raises(ValueError, match="dim must be a non-negative integer"):
        re_ranking_memory(3, 5, dim=-1)


CHILD = textwrap.dedent("""
    import json, torch
    from deepminer.rerank import re_ranking_features
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) * 1024
    Q, G, D, k1, k2, cap = {args}
    g = torch.Generator().manual_seed(0)
    re_ranking_features(torch.randn(5, D, generator=g), torch.randn(40, D, generator=g), "euclidean", k1, k2)   # warm up
    centres = torch.randn(Q + G, D, generator=g)
    ids = torch.randint(0, (Q + G) // 8, (Q + G,), generator=g)
    f = centres[ids] + 0.5 * torch.randn(Q + G, D, generator=g)
    qf, gf = f[:Q].clone(), f[Q:].clone()
    del f, centres
    with open("/proc/self/clear_refs", "w") as out:
        out.write("5")                                   # reset the peak resident set to the current one
    before = status("VmRSS")
    re_ranking_features(qf, gf, "euclidean", k1, k2, 0.3, cap)
    print(json.dumps(dict(peak=status("VmHWM") - before)))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
def test_measured_peak_memory_stays_under_the_bound():
    Q, G, D, k1, k2 = 1000, 9000, 16, 6, 2
    rows = 64
    bound = re_ranking_memory(Q, G, k1, k2, rows=rows, dim=D)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD.format(args=(Q, G, D, k1, k2, bound / 2**30))], env=env,
                         capture_output=True, text=True, check=True)
    peak = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
    assert bound < G * G * 4 / 3                                 # 97 MiB, where the gallery matrix alone is 309 MiB
    assert peak <= bound, (peak / 2**20, bound / 2**20)          # measured: 49-59 MiB


# --------------------------------------------------------------------------------------------- errors
def test_re_ranking_features_errors():
    qf, gf = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(MemoryError, match="needs up to .* GiB besides its inputs, more than max_memory_gb=1e-06"):
        re_ranking_features(qf, gf, max_memory_gb=1e-6)
    bad_gf = gf.clone()
    bad_gf[2, 1] = float("nan")
    for call, message in [
        (lambda: re_ranking_features(qf, gf, "l1"), "metric must be one of ('euclidean', 'cosine'), got 'l1'"),
        (lambda: re_ranking_features(qf[0], gf), "qf must be a non-empty (num_images, dim) feature matrix, got shape (4,)"),
        (lambda: re_ranking_features(qf, gf[:0]), "gf must be a non-empty (num_images, dim) feature matrix"),
        (lambda: re_ranking_features(qf, gf[:, :3]), "qf and gf must have the same feature size, got 4 and 3"),
        (lambda: re_ranking_features(qf, bad_gf), "gf holds NaN or infinite values"),
        (lambda: re_ranking_features(qf / 0, gf), "qf holds NaN or infinite values"),
        (lambda: re_ranking_features(qf, gf, k1=0), "k1 must be a positive integer"),
        (lambda: re_ranking_features(qf, gf, lambda_value=2.0), "lambda_value must lie in [0, 1]"),
        (lambda: re_ranking_features(torch.ones(1, 3), torch.ones(2, 3)), "image 0 (queries first, then gallery) is at "
                                                                          "distance 0 from every image"),
    ]:
        with pytest.raises(ValueError) as err:
            call()
        assert message in str(err.value)


# --------------------------------------------------------------------------------------------- evaluate_distances
class MeanColours(torch.nn.Module):
    "Eval features: the per-channel means of the left and right halves of the image (6)."
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        w = x.shape[-1] // 2
        return self.scale * torch.cat([x[..., :w].mean(dim=(2, 3)), x[..., w:].mean(dim=(2, 3))], dim=1)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_evaluate_distances_reranks_from_the_features(monkeypatch, metric):
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(6, 3, 1, 1, generator=g)
    def loader(pids, camids):
        images = colours[pids].expand(-1, 3, 8, 4) + 0.2 * torch.rand(len(pids), 3, 8, 4, generator=g)
        return [(images[i : i + 4], pids[i : i + 4], camids[i : i + 4]) for i in range(0, len(pids), 4)]
    q_pids, g_pids = torch.arange(6), torch.arange(6).repeat(4)
    q_loader, g_loader = loader(q_pids, torch.zeros(6, dtype=torch.long)), loader(g_pids, torch.arange(24) % 3)
    calls = []
    real = evaluate_module.compute_distance
    monkeypatch.setattr(evaluate_module, "compute_distance", lambda a, b, *rest: calls.append((len(a), len(b))) or real(a, b, *rest))
    run = evaluate_distances(MeanColours(), q_loader, g_loader, metric=metric, rerank=True, k1=4, k2=2, progress=False)
    assert calls == []                                                     # no distance matrix at all
    expected = matrix_path(run.query.features, run.gallery.features, metric, 4, 2, 0.3)
    torch.testing.assert_close(run.distmat, expected, rtol=0, atol=1e-5)
    plain = evaluate_distances(MeanColours(), q_loader, g_loader, metric=metric, progress=False)
    assert calls == [(6, 24)] and plain.distmat.shape == run.distmat.shape
    with pytest.raises(MemoryError, match="more than max_memory_gb=1e-06"):
        evaluate_distances(MeanColours(), q_loader, g_loader, metric=metric, rerank=True, progress=False, max_memory_gb=1e-6)
