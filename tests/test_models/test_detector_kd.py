"""Detector KD parts: every DETR decoder layer, DINO's DN queries left
out, and Mask R-CNN mask-head KD (no Runner, tiny models)."""

import pytest
import torch

import gpusq_mm  # noqa: F401

from .det_helpers import (
    build_gpusq,
    det_batch,
    tiny_detr_layers,
    tiny_mask_rcnn,
)


def _loss(model, seed=0, masks=True):
    inputs, samples = det_batch(seed=seed, masks=masks)
    return model.loss(inputs, samples)


def _kd_again(model, t_out, outputs):
    """The adapter's KD parts on replaced student head outputs."""
    model.adapter.recorder._outputs['bbox_head'] = outputs
    return model.adapter.logit_losses(t_out, None, 1.0)


def _teacher_out(model, seed=0):
    inputs, samples = det_batch(seed=seed, masks=False)
    with torch.no_grad():
        return model.adapter.teacher_forward(model.teacher, inputs, samples)


def test_detr_every_decoder_layer_is_distilled(tmp_path):
    model = build_gpusq(tiny_detr_layers('detr', 3), tmp_path)
    model.train()
    losses = _loss(model, masks=False)
    assert set(losses) >= {'loss_kd_query', 'loss_kd_query_aux'}
    assert torch.isfinite(losses['loss_kd_query_aux'])
    # re-run the student (recorded) and check the parts layer by layer
    inputs, samples = det_batch(masks=False)
    with model.adapter.recorder:
        model.architecture.loss(inputs, samples)
    t_out = _teacher_out(model)
    cls, boxes = model.adapter.recorder.raw('bbox_head')[:2]
    assert cls.shape[0] == 3  # (layers, batch, queries, classes + 1)
    per_layer = model.adapter.layer_losses(t_out, 1.0)
    assert len(per_layer) == 3 and all(v > 0 for v in per_layer)
    parts = model.adapter.logit_losses(t_out, samples, 1.0)
    assert torch.allclose(parts['query'], per_layer[-1])
    assert torch.allclose(parts['query_aux'], per_layer[0] + per_layer[1])
    # the aux term follows the earlier layers' outputs only
    moved = cls.clone()
    moved[0] = moved[0] * 3.0
    again = _kd_again(model, t_out, (moved, boxes))
    assert torch.equal(again['query'], parts['query'])
    assert not torch.allclose(again['query_aux'], parts['query_aux'])
    # a student whose every layer predicts like the teacher's: all zero
    same = _kd_again(model, t_out, (t_out['cls'], t_out['boxes']))
    assert float(same['query']) < 1e-6 and float(same['query_aux']) < 1e-6


def test_detr_final_layer_only_when_aux_weight_is_zero(tmp_path):
    model = build_gpusq(
        tiny_detr_layers('detr', 2),
        tmp_path,
        distill=dict(logits=dict(parts=dict(query_aux=0))),
    )
    losses = _loss(model, masks=False)
    assert 'loss_kd_query' in losses and 'loss_kd_query_aux' not in losses


def test_dino_denoising_queries_are_left_out(tmp_path):
    model = build_gpusq(tiny_detr_layers('dino', 2), tmp_path)
    model.train()
    inputs, samples = det_batch(masks=False)
    with model.adapter.recorder:
        model.architecture.loss(inputs, samples)
    cls, boxes = model.adapter.recorder.raw('bbox_head')[:2]
    q = model.adapter.num_queries
    assert cls.shape[0] == 2 and cls.shape[2] > q  # DN queries in front
    t_out = _teacher_out(model)
    assert t_out['cls'].shape[2] == q  # eval teacher: no DN queries
    base = model.adapter.logit_losses(t_out, samples, 1.0)
    assert set(base) == {'query', 'query_aux'}
    dn_moved = cls.clone()
    dn_moved[:, :, :-q] = torch.randn_like(dn_moved[:, :, :-q]) * 5
    again = _kd_again(model, t_out, (dn_moved, boxes))
    for part in base:
        assert torch.equal(again[part], base[part]), part
    match_moved = cls.clone()
    match_moved[:, :, -q:] = match_moved[:, :, -q:] * 3.0
    again = _kd_again(model, t_out, (match_moved, boxes))
    for part in base:
        assert not torch.allclose(again[part], base[part]), part


def _copy_teacher_into_student(model):
    with torch.no_grad():
        t_state = model.teacher.state_dict()
        for k, v in model.architecture.state_dict().items():
            v.copy_(t_state[k])


def test_mask_kd_zero_for_the_teacher_itself_positive_otherwise(tmp_path):
    model = build_gpusq(tiny_mask_rcnn(), tmp_path)
    assert model.adapter.parts['mask'] == 1.0
    _copy_teacher_into_student(model)
    model.train()
    losses = _loss(model)
    assert float(losses['loss_mask']) > 0  # the mask head did train
    for part in ('rpn', 'roi', 'mask'):
        assert abs(float(losses[f'loss_kd_{part}'])) < 1e-6, part
    # only the ground-truth channel is compared: another class's mask
    # logits of the teacher do not matter
    head = model.teacher.roi_head.mask_head.conv_logits
    unused = 5  # det_batch's labels are 1, 2 and 3
    with torch.no_grad():
        head.weight[unused] += 1.0
        head.bias[unused] += 3.0
    assert abs(float(_loss(model)['loss_kd_mask'])) < 1e-6
    # a different student mask head: positive, and it trains that head
    s_head = model.architecture.roi_head.mask_head.conv_logits
    with torch.no_grad():
        s_head.weight.mul_(-2.0)
    losses = _loss(model)
    kd = losses['loss_kd_mask']
    assert float(kd) > 1e-4
    kd.backward()
    assert s_head.weight.grad is not None and s_head.weight.grad.abs().sum()
    assert float(losses['loss_kd_roi']) < 1e-6  # the box head is the same


def test_mask_kd_can_be_switched_off(tmp_path):
    model = build_gpusq(
        tiny_mask_rcnn(),
        tmp_path,
        distill=dict(logits=dict(parts=dict(mask=0))),
    )
    assert model.adapter.mask_stages == []
    assert 'loss_kd_mask' not in _loss(model)


def test_mask_kd_without_teacher_mask_head_is_an_error(tmp_path):
    from mmengine.config import ConfigDict
    from mmengine.registry import MODELS, DefaultScope

    from gpusq_mm.models import GPUSQ

    t_cfg = tiny_mask_rcnn()
    for key in ('mask_roi_extractor', 'mask_head'):
        t_cfg['roi_head'].pop(key)
    with DefaultScope.overwrite_default_scope('mmdet'):
        teacher = MODELS.build(ConfigDict(t_cfg))
        student = MODELS.build(ConfigDict(tiny_mask_rcnn()))
    path = str(tmp_path / 'box_only.pth')
    torch.save({'state_dict': teacher.state_dict()}, path)
    with pytest.raises(TypeError, match='mask head.*parts=dict\\(mask=0\\)'):
        GPUSQ(
            sparsity=None,  # dense and FP: a distillation test
            quantization=None,
            architecture=student,
            teacher=dict(
                config=dict(model=t_cfg, default_scope='mmdet'),
                checkpoint=path,
            ),
        )


def test_explicit_parts_the_model_lacks_are_errors(tmp_path):
    box_only = tiny_mask_rcnn()
    for key in ('mask_roi_extractor', 'mask_head'):
        box_only['roi_head'].pop(key)
    parts = dict(logits=dict(parts=dict(mask=1.0)))
    with pytest.raises(ValueError, match='parts.mask.*no mask head'):
        build_gpusq(box_only, tmp_path, distill=parts)
    assert 'loss_kd_mask' not in _loss(build_gpusq(box_only, tmp_path))
    parts = dict(logits=dict(parts=dict(query_aux=0.5)))
    with pytest.raises(ValueError, match='query_aux.*decoder has 1 layer'):
        build_gpusq(tiny_detr_layers('detr', 1), tmp_path, distill=parts)
