"""``wrap_config`` and the GPUSQ defaults it relies on (no Runner)."""

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope
from test_engine.tiny_gpusq import (
    PREPROCESSOR,
    cls_architecture,
    save_dense,
    upstream_config,
)

import gpusq_mm  # noqa: F401
from gpusq_mm.apis import DEFAULT_QAT_RATIO, strip_teacher, wrap_config


def _build(cfg: Config):
    """As the Runner builds it (top-level data_preprocessor passed in)."""
    model = dict(cfg.model)
    model.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return MODELS.build(model)


def test_wrapped_config_shape(tmp_path):
    up = upstream_config(str(tmp_path), str(tmp_path), by_epoch=True)
    cfg = wrap_config(up, 'dense.pth')
    assert cfg.model.type == 'gpusq_mm.GPUSQ'
    assert cfg.model.architecture == up.model
    assert cfg.model.teacher == dict(checkpoint='dense.pth')
    assert cfg.model.sparsity == '2:4' and cfg.model.quantization == 'int8'
    assert [h['type'] for h in cfg.custom_hooks] == [
        'EMAHook',
        'gpusq_mm.GPUSQHook',
    ]
    assert cfg.custom_hooks[1]['qat_ratio'] == DEFAULT_QAT_RATIO
    assert up.model.type == 'ImageClassifier'  # the input is not modified
    fp = wrap_config(up, 'dense.pth', quantization=None, lr_factor=None)
    assert fp.custom_hooks[1] == dict(
        type='gpusq_mm.GPUSQHook', lr_factor=None
    )
    with pytest.raises(ValueError, match='already a GPUSQ config'):
        wrap_config(cfg, 'dense.pth')
    assert strip_teacher(cfg).model.teacher is None


def test_paper_recipe_teacher_and_preprocessor_defaults(tmp_path):
    dense = save_dense(str(tmp_path / 'dense.pth'))
    up = upstream_config(str(tmp_path), str(tmp_path), by_epoch=True)
    # a pretrained init the student must not try to load
    up.model.backbone.init_cfg = dict(
        type='Pretrained', checkpoint=str(tmp_path / 'no_such.pth')
    )
    model = _build(wrap_config(up, dense))
    # the top-level (mmpretrain) data_preprocessor became the student's
    pre = model.architecture.data_preprocessor
    assert pre.num_classes == PREPROCESSOR['num_classes']
    assert torch.allclose(
        pre.mean.flatten(), torch.tensor(PREPROCESSOR['mean'])
    )
    assert model.data_preprocessor is pre
    # teacher config = the student's; 2:4 + INT8 by default
    assert model.sparse_layers and model.quant_layers
    assert model.distill_cfg['logits'] == dict(weight=10.0, T=2.0, parts=None)
    assert model.distill_cfg['features']['weight'] == 5.0
    assert model.distill_cfg['hard'] == 1.0
    model.init_weights()  # no attempt to read no_such.pth
    t_state = model.dense_teacher.state_dict()
    for name, p in model.architecture.named_parameters():
        assert torch.equal(p, t_state[name]), name


def test_other_teacher_without_connectors_is_an_error(tmp_path):
    dense = save_dense(str(tmp_path / 'dense.pth'), dims=32)
    wide = dict(cls_architecture(dims=32), data_preprocessor=PREPROCESSOR)
    up = upstream_config(str(tmp_path), str(tmp_path), by_epoch=True)
    cfg = wrap_config(up, dense, distill=dict(features=dict(weight=0.0)))
    cfg.model.teacher.config = dict(wide, default_scope='mmpretrain')
    with pytest.raises(
        ValueError, match=r'architectures differ.*init_student'
    ):
        _build(cfg)
    cfg.model.init_student = 'none'  # the user loads the student himself
    assert _build(cfg).init_student == 'none'


def test_test_time_build_needs_no_teacher_file(tmp_path):
    up = upstream_config(str(tmp_path), str(tmp_path), by_epoch=True)
    cfg = strip_teacher(wrap_config(up, str(tmp_path / 'absent.pth')))
    model = _build(cfg)
    assert model.dense_teacher is None and model.quant_layers
    # a full training checkpoint of the QAT stage loads: its QAT-teacher
    # snapshot is training state, not part of the evaluated student
    state = model.state_dict()
    state['qat_teacher.head.fc.weight'] = torch.zeros(1)
    model.load_state_dict(state, strict=True)
