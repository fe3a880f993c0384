import pytest
import torch

from gpusq_mm.distillation import (
    feature_loss,
    kl_div_sigmoid,
    kl_div_softmax,
    masked_mean,
)


def test_kl_softmax_zero_at_equality_and_positive():
    torch.manual_seed(0)
    a, b = torch.randn(4, 7), torch.randn(4, 7)
    assert kl_div_softmax(a, a.clone(), 2.0).abs() < 1e-6
    assert kl_div_softmax(a, b, 2.0) > 0


def test_kl_softmax_matches_torch_and_scales_with_t2():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    ref = torch.nn.functional.kl_div(
        torch.log_softmax(s / 4, -1),
        torch.log_softmax(t / 4, -1),
        log_target=True,
        reduction='batchmean',
    )
    assert torch.allclose(kl_div_softmax(s, t, 4.0), ref * 16, atol=1e-6)


def test_kl_softmax_mask_ignores_positions():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    t2 = t.clone()
    t2[:, :, 2:] = 100.0  # only ignored pixels change
    a = kl_div_softmax(s, t, 1.0, dim=1, mask=mask)
    b = kl_div_softmax(s, t2, 1.0, dim=1, mask=mask)
    assert torch.allclose(a, b)


def test_kl_sigmoid_zero_at_equality_and_gradient():
    s = torch.randn(3, 5, requires_grad=True)
    assert kl_div_sigmoid(s, s.detach(), 2.0).abs() < 1e-6
    loss = kl_div_sigmoid(s, torch.randn(3, 5), 2.0)
    loss.backward()
    assert loss > 0 and s.grad is not None


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match='differ'):
        kl_div_softmax(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match='differ'):
        feature_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_feature_losses():
    t = torch.randn(2, 8, 4, 4)
    assert feature_loss(t, t) == 0
    assert torch.allclose(feature_loss(t + 1, t), torch.tensor(1.0))
    # nmse is scale free
    a = feature_loss(2 * t, t, 'nmse')
    b = feature_loss(20 * t, 10 * t, 'nmse')
    assert torch.allclose(a, b, rtol=1e-4)
    with pytest.raises(ValueError):
        feature_loss(t, t, 'l1')


def test_masked_mean_empty_mask_is_zero():
    v = torch.ones(3, requires_grad=True)
    out = masked_mean(v, torch.zeros(3, dtype=torch.bool))
    assert out == 0 and out.requires_grad
