"""Loss terms against independent computations (docs/method.md#training)."""
import math

import numpy as np
import pytest
import torch

import cadyq_plugin  # noqa: F401
from cadyq_plugin.losses import ATLoss, BitLoss, attention_map


def numpy_at(xs, xt):
    """Attention transfer written out in numpy, sample by sample."""
    total = 0.0
    for s, t in zip(xs, xt):
        a = (s**2).mean(axis=0).ravel()
        b = (t**2).mean(axis=0).ravel()
        a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
        total += ((a - b)**2).sum()
    return total / (xs.shape[0] * xs.shape[2] * xs.shape[3])


def test_attention_map_is_unit_norm_per_sample():
    a = attention_map(torch.randn(3, 5, 4, 6))
    assert a.shape == (3, 24)
    assert torch.allclose(a.norm(dim=1), torch.ones(3))


def test_at_loss_matches_numpy():
    torch.manual_seed(0)
    body_s, body_t = torch.randn(2, 8, 6, 5), torch.randn(2, 8, 6, 5)
    feats_s = [torch.randn(2, 8, 6, 5) for _ in range(3)]
    feats_t = [torch.randn(2, 8, 6, 5) for _ in range(3)]
    loss = ATLoss(loss_weight=1e3, feature_weight=0.1)(body_s, body_t, feats_s, feats_t)
    expected = 1e3 * numpy_at(body_s.numpy(), body_t.numpy()) + 0.1 * 1e3 * sum(
        numpy_at(s.numpy(), t.numpy()) for s, t in zip(feats_s, feats_t))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert ATLoss()(body_s, body_s, feats_s, feats_s).item() == 0.0


def test_at_loss_refuses_different_backbones():
    with pytest.raises(ValueError, match='same backbone'):
        ATLoss()(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 3, 3), [torch.ones(1, 2, 3, 3)], [])


@pytest.mark.parametrize('it', [0, 1, 999, 1000, 1001, 150000])
def test_bit_loss_weight_grows(it):
    loss = BitLoss(loss_weight=1e-4, growth=1e-6, growth_every=1000)
    assert loss.weight(it) == pytest.approx(1e-4 + 1e-6 * math.ceil(it / 1000))


def test_bit_loss_sums_over_the_batch():
    weighted = torch.tensor([30.0, 34.0])
    assert BitLoss()(weighted, 1000).item() == pytest.approx((1e-4 + 1e-6) * 64)
    assert BitLoss(reduction='mean')(weighted, 1000).item() == pytest.approx((1e-4 + 1e-6) * 32)
