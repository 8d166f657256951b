"Property tests for the Erasing Operation, eq. (1) (deepminer.erase)."
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from deepminer.erase import ErO, erase_mask, normalized_activation

# feature maps (B, C, H, W) with finite values, small enough for many examples
shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))
values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
feature_maps = shapes.flatmap(lambda s: arrays("float32", s, elements=values)).map(torch.from_numpy)
taus = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(feature_maps, taus)
def test_mask_is_binary_with_one_channel(y, tau):
    m = erase_mask(y, tau)
    assert m.shape == (y.shape[0], 1, *y.shape[2:])
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert not m.requires_grad


@settings(max_examples=200, deadline=None)
@given(feature_maps)
def test_tau_one_erases_nothing(y):
    assert bool((erase_mask(y, 1.0) == 1).all())


@settings(max_examples=200, deadline=None)
@given(feature_maps, taus, taus)
def test_erased_fraction_never_grows_with_tau(y, t1, t2):
    low, high = sorted((t1, t2))
    kept_low, kept_high = erase_mask(y, low), erase_mask(y, high)
    assert bool((kept_high >= kept_low).all())  # pointwise: whatever survives a low threshold survives a higher one
    assert (1 - kept_high).sum() <= (1 - kept_low).sum()


@settings(max_examples=200, deadline=None)
@given(feature_maps, taus)
def test_erased_equals_input_where_kept_and_zero_elsewhere(y, tau):
    erased, m = ErO(tau)(y, return_mask=True)
    keep = m.expand_as(y).bool()
    assert torch.equal(erased[keep], y[keep])
    assert bool((erased[~keep] == 0).all())


# integer maps with 1, 2 or 4 channels: their channel means are exact in float32, so a float64 reference can be exact too
exact_shapes = st.tuples(st.integers(1, 3), st.sampled_from([1, 2, 4]), st.integers(1, 6), st.integers(1, 6))
exact_maps = exact_shapes.flatmap(lambda s: arrays("int32", s, elements=st.integers(-100, 100))).map(
    lambda a: torch.from_numpy(a).float())


@settings(max_examples=300, deadline=None)
@given(st.one_of(feature_maps, exact_maps), taus)
def test_normalized_map_in_unit_range_never_nan(y, tau):
    yn = normalized_activation(y)
    assert not bool(yn.isnan().any())
    assert bool(((yn >= 0) & (yn <= 1)).all())


@settings(max_examples=300, deadline=None)
@given(exact_maps, taus)
def test_mask_follows_eq1(y, tau):
    # eq. (1) written directly, one sample at a time
    for b in range(y.shape[0]):
        mean = y[b].double().mean(0)
        lo, hi = mean.min(), mean.max()
        if hi == lo:
            expected = torch.ones_like(mean)  # constant map: nothing to erase
        else:
            expected = ((mean - lo) / (hi - lo) <= tau).double()
        got = erase_mask(y[b : b + 1], tau)[0, 0].double()
        # float32 vs float64 can only disagree on positions that sit on the threshold itself
        near = ((mean - lo) / (hi - lo) - tau).abs() < 1e-5 if hi != lo else torch.zeros_like(mean, dtype=torch.bool)
        assert torch.equal(got[~near], expected[~near])


@settings(max_examples=50, deadline=None)
@given(st.floats(-1e3, 1e3, allow_nan=False), taus)
def test_constant_map_erases_nothing(value, tau):
    assert bool((erase_mask(torch.full((2, 3, 4, 5), value), tau) == 1).all())


@pytest.mark.parametrize("tau", [-0.01, 1.01, math.nan, math.inf])
def test_tau_out_of_range_is_an_error(tau):
    with pytest.raises(ValueError, match="tau must lie in"):
        erase_mask(torch.zeros(1, 1, 2, 2), tau)
    with pytest.raises(ValueError, match="tau must lie in"):
        ErO(tau)


def test_gradient_flows_through_y_only_where_kept():
    y = torch.randn(2, 8, 6, 4, requires_grad=True)
    erased, m = ErO(0.5)(y, return_mask=True)
    (erased * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
    assert torch.equal(y.grad, m.expand_as(y) * torch.arange(y.numel()).reshape(y.shape))
