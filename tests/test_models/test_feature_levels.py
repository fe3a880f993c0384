"""Feature KD defaults to the later stages (``features.levels``)."""

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.registry import MODELS, DefaultScope

import gpusq_mm  # noqa: F401
from gpusq_mm.models.feature_levels import resolve_levels

from .conftest import demo_config
from .det_helpers import (
    build_gpusq,
    det_batch,
    tiny_detr_layers,
    tiny_mask_rcnn,
)


def _build(cfg: dict, scope: str):
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(ConfigDict(cfg))


@pytest.mark.parametrize(
    'name, expected',
    [
        # Swin: 4 stages (strides 4-32), FPN P2-P6
        ('swin_maskrcnn', {'backbone': [2, 3], 'neck': [2, 3, 4]}),
        ('swin_upernet', {'backbone': [2, 3]}),  # no neck
        ('swin_cls', {'backbone': [0], 'neck': [0]}),  # stage 4 only
    ],
)
def test_later_stages_of_the_demo_models(name, expected):
    cfg = demo_config(name)
    model = _build(cfg.model, cfg.default_scope)
    modules = [m for m in ('backbone', 'neck') if hasattr(model, m)]
    assert resolve_levels(model, modules, 'later') == expected
    assert resolve_levels(model, modules, 'all') == {}


@pytest.mark.parametrize(
    'name, expected',
    [
        # ResNet out_indices (3,) -> one map; ChannelMapper keeps it
        ('detr', {'backbone': [0], 'neck': [0]}),
        # out_indices (1, 2, 3) + one extra level: drop stride 8
        ('dino', {'backbone': [1, 2], 'neck': [1, 2, 3]}),
    ],
)
def test_later_stages_of_detr_family(name, expected):
    model = _build(tiny_detr_layers(name, 1), 'mmdet')
    modules = ['backbone', 'neck', 'encoder']
    assert resolve_levels(model, modules, 'later') == expected


def test_default_distills_later_maps_and_all_is_overridable(tmp_path):
    model = build_gpusq(
        tiny_mask_rcnn(),
        tmp_path,
        distill=dict(features=dict(log_per_layer=True)),
    )
    names = [k for k in model.loss(*det_batch()) if k.startswith('kd_feat.')]
    assert names == [
        'kd_feat.backbone.2',
        'kd_feat.backbone.3',
        'kd_feat.neck.2',
        'kd_feat.neck.3',
        'kd_feat.neck.4',
    ]
    every = build_gpusq(
        tiny_mask_rcnn(),
        tmp_path,
        distill=dict(features=dict(levels='all', log_per_layer=True)),
    )
    names = [k for k in every.loss(*det_batch()) if k.startswith('kd_feat.')]
    assert len(names) == 4 + 5
    picked = build_gpusq(
        tiny_mask_rcnn(),
        tmp_path,
        distill=dict(features=dict(levels={'neck': [0]}, log_per_layer=True)),
    )
    losses = picked.loss(*det_batch())
    names = [k for k in losses if k.startswith('kd_feat.')]
    assert names == ['kd_feat.backbone.0', 'kd_feat.backbone.1',
                     'kd_feat.backbone.2', 'kd_feat.backbone.3',
                     'kd_feat.neck.0']  # fmt: skip
    # uniform stage-1 factors: the total is the mean of the kept maps
    per_layer = torch.stack([losses[n] for n in names])
    assert torch.allclose(losses['loss_kd_feat'], per_layer.mean() * 5)


def test_bad_levels_are_errors_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="levels.*'later', 'all'.*'late'"):
        build_gpusq(
            tiny_mask_rcnn(),
            tmp_path,
            distill=dict(features=dict(levels='late')),
        )
    with pytest.raises(KeyError, match="levels names 'roi_head'"):
        build_gpusq(
            tiny_mask_rcnn(),
            tmp_path,
            distill=dict(features=dict(levels={'roi_head': [0]})),
        )
    with pytest.raises(KeyError, match="connector 'backbone.0'.*levels"):
        build_gpusq(
            tiny_mask_rcnn(),
            tmp_path,
            distill=dict(
                features=dict(
                    connectors={
                        'backbone.0': dict(in_channels=16, out_channels=16)
                    }
                )
            ),
        )
    model = build_gpusq(
        tiny_mask_rcnn(),
        tmp_path,
        distill=dict(features=dict(levels={'neck': [7]})),
    )
    with pytest.raises(ValueError, match="output 7 of 'neck'.*5 outputs"):
        model.loss(*det_batch())
