"""End to end: a real Runner distils each supported model family.

Each test wraps a tiny upstream model in ``gpusq_mm.GPUSQ`` (the teacher:
a seeded random model of the same config, saved to a checkpoint), trains
two iterations on generated data, and checks that the hard, soft-logit and
feature losses are all logged and finite, that the teacher is bit-identical
afterwards and never in a checkpoint, and that the student-only checkpoint
loads strictly into the plain upstream model.
"""

import os.path as osp

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import Runner, load_checkpoint

import gpusq_mm  # noqa: F401

from .conftest import (
    demo_config,
    gpusq_cfg,
    tiny_cascade,
    tiny_cls_config,
    tiny_detr,
)

pytestmark = pytest.mark.slow


def _train(cfg) -> Runner:
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def _check(runner, cfg, hard_key: str, kd_parts) -> None:
    hub = runner.message_hub
    for key in [hard_key, 'loss_kd_feat'] + [f'loss_kd_{p}' for p in kd_parts]:
        values = hub.get_scalar(f'train/{key}').data[0]
        assert len(values) == 2, key
        assert all(torch.isfinite(torch.as_tensor(v)) for v in values), key
    model = runner.model
    assert model.data_preprocessor is model.architecture.data_preprocessor
    assert not model.teacher.training
    t_ref = torch.load(osp.join(cfg.work_dir, 't.pth'), weights_only=True)[
        'state_dict'
    ]
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v.cpu(), t_ref[k]), f'teacher changed: {k}'
    full = torch.load(osp.join(cfg.work_dir, 'iter_2.pth'), weights_only=True)[
        'state_dict'
    ]
    assert not any('teacher' in k for k in full)
    student = osp.join(cfg.work_dir, 'student_final.pth')
    keys = list(torch.load(student, weights_only=True)['state_dict'])
    assert keys == list(model.architecture.state_dict())
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        plain = MODELS.build(ConfigDict(cfg.model.architecture))
    load_checkpoint(plain, student, strict=True)


def test_mmpretrain_swin_classifier(tmp_path, cls_data_root):
    cfg = gpusq_cfg(tiny_cls_config(cls_data_root), str(tmp_path))
    runner = _train(cfg)
    _check(runner, cfg, 'loss', ['cls'])


def test_mmseg_upernet_swin(tmp_path, ade_cfg_options):
    cfg = demo_config('swin_upernet', ade_cfg_options)
    cfg.model.data_preprocessor.size = (64, 64)
    cfg = gpusq_cfg(cfg, str(tmp_path), size=64)
    runner = _train(cfg)
    _check(runner, cfg, 'decode.loss_ce', ['seg', 'seg_aux'])


def test_mmdet_mask_rcnn_swin(tmp_path, coco_cfg_options):
    cfg = demo_config('swin_maskrcnn', coco_cfg_options)
    cfg.model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
    cfg.model.train_cfg.rcnn.sampler.num = 64
    cfg = gpusq_cfg(cfg, str(tmp_path), size=96)
    runner = _train(cfg)
    _check(runner, cfg, 'loss_mask', ['rpn', 'roi', 'mask'])


def test_mmdet_cascade_mask_rcnn(tmp_path, coco_cfg_options):
    cfg = demo_config('swin_maskrcnn', coco_cfg_options)
    cfg.model = tiny_cascade()
    cfg = gpusq_cfg(cfg, str(tmp_path), size=96)
    runner = _train(cfg)
    _check(runner, cfg, 's2.loss_cls', ['rpn', 'roi', 'mask'])
    assert len(runner.model.adapter.stages) == 3  # KD on every stage
    assert len(runner.model.adapter.mask_stages) == 3


@pytest.mark.parametrize('name', ['detr', 'dino'])
def test_mmdet_detr_family(tmp_path, coco_cfg_options, name):
    cfg = demo_config('swin_maskrcnn', coco_cfg_options)
    cfg.model = tiny_detr(name)
    cfg = gpusq_cfg(cfg, str(tmp_path), size=96)
    runner = _train(cfg)
    _check(runner, cfg, 'loss_cls', ['query'])


def test_sparse_then_qat_stages_with_resume(tmp_path, cls_data_root):
    """SparsityHook + QATHook around GPUSQ: stage 1 statistics become
    frozen factors at the QAT switch, the sparse FP snapshot teaches, and
    a resumed run restores it without any teacher key in the student
    checkpoint."""
    base = tiny_cls_config(cls_data_root)
    cfg = gpusq_cfg(base, str(tmp_path), iters=4)
    cfg.model.sparsity = dict(pattern='2:4')
    cfg.model.quantization = dict(w_bits=8, a_bits=8, quantize_attention=True)
    cfg.custom_hooks += [
        dict(type='gpusq_mm.SparsityHook'),
        dict(
            type='gpusq_mm.QATHook',
            begin_iter=2,
            num_batches=1,
            progress=False,
        ),
    ]
    cfg.default_hooks.checkpoint.interval = 4
    runner = _train(cfg)
    model = runner.model
    assert model.stage == 2
    attn_q = _attention_quantizers(model.architecture)
    assert attn_q and all(q.enabled and q.calibrated for q in attn_q.values())
    stats = model.feature_kd.stats
    assert bool(stats.frozen) and stats.count.tolist() == [2, 2]
    snapshot = model.teacher
    assert snapshot is not model.dense_teacher
    student = torch.load(
        osp.join(cfg.work_dir, 'student_final.pth'), weights_only=True
    )['state_dict']
    assert any(k.endswith('sparsity_mask') for k in student)
    assert not any('teacher' in k for k in student)
    # resume the full checkpoint in a fresh runner: snapshot + factors back
    cfg2 = cfg.copy()
    cfg2.train_cfg.max_iters = 5
    cfg2.resume = True
    cfg2.load_from = osp.join(cfg.work_dir, 'iter_4.pth')
    runner2 = Runner.from_cfg(cfg2)
    runner2.train()
    model2 = runner2.model
    assert model2.stage == 2
    assert torch.equal(model2.feature_kd.stats.factors, stats.factors)
    assert model2.teacher is not model2.dense_teacher
    for k, v in snapshot.state_dict().items():
        assert torch.equal(model2.teacher.state_dict()[k], v), k
    # the attention ranges were restored, not recalibrated (QAT continued
    # from them for one more step; amax are not trained)
    attn_q2 = _attention_quantizers(model2.architecture)
    assert sorted(attn_q2) == sorted(attn_q)
    for name, q in attn_q2.items():
        assert q.enabled and torch.equal(q._amax, attn_q[name]._amax), name


def _attention_quantizers(model):
    from gpusq_mm.quantization import quantizers

    return {
        n: q
        for n, q in quantizers(model).items()
        if n.endswith(('_q_quantizer', '_k_quantizer', '_v_quantizer'))
        or n.endswith('softmax._output_quantizer')
    }
