"""Fake quantization and calibration of the quantization core (CPU)."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpusq_mm.quantization import (
    CALIB_METHODS,
    GPUSQTensorQuantizer,
    calibrate,
    enable_fake_quant,
    mse_amax,
    quantize_model,
    quantizers,
)


def _hand_quant(x, amax, bits):
    """Reference: scale = amax / (2**(b-1) - 1), integers in [-2**(b-1),
    2**(b-1) - 1], as pytorch-quantization defines it."""
    bound = 2 ** (bits - 1) - 1
    scale = amax / bound
    return torch.clamp(torch.round(x / scale), -bound - 1, bound) * scale


@pytest.mark.parametrize('fast', [True, False])
@pytest.mark.parametrize('kind', ['linear', 'conv'])
def test_fake_quant_layer_equals_hand_computation(kind, fast):
    torch.manual_seed(0)
    if kind == 'linear':
        layer, x = nn.Linear(8, 4), torch.randn(5, 8) * 3
    else:
        layer, x = nn.Conv2d(4, 6, 3, padding=1), torch.randn(2, 4, 5, 5)
    quantize_model(
        nn.Sequential(layer),
        dict(fast_fake_quant=fast, use_default_exclude=False),
    )
    a_amax = 2.0  # some inputs clip
    w_amax = layer.weight.detach().abs().flatten(1).amax(1) * 0.9
    layer._input_quantizer.set_amax(torch.tensor(a_amax))
    layer._weight_quantizer.set_amax(w_amax)
    enable_fake_quant(layer)
    shape = [-1] + [1] * (layer.weight.dim() - 1)
    qw = _hand_quant(layer.weight.detach(), w_amax.view(shape), 8)
    qx = _hand_quant(x, torch.tensor(a_amax), 8)
    if kind == 'linear':
        expected = F.linear(qx, qw, layer.bias)
    else:
        expected = F.conv2d(qx, qw, layer.bias, padding=1)
    out = layer(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # the quantized operands themselves are on the grid
    q_in = layer._input_quantizer(x)
    torch.testing.assert_close(q_in, qx, rtol=0, atol=1e-6)
    assert q_in.unique().numel() <= 256


def test_int4_weight_grid_and_mask():
    layer = nn.Linear(16, 3)
    mask = torch.zeros_like(layer.weight, dtype=torch.bool)
    mask[:, ::2] = True
    layer.register_buffer('sparsity_mask', mask)
    quantize_model(nn.Sequential(layer), dict(w_bits=4))
    wq = layer._weight_quantizer
    wq.set_amax(layer.weight.detach().abs().amax(1))
    wq.enable()
    q = wq(layer.weight * layer.sparsity_mask)
    for row in q:
        assert row.unique().numel() <= 16
    # fake quantization sees the masked weight even if the dense weight is
    # not zeroed yet: pruned weights give exact zeros and no gradient
    captured = {}
    orig = wq.fake_quant

    def spy(w, mask=None):
        captured['q'] = orig(w, mask)
        return captured['q']

    wq.fake_quant = spy
    layer(torch.randn(2, 16)).sum().backward()
    assert not captured['q'][~mask].any()
    assert captured['q'][mask].any()
    assert not layer.weight.grad[~mask].any()
    assert layer.weight.grad[mask].any()


def test_straight_through_gradient_is_clipped():
    q = GPUSQTensorQuantizer(8)
    q.set_amax(torch.tensor(1.0))
    q.enable()
    x = torch.tensor(
        [-2.0, -1.0, -0.3, 0.0, 0.7, 1.0, 1.5], requires_grad=True
    )
    q(x).backward(torch.full_like(x, 3.0))
    assert x.grad.tolist() == [0.0, 3.0, 3.0, 3.0, 3.0, 3.0, 0.0]


@pytest.mark.parametrize('method', CALIB_METHODS)
def test_every_calibration_method_gives_finite_amax_on_cpu(method):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)
    )
    quantize_model(model, dict(use_default_exclude=False))
    batches = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    report = calibrate(
        model,
        model,
        batches,
        calib=dict(method=method, num_bins=512, start_bin=64),
    )
    assert report == dict(
        batches=3, inputs=2, weights=2, unseen=[], method=method
    )
    seen = max(b.abs().max() for b in batches)
    for name, q in quantizers(model).items():
        assert q.calibrated, name
        amax = q.amax
        assert torch.isfinite(amax).all() and (amax > 0).all(), name
    first = model[0]._input_quantizer.amax
    assert first <= seen + 1e-6
    if method == 'max':
        assert first == seen
    assert enable_fake_quant(model) == 4
    assert torch.isfinite(model(batches[0])).all()


def test_mse_amax_prefers_clipping_outliers():
    # ~1e6 values spread over [0, 1] and one outlier at 10: the
    # MSE-optimal range clips the outlier
    edges = torch.linspace(0, 10, 2049).numpy()
    hist = torch.zeros(2048)
    hist[:205] = 5000
    hist[-1] = 1
    amax = float(mse_amax(hist.numpy(), edges, 8, start_bin=16))
    assert 0.9 < amax < 5
    # and without the bulk it keeps the outlier
    hist[:205] = 1
    assert float(mse_amax(hist.numpy(), edges, 8, start_bin=16)) > 9
    assert math.isfinite(amax)


def test_quantizer_state_is_in_buffers():
    q = GPUSQTensorQuantizer(8, axis=0, amax_shape=(3, 1))
    assert set(q.state_dict()) == {'_amax', '_calibrated', '_enabled'}
    assert not q.enabled and not q.calibrated
    q.set_amax(torch.tensor([1.0, 2.0, 3.0]))
    q.enable()
    fresh = GPUSQTensorQuantizer(8, axis=0, amax_shape=(3, 1))
    fresh.load_state_dict(q.state_dict())
    assert fresh.enabled and fresh.calibrated
    assert torch.equal(fresh.amax, q.amax)
    x = torch.randn(3, 5)
    assert torch.equal(fresh(x), q(x))
    with pytest.raises(ValueError):
        q.set_amax(torch.ones(4))
