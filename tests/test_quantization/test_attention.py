"""Optional quantization of the attention matmul operands (q, k, v, attn)."""

import copy

import pytest
import torch

from gpusq_mm.quantization import (
    calibrate,
    disable_fake_quant,
    enable_fake_quant,
    quantize_model,
    quantizers,
    select_attention,
)

SWIN = dict(
    embed_dims=16,
    depths=(1, 1),
    num_heads=(1, 2),
    window_size=2,
    mlp_ratio=2,
    out_indices=(0, 1),
)


def _mmdet_swin(seed=0):
    from mmdet.registry import MODELS

    torch.manual_seed(seed)
    return MODELS.build(dict(type='mmdet.SwinTransformer', **SWIN))


def _quantized(seed=0, **cfg):
    model = _mmdet_swin(seed)
    names = quantize_model(model, dict(quantize_attention=True, **cfg))
    return model, names


def _capture(module, store):
    def hook(mod, args, output):
        store.append(output.detach().clone())

    return module.register_forward_hook(hook)


def _on_grid(values, amax, bits=8):
    """Whether ``values`` are integers times ``amax / (2**(bits-1)-1)``."""
    step = amax / (2 ** (bits - 1) - 1)
    q = values / step
    return bool(torch.allclose(q, q.round(), atol=1e-3)) and bool(
        (q.round().abs() <= 2 ** (bits - 1)).all()
    )


def test_window_attention_of_every_swin_is_found():
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS as CLS_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    det = _mmdet_swin()
    names = select_attention(det)
    assert names == [
        'stages.0.blocks.0.attn.w_msa',
        'stages.1.blocks.0.attn.w_msa',
    ]
    with DefaultScope.overwrite_default_scope('mmseg'):
        seg = SEG_MODELS.build(dict(type='mmseg.SwinTransformer', **SWIN))
    assert len(select_attention(seg)) == 2
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        cls = CLS_MODELS.build(
            dict(
                type='mmpretrain.SwinTransformer',
                arch=dict(
                    embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2]
                ),
                img_size=32,
                window_size=4,
            )
        )
    assert len(select_attention(cls)) == 4
    # the skip regexes apply to attention modules too
    assert select_attention(det, dict(exclude=[r'stages\.1\.'])) == [names[0]]
    # off by default
    plain = _mmdet_swin()
    quantize_model(plain)
    assert not any('_q_quantizer' in n for n in quantizers(plain))


def test_operands_fake_quantized_after_calibration_and_off_before():
    model, layers = _quantized()
    ref = _mmdet_swin()
    ref.load_state_dict(
        {k: v for k, v in model.state_dict().items() if 'quantizer' not in k},
        strict=True,
    )
    qs = quantizers(model)
    assert len(qs) == 2 * len(layers) + 4 * 2
    x = torch.randn(2, 3, 16, 16)
    ref.eval()
    model.eval()
    with torch.no_grad():  # quantizers off: exactly the FP model
        for a, b in zip(model(x), ref(x)):
            assert torch.equal(a, b)
    report = calibrate(model, model, [x], calib=dict(method='max'))
    assert report['inputs'] == len(layers) + 4 * 2 and not report['unseen']
    enable_fake_quant(model)
    w_msa = model.stages[0].blocks[0].attn.w_msa
    probs, qkv = [], []
    handles = [_capture(w_msa.softmax, probs), _capture(w_msa.qkv, qkv)]
    with torch.no_grad():
        outs = model(x)
    for h in handles:
        h.remove()
    amax = w_msa.softmax._output_quantizer._amax
    assert 0.0 < float(amax) <= 1.0  # probabilities
    assert _on_grid(probs[0], amax)
    for part, name in zip(qkv[0].chunk(3, -1), ('_q', '_k', '_v')):
        q_amax = getattr(w_msa.qkv, f'{name}_quantizer')._amax
        assert _on_grid(part, q_amax), name
    assert all(torch.isfinite(o).all() for o in outs)
    # and they train: gradients reach qkv through the attention quantizers
    model.train()
    sum(o.mean() for o in model(x)).backward()
    grad = w_msa.qkv.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_state_restores_and_copies_are_independent():
    model, _ = _quantized()
    x = torch.randn(2, 3, 16, 16)
    calibrate(model, model, [x], calib=dict(method='percentile'))
    enable_fake_quant(model)
    model.eval()
    fresh, _ = _quantized(seed=1)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.eval()
    for name, q in quantizers(fresh).items():
        ref = quantizers(model)[name]
        assert torch.equal(q._amax, ref._amax), name
        assert q.enabled == ref.enabled, name
    with torch.no_grad():
        for a, b in zip(fresh(x), model(x)):
            assert torch.equal(a, b)
    # a deep copy (the QAT-teacher snapshot) runs its own quantizers
    snapshot = copy.deepcopy(model)
    disable_fake_quant(snapshot)
    probs = []
    w_msa = model.stages[0].blocks[0].attn.w_msa
    h = _capture(w_msa.softmax, probs)
    with torch.no_grad():
        model(x)
    h.remove()
    assert _on_grid(probs[0], w_msa.softmax._output_quantizer._amax)
    snap_probs = []
    h = _capture(snapshot.stages[0].blocks[0].attn.w_msa.softmax, snap_probs)
    with torch.no_grad():
        snapshot(x)
    h.remove()
    assert not _on_grid(snap_probs[0], w_msa.softmax._output_quantizer._amax)


def test_quantizing_twice_adds_nothing():
    model, _ = _quantized()
    before = sorted(quantizers(model))
    quantize_model(model, dict(quantize_attention=True))
    assert sorted(quantizers(model)) == before
    w_msa = model.stages[0].blocks[0].attn.w_msa
    assert len(w_msa.qkv._forward_hooks) == 1
    assert len(w_msa.softmax._forward_hooks) == 1


def test_misspelt_option_fails():
    with pytest.raises(KeyError, match='quantize_attn'):
        quantize_model(_mmdet_swin(), dict(quantize_attn=True))
