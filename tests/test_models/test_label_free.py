"""Label-free mode (``distill.hard='teacher'``): the teacher's
predictions replace the ground truth of the student's task loss."""

import os
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import Runner

import gpusq_mm  # noqa: F401
from gpusq_mm.models import GPUSQ

from .conftest import demo_config, gpusq_cfg, save_teacher, tiny_cls_config
from .det_helpers import (
    build_gpusq,
    det_batch,
    tiny_detr_layers,
    tiny_mask_rcnn,
)
from .test_gpusq import batch, cls_model, save_model


def _capture_args(module):
    calls = []
    module.register_forward_hook(lambda m, args, out: calls.append(args))
    return calls


@pytest.fixture
def cls_teacher(tmp_path):
    return save_model(cls_model(), str(tmp_path / 't.pth'), seed=1)


def test_classifier_targets_are_the_teacher_argmax(cls_teacher):
    model = GPUSQ(
        sparsity=None,  # dense and FP: a distillation test
        quantization=None,
        architecture=cls_model(),
        teacher=dict(config=cls_model(), checkpoint=cls_teacher),
        distill=dict(hard='teacher'),
    )
    assert model.distill_cfg['hard'] == 1.0
    assert model.distill_cfg['hard_targets'] == 'teacher'
    data = model.data_preprocessor(batch(n=4), True)
    for ds in data['data_samples']:
        ds.set_gt_label(0)  # constant, i.e. useless, labels
    calls = _capture_args(model.architecture.head.loss_module)
    losses = model.loss(**data)
    with torch.no_grad():
        t_logits = model.teacher.head(
            model.teacher.extract_feat(data['inputs'])
        )
    target = calls[0][1]
    assert torch.equal(target, t_logits.argmax(-1))
    assert len(set(target.tolist())) > 1  # not the constant labels
    s_logits = calls[0][0]
    ce = F.cross_entropy(s_logits, t_logits.argmax(-1))
    assert torch.allclose(losses['loss'], ce, rtol=1e-5)
    # the caller's samples are not modified
    assert all(int(d.gt_label) == 0 for d in data['data_samples'])


def test_segmentor_targets_are_the_teacher_pixel_argmax(tmp_path):
    cfg = demo_config('swin_upernet')
    cfg.model.data_preprocessor.size = (64, 64)
    ckpt = save_teacher(cfg.model, 'mmseg', str(tmp_path / 't.pth'), seed=1)
    t_cfg = dict(model=cfg.model.to_dict(), default_scope='mmseg')
    with DefaultScope.overwrite_default_scope('mmseg'):
        student = MODELS.build(cfg.model)
    model = GPUSQ(
        sparsity=None,  # dense and FP: a distillation test
        quantization=None,
        architecture=student,
        teacher=dict(config=t_cfg, checkpoint=ckpt),
        distill=dict(hard='teacher'),
    )
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    inputs = torch.randn(2, 3, 64, 64)
    samples = []
    for _ in range(2):
        ds = SegDataSample(metainfo=dict(img_shape=(64, 48)))
        ds.gt_sem_seg = PixelData(data=torch.zeros(1, 64, 64).long())
        samples.append(ds)
    calls = _capture_args(model.architecture.decode_head.loss_decode)
    losses = model.loss(inputs, samples)
    assert torch.isfinite(losses['decode.loss_ce'])
    label = calls[0][1]
    with torch.no_grad():
        t = model.teacher.decode_head(model.teacher.extract_feat(inputs))
    t = F.interpolate(t, size=(64, 64), mode='bilinear', align_corners=False)
    expected = t.argmax(1)
    assert torch.equal(label[..., :48], expected[..., :48])
    assert (label[..., 48:] == 255).all()  # padding stays ignored
    assert len(expected.unique()) > 1


def test_detector_targets_are_the_teacher_detections(tmp_path):
    model = build_gpusq(
        tiny_mask_rcnn(),
        tmp_path,
        distill=dict(hard='teacher', teacher_score_thr=0.0),
    )
    model.train()
    inputs, samples = det_batch()
    _, relabelled = model.adapter.teacher_targets(
        model.teacher, inputs, samples, 0.0
    )
    preds = model.teacher.predict(inputs, [d.clone() for d in samples], False)
    for ds, pred in zip(relabelled, preds):
        gt, res = ds.gt_instances, pred.pred_instances
        assert len(res) > 0
        assert torch.equal(gt.bboxes, res.bboxes)
        assert torch.equal(gt.labels, res.labels)
        assert gt.masks.masks.shape == (len(res), 64, 64)
        assert (gt.masks.masks == res.masks.numpy()).all()
    losses = model.loss(inputs, samples)
    for key in ('loss_cls', 'loss_mask', 'loss_kd_roi', 'loss_kd_mask'):
        assert torch.isfinite(losses[key]), key
    # a threshold above every score: no objects, still a valid loss
    none = model.adapter.teacher_targets(model.teacher, inputs, samples, 1.1)
    assert all(len(d.gt_instances) == 0 for d in none[1])


def test_detr_label_free_trains_on_teacher_detections(tmp_path):
    model = build_gpusq(
        tiny_detr_layers('detr', 2),
        tmp_path,
        distill=dict(hard='teacher', teacher_score_thr=0.0),
    )
    inputs, samples = det_batch(masks=False)
    _, relabelled = model.adapter.teacher_targets(
        model.teacher, inputs, samples, 0.0
    )
    assert all(len(d.gt_instances) == 10 for d in relabelled)  # queries
    losses = model.loss(inputs, samples)
    assert torch.isfinite(losses['loss_cls'])


def test_label_free_setting_errors(cls_teacher):
    def build(distill):
        return GPUSQ(
            sparsity=None,  # dense and FP: a distillation test
            quantization=None,
            architecture=cls_model(),
            teacher=dict(config=cls_model(), checkpoint=cls_teacher),
            distill=distill,
        )

    with pytest.raises(ValueError, match="hard must be a weight or 'teacher'"):
        build(dict(hard='teachers'))
    with pytest.raises(ValueError, match='teacher_score_thr.*label-free'):
        build(dict(teacher_score_thr=0.3))
    with pytest.raises(ValueError, match='teacher_score_thr.*detectors only'):
        build(dict(hard='teacher', teacher_score_thr=0.3))
    model = build(dict(hard=0.5, hard_targets='teacher'))
    assert model.distill_cfg['hard'] == 0.5


def test_runner_trains_on_constant_labels(tmp_path, cls_data_root):
    """A class-folder dataset with one folder (every label 0): the loss
    the student trains on is the CE against the teacher's classes."""
    one = tmp_path / 'data' / 'train' / 'only'
    one.mkdir(parents=True)
    src = osp.join(cls_data_root, 'train')
    for cls_dir in sorted(os.listdir(src)):
        for f in sorted(os.listdir(osp.join(src, cls_dir))):
            os.symlink(osp.join(src, cls_dir, f), one / f'{cls_dir}_{f}')
    base = tiny_cls_config(str(tmp_path / 'data'))
    os.makedirs(tmp_path / 'work')
    cfg = gpusq_cfg(base, str(tmp_path / 'work'), distill=dict(hard='teacher'))
    runner = Runner.from_cfg(cfg)
    model = runner.model
    targets, t_classes = [], []
    model.architecture.head.loss_module.register_forward_hook(
        lambda m, args, out: targets.append(args[1])
    )
    model.teacher.head.register_forward_hook(
        lambda m, args, out: t_classes.append(out.argmax(-1))
    )
    runner.train()
    assert len(targets) == 2
    for target, t_cls in zip(targets, t_classes):
        assert torch.equal(target, t_cls)
    hub = runner.message_hub
    for key in ('loss', 'loss_kd_cls', 'loss_kd_feat'):
        values = hub.get_scalar(f'train/{key}').data[0]
        assert all(torch.isfinite(torch.as_tensor(v)) for v in values), key
