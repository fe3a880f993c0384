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


@pytest.mark.parametrize('name', ['detr', 'dino'])
def test_detr_family_targets_are_the_teacher_predictions(name, tmp_path):
    """The boxes and labels the student's task loss receives are the
    teacher's post-processed predictions (its ``predict()``: top-k, then
    the score threshold), in network-input coordinates: exactly what the
    GPUSQ teacher's ``predict()`` gives, and (to float rounding) what a
    teacher built and loaded from the checkpoint independently of GPUSQ
    predicts in eval mode."""
    from mmengine.config import ConfigDict
    from mmengine.runner import load_checkpoint

    cfg = tiny_detr_layers(name, 2)
    inputs, samples = det_batch(masks=False)
    for ds in samples:  # rescaled (original-image) boxes would differ
        ds.set_metainfo(dict(ori_shape=(32, 32), scale_factor=(2.0, 2.0)))
    with DefaultScope.overwrite_default_scope('mmdet'):
        ref_teacher = MODELS.build(ConfigDict(cfg))
    model = build_gpusq(cfg, tmp_path)  # saves teacher_1.pth
    load_checkpoint(ref_teacher, str(tmp_path / 'teacher_1.pth'))
    ref_teacher.eval()
    with torch.no_grad():
        ref = ref_teacher.predict(inputs, [d.clone() for d in samples], False)
    # a threshold half-way between two scores: about half are kept
    scores = torch.cat([r.pred_instances.scores for r in ref]).sort().values
    mid = len(scores) // 2
    thr = float(scores[mid - 1] + scores[mid]) / 2
    model = build_gpusq(
        cfg, tmp_path, distill=dict(hard='teacher', teacher_score_thr=thr)
    )
    model.train()  # as in training: the teacher stays in eval mode
    with torch.no_grad():
        own = model.teacher.predict(
            inputs, [d.clone() for d in samples], False
        )
        big = model.teacher.predict(inputs, [d.clone() for d in samples], True)
    got = []
    real_loss = model.architecture.loss

    def spy(batch_inputs, batch_data_samples):
        got.append([d.gt_instances for d in batch_data_samples])
        return real_loss(batch_inputs, batch_data_samples)

    model.architecture.loss = spy
    losses = model.loss(inputs, samples)
    assert torch.isfinite(losses['loss_cls'])
    (targets,) = got
    kept = 0
    for gt, pred, indep, scaled in zip(targets, own, ref, big):
        res = pred.pred_instances
        keep = res.scores >= thr
        assert torch.equal(gt.bboxes, res.bboxes[keep])
        assert torch.equal(gt.labels, res.labels[keep])
        # the GPUSQ teacher is the checkpoint's model, in eval mode
        other = indep.pred_instances
        assert torch.equal(other.labels, res.labels)
        torch.testing.assert_close(other.bboxes, res.bboxes)
        torch.testing.assert_close(other.scores, res.scores)
        # input coordinates, not the original image's
        if keep.any():
            rescaled = scaled.pred_instances.bboxes[keep]
            assert not torch.allclose(gt.bboxes, rescaled)
        kept += int(keep.sum())
    assert 0 < kept < len(scores)  # the threshold took effect
    # the caller's annotations are left as they were
    assert all(len(d.gt_instances) == 2 for d in samples)


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
