"SAM and CHAM (deepminer.attention): the fused affinity equals the explicit formulation at the paper's sizes."
import pytest
import torch

from deepminer.attention import CHAM, SAM, Attention


def sam_explicit(sam, y):
    "SAM(Y) = Y + γ·BN(Y Fᵀ) with F = softmax(AᵀB) written out as a D×D matrix."
    n, c, h, w = y.shape
    a = sam.query(y).flatten(2)                 # (B, C/8, D)
    b = sam.key(y).flatten(2)                   # (B, C/8, D)
    f = torch.softmax(a.transpose(1, 2) @ b, dim=-1)  # (B, D, D): row p = query position p
    out = torch.einsum("bpq,bcq->bcp", f, y.flatten(2)).reshape(n, c, h, w)
    return y + sam.gamma * sam.bn(out)


@pytest.mark.parametrize("channels, height, width", [(512, 48, 16), (1024, 24, 8), (64, 7, 3), (8, 1, 1)])
@pytest.mark.parametrize("train", [True, False])
def test_sam_fused_equals_explicit(channels, height, width, train):
    torch.manual_seed(0)
    sam = SAM(channels).train(train)
    with torch.no_grad():
        sam.gamma.fill_(0.8)
        for conv in (sam.query, sam.key):
            conv.weight.mul_(0.1)  # keep the un-scaled logits in a range where float32 softmax is well conditioned
        y = torch.randn(2, channels, height, width)
        assert torch.allclose(sam(y), sam_explicit(sam, y), atol=1e-4, rtol=1e-4)


def test_sam_starts_as_identity_and_affinity_rows_sum_to_one():
    y = torch.randn(2, 32, 6, 4)
    sam = SAM(32)
    with torch.no_grad():
        assert torch.equal(sam(y), y)
        f = sam.affinity(y)
    assert f.shape == (2, 24, 24)
    assert torch.allclose(f.sum(-1), torch.ones(2, 24))


def test_cham_gates():
    z = torch.randn(2, 32, 5, 3)
    sig, soft = CHAM(32), CHAM(32, gate="softmax")
    with torch.no_grad():
        assert torch.allclose(sig(z), z * torch.sigmoid(sig.excite(torch.relu(sig.squeeze(z)))))
        assert torch.allclose(soft.weights(z).sum(1), torch.ones(2, 5, 3))


def test_attention_is_cham_after_sam_and_gradients_flow():
    att = Attention(32)
    with torch.no_grad():
        att.sam.gamma.fill_(0.5)
    y = torch.randn(2, 32, 6, 4, requires_grad=True)
    out = att(y)
    assert torch.allclose(out, att.cham(att.sam(y)))
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in att.parameters() if p.requires_grad)
    assert y.grad is not None


def test_too_few_channels_is_an_error():
    with pytest.raises(ValueError, match="at least reduction"):
        SAM(4)
    with pytest.raises(ValueError, match="at least reduction"):
        CHAM(8)
