"""Exactness and property tests for the evaluation (deepminer.evaluate, with deepminer.ranking, deepminer.rerank and
deepminer.plots): the Market-1501 protocol against a slow per-query reference, its invariances, k-reciprocal re-ranking
against a loop reference, features, distances, plots."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepminer.evaluate import (RankMetrics, compute_distance, evaluate, evaluate_distances, evaluate_rank,
                                extract_features, protocol_masks)
from deepminer.plots import distance_histograms, plot_ranked_lists, save_evaluation_plots
from deepminer.rerank import re_ranking, re_ranking_block, re_ranking_memory


# --------------------------------------------------------------------------------------------- slow references
def reference_rank(d, qp, gp, qc, gc, max_rank=50):
    """The obvious way: per query, keep the valid entries, stable-argsort them, read off the matches.
    Returns (cmc, mAP, mINP, first ranks, AP per query) or None when no query has a valid match."""
    firsts, aps, inps = [], [], []
    for i in range(len(d)):
        keep = [j for j in range(len(gp)) if gp[j] != -1 and not (gp[j] == qp[i] and gc[j] == qc[i])]
        order = sorted(keep, key=lambda j: (d[i, j], j))          # distance, then gallery index
        hits = [k for k, j in enumerate(order) if gp[j] == qp[i]]  # 0-based ranks of the true matches
        firsts.append(hits[0] if hits else -1)
        aps.append(np.mean([(n + 1) / (r + 1) for n, r in enumerate(hits)]) if hits else np.nan)
        inps.append(len(hits) / (hits[-1] + 1) if hits else np.nan)
    firsts = np.array(firsts)
    valid = firsts >= 0
    if not valid.any():
        return None
    cmc = np.array([(firsts[valid] <= k).mean() for k in range(max_rank)])
    return cmc, np.nanmean(aps), np.nanmean(inps), firsts, np.array(aps)


def reference_rerank(q_g, q_q, g_g, k1, k2, lambda_value):
    "k-reciprocal re-ranking (Zhong et al. 2017) with loops, sets and a dense V; nearest-neighbour ties by index."
    Q, G = q_g.shape
    N = Q + G
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32)
    dist = (full / full.max(axis=0)).T
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i, k):
        return [j for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    V = np.zeros((N, N), np.float32)
    for i in range(N):
        R = reciprocal(i, k1)
        expanded = set(R)
        for c in R:
            Rc = reciprocal(c, int(round(k1 / 2)))
            if len(set(Rc) & set(R)) > 2 / 3 * len(Rc):
                expanded |= set(Rc)
        e = sorted(expanded)
        w = np.exp(-dist[i, e])
        V[i, e] = w / w.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(N)])
    jaccard = np.zeros((Q, G))
    for i in range(Q):
        for g in range(G):
            shared = np.minimum(V[i], V[Q + g]).sum()
            jaccard[i, g] = 1 - shared / (2 - shared)
    return jaccard * (1 - lambda_value) + dist[:Q, Q:] * lambda_value


# --------------------------------------------------------------------------------------------- generators
@st.composite
def problems(draw, max_query=8, max_gallery=40):
    "A random (distmat, q_pids, g_pids, q_camids, g_camids): junk, distractors, few ids and cameras, often ties."
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    Q, G = draw(st.integers(1, max_query)), draw(st.integers(1, max_gallery))
    ids, cams = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    qp, gp = rng.integers(-1, ids + 1, Q), rng.integers(-1, ids + 1, G)
    qc, gc = rng.integers(0, cams, Q), rng.integers(0, cams, G)
    kind = draw(st.sampled_from(["few values", "float32", "float64 wide", "constant"]))
    if kind == "few values":
        d = rng.integers(0, draw(st.integers(1, 6)), (Q, G)).astype(np.float32)
    elif kind == "float32":
        d = rng.random((Q, G), dtype=np.float32)
    elif kind == "float64 wide":
        d = rng.standard_normal((Q, G)) * 10.0 ** rng.integers(-20, 20)
    else:
        d = np.full((Q, G), 3.0, np.float32)
    return d, qp, gp, qc, gc


def assert_same(metrics: RankMetrics, expected, max_rank):
    cmc, mAP, mINP, firsts, aps = expected
    np.testing.assert_array_equal(metrics.first_rank, firsts)
    np.testing.assert_allclose(metrics.cmc, cmc[:max_rank], rtol=0, atol=1e-12)
    np.testing.assert_allclose(metrics.ap, aps, rtol=0, atol=1e-12)
    assert metrics.mAP == pytest.approx(mAP, abs=1e-12) and metrics.mINP == pytest.approx(mINP, abs=1e-12)


# --------------------------------------------------------------------------------------------- evaluate_rank
@settings(max_examples=400, deadline=None)
@given(problems(), st.integers(1, 5), st.integers(1, 12))
def test_evaluate_rank_matches_the_reference(problem, chunk_size, max_rank):
    expected = reference_rank(*problem, max_rank=max_rank)
    if expected is None:
        with pytest.raises(ValueError, match="no query has a valid true match"):
            evaluate_rank(*problem, max_rank=max_rank, chunk_size=chunk_size)
        return
    metrics = evaluate_rank(*problem, max_rank=max_rank, chunk_size=chunk_size)
    assert_same(metrics, expected, max_rank)
    assert 0 <= metrics.mAP <= 1 and 0 <= metrics.mINP <= 1
    assert np.all(np.diff(metrics.cmc) >= 0) and 0 <= metrics.cmc[0] and metrics.cmc[-1] <= 1
    assert metrics.num_valid + metrics.num_skipped == len(problem[0])


@settings(max_examples=100, deadline=None)
@given(problems(max_query=20, max_gallery=300))
def test_larger_problems_match_the_reference(problem):
    expected = reference_rank(*problem, max_rank=20)
    if expected is not None:
        assert_same(evaluate_rank(*problem, max_rank=20, chunk_size=7), expected, 20)


@settings(max_examples=200, deadline=None)
@given(problems(), st.data())
def test_permuting_the_gallery_changes_nothing_without_ties(problem, data):
    d, qp, gp, qc, gc = problem
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    d = rng.permuted(np.tile(np.arange(d.shape[1], dtype=np.float64), (len(d), 1)), axis=1)  # distinct in each row
    if reference_rank(d, qp, gp, qc, gc) is None:
        return
    perm = rng.permutation(d.shape[1])
    a, b = evaluate_rank(d, qp, gp, qc, gc), evaluate_rank(d[:, perm], qp, gp[perm], qc, gc[perm])
    np.testing.assert_array_equal(a.first_rank, b.first_rank)
    np.testing.assert_allclose(a.ap, b.ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.inp, b.inp, rtol=0, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(problems())
def test_a_perfect_distance_gives_map_one(problem):
    _, qp, gp, qc, gc = problem
    if reference_rank(*problem) is None:
        return
    perfect = np.where(qp[:, None] == gp[None, :], 0.0, 1.0)
    metrics = evaluate_rank(perfect, qp, gp, qc, gc, max_rank=5)
    assert metrics.mAP == 1 and metrics.mINP == 1 and np.all(metrics.cmc == 1)


def test_ties_are_broken_by_gallery_index_every_time():
    # all distances equal: the valid gallery ranks in index order
    gp, gc = np.array([3, 5, 4, 5, -1, 5, 4]), np.array([0, 0, 0, 1, 0, 0, 0])
    d = np.ones((1, 7), np.float32)
    # query pid 5, camera 0: entries 1 and 5 are same person + same camera, 4 is junk -> valid 0, 2, 3, 6
    metrics = [evaluate_rank(d, [5], gp, [0], gc, max_rank=4) for _ in range(3)]
    for m in metrics:
        assert m.first_rank.tolist() == [2] and m.ap[0] == pytest.approx(1 / 3)
    # a true match tied with negatives before and after it
    m = evaluate_rank(np.array([[1.0, 1.0, 1.0]]), [1], [2, 1, 2], [0], [1, 1, 1])
    assert m.first_rank.tolist() == [1]


@settings(max_examples=200, deadline=None)
@given(problems(), st.data())
def test_junk_never_counts(problem, data):
    d, qp, gp, qc, gc = problem
    junk = gp == -1
    if reference_rank(*problem) is None or not junk.any():
        return
    moved = d.copy()
    moved[:, junk] = data.draw(st.sampled_from([-1e9, 0.0, float(d.min()), 1e9]))
    a, b = evaluate_rank(d, qp, gp, qc, gc), evaluate_rank(moved, qp, gp, qc, gc)
    c = evaluate_rank(d[:, ~junk], qp, gp[~junk], qc, gc[~junk])            # or dropped altogether
    for other in (b, c):
        np.testing.assert_array_equal(a.first_rank, other.first_rank)
        np.testing.assert_allclose(a.ap, other.ap, rtol=0, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(problems(), st.data())
def test_same_person_same_camera_is_left_out(problem, data):
    d, qp, gp, qc, gc = problem
    if reference_rank(*problem) is None:
        return
    same = (qp[:, None] == gp[None, :]) & (qc[:, None] == gc[None, :])
    if not same.any():
        return
    moved = np.where(same, data.draw(st.sampled_from([-1e9, 0.0, 1e9])), d)
    a, b = evaluate_rank(d, qp, gp, qc, gc), evaluate_rank(moved, qp, gp, qc, gc)
    np.testing.assert_array_equal(a.first_rank, b.first_rank)
    np.testing.assert_allclose(a.ap, b.ap, rtol=0, atol=1e-12)


def test_distractors_are_negatives():
    gp, gc = np.array([1, 2, 1]), np.array([1, 1, 2])
    d = np.array([[0.5, 0.7, 0.9]])
    base = evaluate_rank(d, [1], gp, [0], gc)
    with_distractor = evaluate_rank(np.c_[d, [[0.1]]], [1], np.r_[gp, 0], [0], np.r_[gc, 0])
    assert base.first_rank.tolist() == [0] and with_distractor.first_rank.tolist() == [1]
    assert with_distractor.mAP < base.mAP


def test_as_dict_is_in_percent():
    m = evaluate_rank(np.array([[0.1, 0.2]]), [1], [1, 2], [0], [1, 1], max_rank=50)
    assert m.as_dict() == {"mAP": 100.0, "mINP": 100.0, "rank1": 100.0, "rank5": 100.0, "rank10": 100.0}
    assert list(evaluate_rank(np.array([[0.1, 0.2]]), [1], [1, 2], [0], [1, 1], max_rank=3).as_dict()) == ["mAP", "mINP", "rank1"]


def test_accepts_tensors_and_half_precision():
    d = torch.tensor([[0.3, 0.1, 0.2]], dtype=torch.float16)
    m = evaluate_rank(d, torch.tensor([1]), torch.tensor([1, 2, 1]), torch.tensor([0]), torch.tensor([1, 1, 1]))
    assert m.first_rank.tolist() == [1] and m.ap[0] == pytest.approx((1 / 2 + 2 / 3) / 2)


@pytest.mark.parametrize("call, message", [
    (lambda d: evaluate_rank(d, [1], [1, 2, 3], [0], [1, 1, 1]), "q_pids must hold one label per query"),
    (lambda d: evaluate_rank(d, [1, 2], [1, 2], [0, 0], [1, 1]), "g_pids must hold one label per gallery image"),
    (lambda d: evaluate_rank(d[:, :0], [1, 2], [], [0, 0], []), "the gallery is empty"),
    (lambda d: evaluate_rank(d[:0], [], [1, 2, 3], [], [1, 1, 1]), "the query set is empty"),
    (lambda d: evaluate_rank(d.ravel(), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1]), "(num_query, num_gallery) matrix"),
    (lambda d: evaluate_rank(np.where(d > 0.25, np.nan, d), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1]), "nan at (query 0, gallery 2)"),
    (lambda d: evaluate_rank(np.where(d > 0.55, np.inf, d), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1]), "inf at (query 1, gallery 2)"),
    (lambda d: evaluate_rank(d, [1.0, 2.0], [1, 2, 3], [0, 0], [1, 1, 1]), "q_pids must hold integers"),
    (lambda d: evaluate_rank(d, [7, 8], [1, 2, 3], [0, 0], [1, 1, 1]), "all 2 queries were skipped"),
    (lambda d: evaluate_rank(d, [1, 2], [1, 2, 3], [1, 1], [1, 1, 1]), "all 2 queries were skipped"),
    (lambda d: evaluate_rank(d, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1], max_rank=0), "max_rank must be a positive integer"),
])
def test_bad_input_says_what_is_wrong(call, message):
    d = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    with pytest.raises(ValueError) as err:
        call(d)
    assert message in str(err.value)


def test_protocol_masks():
    valid, match = protocol_masks([7], [1], [7, 3, 7, -1, 0], [1, 2, 2, 3, 1])
    assert valid.tolist() == [[False, True, True, False, True]] and match.tolist() == [[False, False, True, False, False]]


# --------------------------------------------------------------------------------------------- distances
def test_compute_distance_against_brute_force():
    g = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(9, 6, generator=g, dtype=torch.float64), torch.randn(13, 6, generator=g, dtype=torch.float64)
    brute = ((qf[:, None] - gf[None]) ** 2).sum(-1)
    torch.testing.assert_close(compute_distance(qf, gf, chunk_size=4), brute)
    cosine = 1 - (qf[:, None] * gf[None]).sum(-1) / qf.norm(dim=1)[:, None] / gf.norm(dim=1)[None]
    torch.testing.assert_close(compute_distance(qf, gf, "cosine", chunk_size=2), cosine)
    assert compute_distance(qf.float(), gf).dtype == torch.float32
    assert compute_distance(qf, qf).diagonal().abs().max() < 1e-12


@pytest.mark.parametrize("args, message", [
    ((torch.zeros(3, 4), torch.zeros(5, 3)), "same feature size, got 4 and 3"),
    ((torch.zeros(0, 4), torch.zeros(5, 4)), "qf is empty"),
    ((torch.zeros(3, 4), torch.zeros(0, 4)), "gf is empty"),
    ((torch.zeros(4), torch.zeros(5, 4)), "qf must be a (N, D) feature matrix"),
    ((torch.zeros(3, 4), torch.zeros(5, 4), "l1"), "metric must be one of"),
])
def test_compute_distance_errors(args, message):
    with pytest.raises(ValueError) as err:
        compute_distance(*args)
    assert message in str(err.value)


# --------------------------------------------------------------------------------------------- re-ranking
def random_distances(rng, Q, G, integer):
    feats = rng.integers(0, 3, (Q + G, 3)) if integer else rng.standard_normal((Q + G, 5))
    d = compute_distance(feats, feats).numpy()
    return d[:Q, Q:], d[:Q, :Q], d[Q:, Q:]


@pytest.mark.parametrize("seed", range(16))
def test_re_ranking_matches_the_loop_reference(seed):
    rng = np.random.default_rng(seed)
    Q, G = int(rng.integers(1, 7)), int(rng.integers(3, 26))
    q_g, q_q, g_g = random_distances(rng, Q, G, integer=seed % 2 == 1)   # odd seeds: integer features, many ties
    k1, k2, lam = int(rng.integers(1, 10)), int(rng.integers(1, 6)), float(rng.uniform(0, 1))
    if np.block([[q_q, q_g], [q_g.T, g_g]]).max(axis=0).min() == 0:
        pytest.skip("an image identical to all others")
    expected = reference_rerank(q_g, q_q, g_g, k1, k2, lam)
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, k1, k2, lam).numpy(), expected, rtol=0, atol=1e-5)


def test_re_ranking_blocks_change_nothing():
    rng = np.random.default_rng(0)
    q_g, q_q, g_g = random_distances(rng, 12, 60, integer=False)
    whole = re_ranking(q_g, q_q, g_g, k1=6, k2=3)
    tight = re_ranking_memory(12, 60, 6, 3, rows=3) / 2**30                             # three rows per block
    assert re_ranking_block(12, 60, 6, 3, tight) == 3 and re_ranking_block(12, 60, 6, 3) == 72
    torch.testing.assert_close(re_ranking(q_g, q_q, g_g, k1=6, k2=3, max_memory_gb=tight), whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(whole.numpy(), reference_rerank(q_g, q_q, g_g, 6, 3, 0.3), rtol=0, atol=1e-5)


def test_re_ranking_with_k2_equal_one_and_k1_beyond_n():
    rng = np.random.default_rng(1)
    q_g, q_q, g_g = random_distances(rng, 3, 5, integer=False)
    for k1, k2 in ((1, 1), (50, 1), (50, 20)):
        np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, k1, k2).numpy(), reference_rerank(q_g, q_q, g_g, k1, k2, 0.3),
                                   rtol=0, atol=1e-5)


def test_re_ranking_errors():
    rng = np.random.default_rng(2)
    q_g, q_q, g_g = random_distances(rng, 3, 5, integer=False)
    with pytest.raises(MemoryError, match="needs up to .* GiB besides its inputs, more than max_memory_gb=1e-06"):
        re_ranking(q_g, q_q, g_g, max_memory_gb=1e-6)
    for call, message in [
        (lambda: re_ranking(q_g, q_q[:2], g_g), "q_q must have shape (3, 3)"),
        (lambda: re_ranking(q_g, q_q, g_g.T[:4]), "g_g must have shape (5, 5)"),
        (lambda: re_ranking(q_g[:, :0], q_q, g_g), "non-empty (num_query, num_gallery)"),
        (lambda: re_ranking(q_g - 100, q_q, g_g), "q_g holds negative values"),
        (lambda: re_ranking(np.where(q_g > 1, np.nan, q_g), q_q, g_g), "q_g holds NaN or infinite values"),
        (lambda: re_ranking(q_g, q_q, g_g, k2=0), "k2 must be a positive integer"),
        (lambda: re_ranking(q_g, q_q, g_g, lambda_value=1.5), "lambda_value must lie in [0, 1]"),
        (lambda: re_ranking(np.zeros((1, 2)), np.zeros((1, 1)), np.zeros((2, 2))), "is at distance 0 from every image"),
    ]:
        with pytest.raises(ValueError) as err:
            call()
        assert message in str(err.value)


# --------------------------------------------------------------------------------------------- features and evaluate
class TwoBranches(torch.nn.Module):
    "Eval features: per-channel means of the left half (3) and the red mean of the whole image (1)."
    feature_dims = {"left": 3, "red": 1}

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * torch.cat([x[..., : x.shape[-1] // 2].mean(dim=(2, 3)), x[:, :1].mean(dim=(2, 3))], dim=1)


def loader_of(images, pids, camids, batch=3):
    return [(images[i : i + batch], pids[i : i + batch], camids[i : i + batch], [f"img{j}.jpg" for j in range(i, i + batch)])
            for i in range(0, len(images), batch)]


def test_extract_features_options_and_training_mode():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(7, 3, 6, 4, generator=g)
    model = TwoBranches().train()
    loader = loader_of(images, list(range(7)), [0] * 7)
    plain = extract_features(model, loader, progress=False)
    assert model.training
    torch.testing.assert_close(plain.features, model(images).detach())
    assert plain.pids.tolist() == list(range(7)) and plain.camids.dtype == torch.int64
    flipped = extract_features(model, loader, flip=True, progress=False).features
    torch.testing.assert_close(flipped, ((model(images) + model(images.flip(3))) / 2).detach())
    branch = extract_features(model, loader, normalize="branch", progress=False).features
    torch.testing.assert_close(branch[:, :3].norm(dim=1), torch.ones(7))
    torch.testing.assert_close(extract_features(model, loader, normalize="all", progress=False).features.norm(dim=1), torch.ones(7))
    assert not plain.features.requires_grad


def test_extract_features_restores_the_mode_after_an_error():
    model = TwoBranches().train()
    bad = [(torch.rand(2, 3, 6, 4), [1, 2], [0, 0]), (torch.rand(2, 3, 6, 4), [1], [0, 0])]
    with pytest.raises(ValueError, match="batch 1: 2 images but 1 pids"):
        extract_features(model, bad, progress=False)
    assert model.training


def test_evaluate_end_to_end_and_plots(tmp_path):
    g = torch.Generator().manual_seed(0)
    # person p's images have a distinct colour; cameras alternate so that every query has a cross-camera match
    colours = torch.rand(5, 3, 1, 1, generator=g)
    def images(pids):
        return colours[pids].expand(-1, 3, 8, 4) + 0.05 * torch.rand(len(pids), 3, 8, 4, generator=g)
    q_pids, g_pids = torch.arange(5), torch.arange(5).repeat(3)
    q_loader = loader_of(images(q_pids), q_pids, torch.zeros(5, dtype=torch.long))
    g_loader = loader_of(images(g_pids), g_pids, torch.arange(15) % 2)
    result = evaluate(TwoBranches(), q_loader, g_loader, flip=True, normalize="branch", progress=False)
    assert list(result) == ["mAP", "mINP", "rank1", "rank5", "rank10"]
    assert result["rank1"] == 100.0 and result["mAP"] == 100.0
    run = evaluate_distances(TwoBranches(), q_loader, g_loader, flip=True, normalize="branch", progress=False)
    assert run.metrics.as_dict() == result and run.distmat.shape == (5, 15)
    assert not (tmp_path / "plots").exists()                                    # evaluation writes nothing
    save_evaluation_plots(tmp_path / "plots", run.distmat, run.query.pids, run.gallery.pids, run.query.camids,
                          run.gallery.camids, run.metrics, [np.zeros((8, 4, 3))] * 5, [np.ones((8, 4, 3))] * 15)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["cmc.png", "distances.png", "ranked_lists.png"]
    reranked = evaluate(TwoBranches(), q_loader, g_loader, metric="cosine", rerank=True, k1=3, k2=2, progress=False)
    assert all(0 <= v <= 100 for v in reranked.values())


def test_plot_helpers(tmp_path):
    d = np.array([[0.1, 0.5, 0.3], [0.2, 0.4, 0.9]])
    positive, negative, edges = distance_histograms(d, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1], bins=4)
    assert positive.sum() == 2 and negative.sum() == 4 and len(edges) == 5
    fig = plot_ranked_lists(d, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1], [np.zeros((8, 4, 3))] * 2,
                            [np.ones((8, 4, 3))] * 3, topk=2)
    assert len(fig.axes) == 2 * 3
    written = save_evaluation_plots(tmp_path, d, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    assert sorted(written) == ["cmc", "distances"] and all(p.read_bytes()[:4] == b"\x89PNG" for p in written.values())
    with pytest.raises(ValueError, match="queries must be indices in 0 … 1"):
        plot_ranked_lists(d, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1], [None] * 2, [None] * 3, queries=[5])


def test_re_ranking_clamps_rounding_negatives_and_refuses_real_ones():
    rng = np.random.default_rng(5)
    q_g, q_q, g_g = random_distances(rng, 4, 6, integer=False)
    q_q, g_g = q_q.copy(), g_g.copy()
    np.fill_diagonal(q_q, 0.0)
    np.fill_diagonal(g_g, 0.0)
    exact = re_ranking(q_g, q_q, g_g)
    noisy_q_q, noisy_g_g = q_q.copy(), g_g.copy()
    np.fill_diagonal(noisy_q_q, -1e-7)                 # what squared distances through dot products give
    np.fill_diagonal(noisy_g_g, -3e-7)
    assert torch.equal(re_ranking(q_g, noisy_q_q, noisy_g_g), exact)
    with pytest.raises(ValueError, match=r"g_g holds negative values \(down to -0.5\)"):
        np.fill_diagonal(noisy_g_g, -0.5)
        re_ranking(q_g, q_q, noisy_g_g)


def test_re_ranking_still_imports_from_evaluate_where_users_imported_it():
    from deepminer.evaluate import re_ranking
    from deepminer.rerank import re_ranking as moved
    assert re_ranking is moved
