"""GPUSQ wrapper on a tiny mmpretrain Swin classifier (no Runner)."""

import copy
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.registry import MODELS
from mmengine.runner import load_checkpoint

import gpusq_mm  # noqa: F401
from gpusq_mm.models import GPUSQ, InputAdapter

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def cls_model(dims=16, mean=MEAN, std=STD, to_rgb=True, classes=5):
    return dict(
        type='mmpretrain.ImageClassifier',
        data_preprocessor=dict(
            type='mmpretrain.ClsDataPreprocessor',
            mean=list(mean),
            std=list(std),
            to_rgb=to_rgb,
            num_classes=classes,
        ),
        backbone=dict(
            type='mmpretrain.SwinTransformer',
            arch=dict(
                embed_dims=dims, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2]
            ),
            img_size=32,
            window_size=4,
            pad_small_map=True,
        ),
        neck=dict(type='mmpretrain.GlobalAveragePooling'),
        head=dict(
            type='mmpretrain.LinearClsHead',
            num_classes=classes,
            in_channels=dims * 8,
            loss=dict(type='mmpretrain.CrossEntropyLoss'),
        ),
    )


def save_model(cfg, path, seed=0):
    torch.manual_seed(seed)
    model = MODELS.build(cfg)
    model.init_weights()
    torch.save({'state_dict': model.state_dict()}, path)
    return path


def batch(n=2, size=32, seed=0):
    from mmpretrain.structures import DataSample

    g = torch.Generator().manual_seed(seed)
    return dict(
        inputs=[
            torch.randint(
                0, 255, (3, size, size), dtype=torch.uint8, generator=g
            )
            for _ in range(n)
        ],
        data_samples=[DataSample().set_gt_label(i % 5) for i in range(n)],
    )


@pytest.fixture
def teacher_ckpt(tmp_path):
    return save_model(cls_model(), str(tmp_path / 'teacher.pth'), seed=1)


def test_non_finite_teacher_is_refused_by_name(tmp_path, teacher_ckpt):
    state = torch.load(teacher_ckpt, weights_only=True)
    key = 'head.fc.weight'
    state['state_dict'][key][0, 0] = float('nan')
    bad = str(tmp_path / 'nan_teacher.pth')
    torch.save(state, bad)
    with pytest.raises(ValueError, match=f'nan_teacher.pth.*{key}'):
        build(bad)


def build(teacher_ckpt, **kwargs):
    kwargs.setdefault(
        'teacher', dict(config=cls_model(), checkpoint=teacher_ckpt)
    )
    # dense and FP: these tests are about distillation
    kwargs.setdefault('sparsity', None)
    kwargs.setdefault('quantization', None)
    return GPUSQ(architecture=cls_model(), **kwargs)


def losses_of(model, data):
    data = model.data_preprocessor(data, True)
    return model.loss(**data)


def test_losses_present_finite_and_weighted(teacher_ckpt):
    model = build(teacher_ckpt)
    losses = losses_of(model, batch())
    for key in ('loss', 'loss_kd_cls', 'loss_kd_feat'):
        assert torch.isfinite(losses[key]), key
    # weights scale the logged losses (defaults 1 / 10 / 5)
    torch.manual_seed(0)
    half = build(
        teacher_ckpt,
        distill=dict(
            hard=0.5, logits=dict(weight=5), features=dict(weight=2.5)
        ),
    )
    half.load_state_dict(model.state_dict())
    model.eval(), half.eval()  # no drop-path randomness
    a, b = losses_of(model, batch()), losses_of(half, batch())
    for key in ('loss', 'loss_kd_cls', 'loss_kd_feat'):
        assert torch.allclose(a[key] / 2, b[key], rtol=1e-4), key


def test_teacher_out_of_state_dict_parameters_and_train_mode(teacher_ckpt):
    model = build(teacher_ckpt)
    keys = list(model.state_dict())
    assert not any('teacher' in k for k in keys)
    assert {k.split('.')[0] for k in keys} <= {
        'gpusq_stage',
        'architecture',
        'feature_kd',
        'data_preprocessor',
    }
    student = {id(p) for p in model.architecture.parameters()}
    assert all(id(p) in student for p in model.parameters())
    assert not any(p.requires_grad for p in model.teacher.parameters())
    model.train()
    assert model.architecture.training and not model.teacher.training
    model.double()  # moves the teacher along
    assert next(model.teacher.parameters()).dtype == torch.float64


def test_teacher_loaded_from_checkpoint(teacher_ckpt):
    model = build(teacher_ckpt)
    ref = torch.load(teacher_ckpt, weights_only=True)['state_dict']
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_teacher_with_other_normalization_gets_its_own(tmp_path):
    t_cfg = cls_model(mean=[0, 0, 0], std=[255, 255, 255], to_rgb=False)
    ckpt = save_model(t_cfg, str(tmp_path / 't.pth'))
    model = GPUSQ(
        architecture=cls_model(), teacher=dict(config=t_cfg, checkpoint=ckpt)
    )
    assert not model.input_adapter.identity
    data = batch()
    s_in = model.data_preprocessor(copy.deepcopy(data), True)['inputs']
    t_in = model.teacher.data_preprocessor(copy.deepcopy(data), True)
    assert torch.allclose(model.input_adapter(s_in), t_in['inputs'], atol=1e-5)
    same = InputAdapter(model.data_preprocessor, model.data_preprocessor)
    assert same.identity and same(s_in) is s_in


def test_build_errors(tmp_path, teacher_ckpt):
    missing = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        build(None, teacher=dict(config=cls_model(), checkpoint=missing))
    with pytest.raises(KeyError, match="'backbone.norm9'.*backbone.norm3"):
        build(
            teacher_ckpt,
            distill=dict(features=dict(modules=['backbone.norm9'])),
        )
    with pytest.raises(KeyError, match='tempreature'):
        build(teacher_ckpt, distill=dict(tempreature=4))
    with pytest.raises(
        TypeError,
        match='Sequential.*supported.*'
        'ImageClassifier.*EncoderDecoder.*TwoStage.*DETR',
    ):
        GPUSQ(architecture=nn.Sequential(nn.Linear(2, 2)))


def test_without_teacher_only_predicts(teacher_ckpt):
    model = GPUSQ(architecture=cls_model())
    data = model.data_preprocessor(batch(), False)
    out = model(**data, mode='predict')
    assert len(out) == 2 and out[0].pred_score.shape == (5,)
    with pytest.raises(RuntimeError, match='never silently off'):
        model.loss(**data)


def test_val_and_test_step_run_the_student_only(teacher_ckpt):
    model = build(teacher_ckpt)
    calls = []
    model.teacher.register_forward_pre_hook(lambda *a: calls.append(1))
    model.teacher.backbone.register_forward_pre_hook(
        lambda *a: calls.append(1)
    )
    out = model.val_step(batch())
    model.test_step(batch())
    assert not calls and len(out) == 2


def test_stage_statistics_begin_qat_and_resume(teacher_ckpt):
    model = build(
        teacher_ckpt, distill=dict(features=dict(log_per_layer=True))
    )
    assert model.stage == 0
    losses_of(model, batch())
    assert model.feature_kd.stats.mean.numel() == 0  # stage 0: no stats
    model.set_stage(1)
    per_layer = losses_of(model, batch())
    names = [k[len('kd_feat.') :] for k in per_layer if k.startswith('kd_')]
    assert names == ['backbone.0', 'neck.0']
    losses_of(model, batch(seed=1))
    stats = model.feature_kd.stats
    assert stats.count.tolist() == [2, 2]
    factors = model.begin_qat()
    assert model.stage == 2 and list(factors) == names
    inv = 1 / stats.mean
    assert torch.allclose(stats.factors.double(), inv / inv.sum())
    # the sparse FP snapshot teaches now; it is frozen and not a submodule
    snap = model.teacher
    assert snap is not model.dense_teacher
    assert all(not p.requires_grad for p in snap.parameters())
    assert not any(m is snap for m in model.modules())
    loss = losses_of(model, batch())['loss_kd_feat']
    assert torch.isfinite(loss)
    state = model.state_dict()
    assert any(k.startswith('qat_teacher.') for k in state)
    # a fresh model resumes stage, factors and the snapshot
    fresh = build(teacher_ckpt)
    fresh.load_state_dict(state)
    assert fresh.stage == 2
    assert torch.equal(fresh.feature_kd.stats.factors, stats.factors)
    for k, v in snap.state_dict().items():
        assert torch.equal(fresh.teacher.state_dict()[k], v), k
    assert fresh.teacher is not fresh.dense_teacher


def test_student_only_checkpoint(tmp_path, teacher_ckpt):
    model = build(teacher_ckpt)
    model.set_stage(1)
    losses_of(model, batch())
    model.begin_qat()
    path = str(tmp_path / 'student.pth')
    model.save_student_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt['meta']['gpusq_stage'] == 2
    keys = list(ckpt['state_dict'])
    assert keys == list(model.architecture.state_dict())
    plain = MODELS.build(cls_model())
    load_checkpoint(plain, path, strict=True)
    wrapped = GPUSQ(architecture=cls_model(), sparsity=None, quantization=None)
    load_checkpoint(wrapped, path, strict=True)
    for k, v in model.architecture.state_dict().items():
        assert torch.equal(plain.state_dict()[k], v)
        assert torch.equal(wrapped.architecture.state_dict()[k], v)
    assert not osp.exists(path + '.tmp')


def test_wider_teacher_bridged_by_declared_connectors(tmp_path):
    t_cfg = cls_model(dims=32)
    ckpt = save_model(t_cfg, str(tmp_path / 'wide.pth'))
    with pytest.raises(ValueError, match='architectures differ.*connectors'):
        model = GPUSQ(
            architecture=cls_model(),
            teacher=dict(config=t_cfg, checkpoint=ckpt),
        )
        losses_of(model, batch())
    model = GPUSQ(
        architecture=cls_model(),
        teacher=dict(config=t_cfg, checkpoint=ckpt),
        distill=dict(
            features=dict(
                connectors={
                    'backbone.0': dict(in_channels=128, out_channels=256),
                    'neck.0': dict(
                        in_channels=128, out_channels=256, kind='linear'
                    ),
                }
            )
        ),
    )
    loss = losses_of(model, batch())['loss_kd_feat']
    loss.backward()
    conn = model.feature_kd.connectors['backbone__0'].proj
    assert conn.weight.grad is not None
    # connectors train with the student but are not student weights
    ids = {id(p) for p in model.parameters()}
    assert id(conn.weight) in ids
    assert not any('connectors' in k for k in model.student_state_dict())
    # the QAT snapshot has the student's widths: no connector needed
    model.begin_qat()
    assert torch.isfinite(losses_of(model, batch())['loss_kd_feat'])


def test_gate_on_agreement_is_classifier_only(teacher_ckpt):
    model = build(
        teacher_ckpt, distill=dict(features=dict(gate_on_agreement=True))
    )
    assert torch.isfinite(losses_of(model, batch())['loss_kd_feat'])


def test_teacher_config_sources(tmp_path):
    from gpusq_mm.models import load_teacher_config

    model, scope = load_teacher_config(
        'mmdet::detr/detr_r50_8xb2-150e_coco.py'
    )
    assert model.type == 'DETR' and scope == 'mmdet'
    path = tmp_path / 'teacher_cfg.py'
    path.write_text(f"default_scope = 'mmpretrain'\nmodel = {cls_model()!r}\n")
    model, scope = load_teacher_config(str(path))
    assert scope == 'mmpretrain' and model.head.num_classes == 5
    with pytest.raises(FileNotFoundError, match='no_such_cfg.py'):
        load_teacher_config(str(tmp_path / 'no_such_cfg.py'))
