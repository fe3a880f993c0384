"""Tests of the 2:4 layer selection and its dry-run listing."""

import torch.nn as nn

from gpusq_mm.sparsity import SparsityConfig, format_selection, select_layers


class _Conv(nn.Conv2d):
    """A subclass, as mmcv builds convolutions."""


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=4),  # patch embed: C=3
            _Conv(32, 64, 3),
            nn.Conv2d(64, 64, 3, groups=64),  # depth-wise
            nn.Conv2d(64, 64, 3, groups=4),  # grouped
            nn.Linear(64, 20),  # out not a multiple of 8
            nn.Linear(20, 16),  # in not a multiple of 16
            nn.ConvTranspose2d(64, 64, 2),  # not a GEMM we prune
        )
        self.head = nn.Module()
        self.head.fc = nn.Linear(64, 16)
        self.rpn_head = nn.Module()
        self.rpn_head.rpn_cls = nn.Conv2d(64, 16, 1)
        self.decode_head = nn.Module()
        self.decode_head.conv_seg = nn.Conv2d(64, 16, 1)
        self.teacher = nn.Linear(64, 64)


def _by_name(decisions):
    return {d.name: d for d in decisions}


def test_default_selection_and_reasons():
    d = _by_name(select_layers(_Toy()))
    assert d['backbone.1'].eligible  # subclass of Conv2d
    assert 'input channels 3' in d['backbone.0'].reason
    assert d['backbone.2'].reason == 'depth-wise conv'
    assert d['backbone.3'].reason.startswith('grouped conv')
    assert 'output channels 20' in d['backbone.4'].reason
    assert 'input channels 20' in d['backbone.5'].reason
    assert 'backbone.6' not in d  # transposed conv is not a candidate
    for name in (
        'head.fc',
        'rpn_head.rpn_cls',
        'decode_head.conv_seg',
        'teacher',
    ):
        assert not d[name].eligible
        assert d[name].reason in (
            'final prediction layer (default exclude)',
            'teacher (never compressed)',
        )


def test_include_exclude_by_name_and_type():
    cfg = SparsityConfig(include=[r'^backbone'], exclude=[r'\.1$'])
    d = _by_name(select_layers(_Toy(), cfg))
    assert d['backbone.1'].reason.startswith('excluded by name')
    assert d['head.fc'].reason == 'not matched by include'
    d = _by_name(select_layers(_Toy(), dict(exclude_types=['_Conv'])))
    assert d['backbone.1'].reason == 'excluded by type'
    d = _by_name(select_layers(_Toy(), dict(use_default_exclude=False)))
    assert d['head.fc'].eligible and d['teacher'].eligible


def test_alignment_is_configurable():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(32, 32))
    d = select_layers(model, dict(in_align=32, out_align=32))
    assert [x.eligible for x in d] == [False, True]


def test_dry_run_listing_reports_coverage():
    model = _Toy()
    decisions = select_layers(model)
    text = format_selection(decisions, model)
    assert 'backbone.1' in text and 'depth-wise conv' in text
    pruned = model.backbone[1].weight.numel()
    assert f'weights covered: {pruned} /' in text
    assert 'share of all' in text
