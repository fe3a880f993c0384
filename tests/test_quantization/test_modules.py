"""The in-place module swap: parameters, buffers, registry-built layers."""

import copy

import pytest
import torch
import torch.nn as nn
from pytorch_quantization import nn as quant_nn

from gpusq_mm.quantization import (
    calibrate,
    enable_fake_quant,
    is_quantized,
    quantize_model,
    quantized_layers,
    quantizers,
    select_quant_layers,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        from mmcv.cnn import ConvModule
        from mmcv.cnn.bricks.wrappers import Linear as MMCVLinear

        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv2d(3, 16, 2, stride=2)
        self.conv = ConvModule(16, 16, 3, padding=1)  # mmcv registry conv
        self.fc1 = MMCVLinear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Module()
        self.head.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.conv(self.patch_embed.projection(x)).mean((2, 3))
        return self.head.fc(self.fc2(torch.relu(self.fc1(x))))


def test_swap_keeps_parameters_buffers_attributes_and_output():
    torch.manual_seed(0)
    net = Net()
    fc1 = net.fc1
    fc1.register_buffer('sparsity_mask', torch.ones(32, 16, dtype=torch.bool))
    fc1.extra_note = 'kept'
    params = dict(net.named_parameters())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    old_cls = type(net.conv.conv)
    names = quantize_model(net)
    assert names == ['conv.conv', 'fc1', 'fc2']  # defaults skip the rest
    assert not is_quantized(net.patch_embed.projection)
    assert not is_quantized(net.head.fc)
    assert net.fc1 is fc1 and fc1.extra_note == 'kept'
    assert 'sparsity_mask' in fc1._buffers
    for name, p in net.named_parameters():
        assert p is params[name], name  # the optimizer stays valid
    assert isinstance(fc1, quant_nn.QuantLinear)
    assert type(fc1).__mro__[1:].count(type(fc1)._gpusq_orig_cls) == 1
    assert isinstance(net.conv.conv, quant_nn.QuantConv2d)
    assert isinstance(net.conv.conv, old_cls)
    assert torch.equal(net(x), before)  # quantizers start disabled
    keys = net.state_dict().keys()
    for name in names:
        for q in ('_input_quantizer', '_weight_quantizer'):
            for buf in ('_amax', '_calibrated', '_enabled'):
                assert f'{name}.{q}.{buf}' in keys
    net(x).sum().backward()
    optimizer.step()
    # a second call changes nothing
    assert quantize_model(net) == names
    assert len(quantizers(net)) == 6


def test_checkpoint_loads_into_fresh_model_and_runs_fake_quantized():
    torch.manual_seed(0)
    net = Net()
    quantize_model(net)
    x = torch.randn(2, 3, 8, 8)
    calibrate(net, net, [x], calib=dict(method='max'))
    enable_fake_quant(net)
    fresh = Net()
    quantize_model(fresh)
    fresh.load_state_dict(net.state_dict())  # strict: same keys
    assert all(q.enabled for q in quantizers(fresh).values())
    assert torch.equal(fresh(x), net(x))
    copied = copy.deepcopy(net)  # e.g. a teacher snapshot
    assert torch.equal(copied(x), net(x))


def test_skip_lists_by_name_and_type():
    net = Net()
    names = select_quant_layers(
        net, dict(exclude=[r'^fc2$'], exclude_types=['ConvModule', 'Conv2d'])
    )
    assert names == ['fc1']
    names = select_quant_layers(net, dict(use_default_exclude=False))
    assert 'patch_embed.projection' in names and 'head.fc' in names
    with pytest.raises(KeyError):
        quantize_model(net, dict(w_bit=8))  # typo fails early


def test_mmdet_swin_from_registry_is_swapped():
    from mmdet.registry import MODELS

    backbone = MODELS.build(
        dict(
            type='mmdet.SwinTransformer',
            embed_dims=16,
            depths=(1, 1),
            num_heads=(1, 2),
            window_size=2,
            mlp_ratio=2,
            out_indices=(0, 1),
        )
    )
    linears = [
        n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)
    ]
    names = quantize_model(backbone)
    # every Linear (mmcv's FFN Linear, attention qkv / proj, patch merging)
    assert sorted(names) == sorted(linears)
    assert any('ffn.layers' in n for n in names)
    assert 'patch_embed.projection' not in names
    x = torch.randn(2, 3, 16, 16)
    calibrate(backbone, backbone, [x], calib=dict(method='max'))
    assert enable_fake_quant(backbone) == 2 * len(names)
    outs = backbone(x)
    assert all(torch.isfinite(o).all() for o in outs)


def test_mmseg_encoder_decoder_from_registry_is_swapped():
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = _build_seg(MODELS)
    names = quantize_model(model)
    _check_seg(model, names)


def _build_seg(MODELS):
    return MODELS.build(
        dict(
            type='mmseg.EncoderDecoder',
            data_preprocessor=dict(type='mmseg.SegDataPreProcessor'),
            backbone=dict(
                type='mmseg.SwinTransformer',
                embed_dims=16,
                depths=(1, 1),
                num_heads=(1, 2),
                window_size=2,
                mlp_ratio=2,
                out_indices=(0, 1),
                strides=(4, 2),
            ),
            decode_head=dict(
                type='mmseg.UPerHead',
                in_channels=[16, 32],
                in_index=[0, 1],
                channels=16,
                pool_scales=(1, 2),
                num_classes=3,
                norm_cfg=dict(type='BN'),
            ),
        )
    )


def _check_seg(model, names):
    layers = quantized_layers(model)
    assert 'decode_head.conv_seg' not in layers  # prediction layer
    assert any(n.startswith('decode_head.') for n in names)  # ConvModules
    assert any('.ffn.' in n for n in names)
    convs = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and n.startswith('decode_head.')
    ]
    assert set(convs) - set(names) == {'decode_head.conv_seg'}
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    calibrate(model, lambda b: model(b, mode='tensor'), [x])
    enable_fake_quant(model)
    assert torch.isfinite(model(x, mode='tensor')).all()
