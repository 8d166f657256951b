"Losses of §3.5 (deepminer.losses) against direct, slow formulas on random inputs."
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from deepminer.losses import CenterLoss, DeepMinerLoss, id_loss, pairwise_distances, smoothed_targets, triplet_loss

batch_shapes = st.tuples(st.integers(2, 6), st.integers(1, 4), st.integers(1, 12), st.integers(0, 2**16))  # P, K, D, seed


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(2, 20), st.floats(0.0, 0.9), st.integers(0, 2**16))
def test_id_loss_is_eqs_3_and_4(batch, classes, epsilon, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=g) * 3
    labels = torch.randint(classes, (batch,), generator=g)
    q = smoothed_targets(labels, classes, epsilon)
    slow = sum(-(q[b, i] * torch.log_softmax(logits[b], 0)[i]) for b in range(batch) for i in range(classes)) / batch
    assert torch.allclose(id_loss(logits, labels, epsilon), slow, atol=1e-5)
    assert torch.allclose(id_loss(logits, labels, epsilon), F.cross_entropy(logits, labels, label_smoothing=epsilon), atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(batch_shapes)
def test_triplet_is_eq_5(shape):
    P, K, D, seed = shape
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(P * K, D, generator=g)
    labels = torch.arange(P).repeat_interleave(K)[torch.randperm(P * K, generator=g)]
    slow = 0.0
    for a in range(P * K):
        hardest_pos = max(float(torch.linalg.vector_norm(f[a] - f[p])) for p in range(P * K) if labels[p] == labels[a])
        hardest_neg = min(float(torch.linalg.vector_norm(f[a] - f[n])) for n in range(P * K) if labels[n] != labels[a])
        slow += float(F.softplus(torch.tensor(hardest_pos - hardest_neg)))
    assert abs(float(triplet_loss(f, labels, reduction="sum")) - slow) < 1e-3 * max(1.0, slow)
    assert abs(float(triplet_loss(f, labels)) - slow / (P * K)) < 1e-4 * max(1.0, slow)


@settings(max_examples=30, deadline=None)
@given(batch_shapes)
def test_triplet_ignores_batch_order_and_has_finite_gradients(shape):
    P, K, D, seed = shape
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(P * K, D, generator=g)
    f[1] = f[0]  # a coincident pair: the distance gradient must stay finite
    labels = torch.arange(P).repeat_interleave(K)
    perm = torch.randperm(P * K, generator=g)
    assert torch.allclose(triplet_loss(f, labels), triplet_loss(f[perm], labels[perm]), atol=1e-6)
    x = f.clone().requires_grad_()
    triplet_loss(x, labels).backward()
    assert torch.isfinite(x.grad).all()


def test_pairwise_distances_match_cdist():
    f = torch.randn(10, 7)
    assert torch.allclose(pairwise_distances(f), torch.cdist(f, f), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(batch_shapes)
def test_center_loss_is_batch_mean_of_squared_distances(shape):
    P, K, D, seed = shape
    torch.manual_seed(seed)
    loss = CenterLoss(P, D)
    f = torch.randn(P * K, D)
    labels = torch.arange(P).repeat_interleave(K)
    slow = sum(float(((f[b] - loss.centers[labels[b]].detach()) ** 2).sum()) for b in range(P * K)) / (P * K)
    assert abs(float(loss(f, labels).detach()) - slow) < 1e-4 * max(1.0, slow)


def test_total_is_eq_2_summed_over_branches():
    torch.manual_seed(0)
    dims = {"global": 6, "ie1": 6, "local": 12}
    criterion = DeepMinerLoss(3, dims, epsilon=0.1, center_weight=0.01)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    outputs = {name: (torch.randn(6, d), torch.randn(6, 3)) for name, d in dims.items()}
    total, terms = criterion(outputs, labels)
    expected = 0.0
    for name, (features, logits) in outputs.items():
        expected += (F.cross_entropy(logits, labels, label_smoothing=0.1) + triplet_loss(features, labels)
                     + 0.01 * ((features - criterion.centers[name].centers[labels]) ** 2).sum(1).mean())
    assert torch.allclose(total, expected, atol=1e-5)
    assert set(terms) == {f"{b}/{t}" for b in dims for t in ("id", "triplet", "center")}
    assert all(not t.requires_grad for t in terms.values())
