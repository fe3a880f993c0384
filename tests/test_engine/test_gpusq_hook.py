"""GPUSQHook: the whole GPUSQ run in a real Runner (tiny mmpretrain Swin).

Covers both loop kinds, the QAT start as a ratio or explicit, upstream
hooks kept (EMAHook), the refusal of schedules in which QAT never starts,
``model.sparsity.permute`` / ``mask_grad`` read from the model config,
INT4 from the model config, and the keys that used to be ignored.
"""

import os.path as osp

import pytest
import torch
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, Runner

import gpusq_mm  # noqa: F401
from gpusq_mm.engine.hooks import GPUSQHook
from gpusq_mm.engine.hooks.gpusq_hook import qat_start
from gpusq_mm.quantization import quant_state, quantized_layers
from gpusq_mm.sparsity import is_2to4, masked_layers

from .tiny_gpusq import gpusq_run


def _loop(cls, **attrs):
    loop = object.__new__(cls)
    for key, value in attrs.items():
        setattr(loop, key, value)
    return loop


def test_qat_start_from_ratio_or_explicit():
    epochs = _loop(EpochBasedTrainLoop, _max_epochs=14, _max_iters=140)
    iters = _loop(IterBasedTrainLoop, _max_epochs=1, _max_iters=96000)
    assert qat_start(epochs, qat_ratio=0.15) == dict(begin_epoch=12)
    assert qat_start(epochs, qat_begin_epoch=12) == dict(begin_epoch=12)
    assert qat_start(epochs, qat_begin_iter=130) == dict(begin_iter=130)
    assert qat_start(iters, qat_ratio=1 / 6) == dict(begin_iter=80000)
    assert qat_start(iters, qat_begin_iter=80000) == dict(begin_iter=80000)
    # epoch 0 exists in an iteration-based loop: QAT from the start
    assert qat_start(iters, qat_begin_epoch=0) == dict(begin_epoch=0)


@pytest.mark.parametrize(
    'loop, start, match',
    [
        ('iter', dict(qat_begin_epoch=1), 'qat_begin_epoch=1 never comes'),
        ('iter', dict(qat_begin_iter=96000), '96000 >= max_iters=96000'),
        ('epoch', dict(qat_begin_epoch=14), '14 >= max_epochs=14'),
        ('epoch', dict(qat_ratio=0.01), r'qat_ratio=0.01'),
        ('epoch', dict(qat_begin_iter=140), '140 >= max_iters=140'),
    ],
)
def test_schedule_where_qat_never_starts_is_refused(loop, start, match):
    loops = dict(
        epoch=_loop(EpochBasedTrainLoop, _max_epochs=14, _max_iters=140),
        iter=_loop(IterBasedTrainLoop, _max_epochs=1, _max_iters=96000),
    )
    with pytest.raises(ValueError, match=match):
        qat_start(loops[loop], **start)


def test_hook_settings_are_checked():
    with pytest.raises(KeyError, match=r"\['w_bits'\].*qat_ratio"):
        GPUSQHook(qat_ratio=0.1, w_bits=4)
    with pytest.raises(AssertionError, match='one of qat_ratio'):
        GPUSQHook(qat_ratio=0.1, qat_begin_iter=3)
    with pytest.raises(AssertionError, match='qat_ratio must be in'):
        GPUSQHook(qat_ratio=1.5)
    with pytest.raises(AssertionError, match='num_batches'):
        GPUSQHook(qat_ratio=0.1, num_batches=0)


def _student(runner):
    return runner.model.architecture


@pytest.mark.parametrize('by_epoch', [False, True], ids=['iters', 'epochs'])
def test_one_hook_runs_both_stages(tmp_path, cls_data_root, by_epoch):
    start = dict(qat_ratio=0.5) if by_epoch else dict(qat_begin_iter=2)
    cfg = gpusq_run(cls_data_root, str(tmp_path), by_epoch=by_epoch, **start)
    types = [h['type'] for h in cfg.custom_hooks]
    assert types == ['EMAHook', 'gpusq_mm.GPUSQHook']  # upstream kept
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 4
    model = runner.model
    assert model.stage == 2
    student = _student(runner)
    layers = masked_layers(student)
    assert layers and all(is_2to4(m.weight) for m in layers.values())
    state = quant_state(student)
    assert state['enabled'] == state['quantizers'] > 0
    hook = next(h for h in runner.hooks if isinstance(h, GPUSQHook))
    assert hook.qat.num_calibrations == 1
    expected = dict(begin_epoch=1) if by_epoch else dict(begin_iter=2)
    got = {
        k: getattr(hook.qat, k)
        for k in ('begin_epoch', 'begin_iter')
        if getattr(hook.qat, k) is not None
    }
    assert got == expected
    # the EMA copy is 2:4 too (masks re-applied before EMAHook runs)
    ema = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook')
    ema_student = ema.ema_model.module.architecture
    for name in layers:
        assert is_2to4(dict(ema_student.named_modules())[name].weight)
    final = torch.load(osp.join(str(tmp_path), 'student_final.pth'))
    assert final['meta']['gpusq_stage'] == 2
    assert not any(k.startswith('qat_teacher') for k in final['state_dict'])


def test_qat_start_beyond_the_run_fails_before_training(
    tmp_path, cls_data_root
):
    cfg = gpusq_run(cls_data_root, str(tmp_path), qat_begin_iter=4)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match='4 >= max_iters=4'):
        runner.train()
    assert runner.iter == 0


def test_sparsity_options_and_int4_come_from_the_model(
    tmp_path, cls_data_root
):
    cfg = gpusq_run(
        cls_data_root,
        str(tmp_path),
        qat_begin_iter=1,
        model=dict(
            sparsity=dict(
                mask_grad=True,
                permute=True,
                permute_search=dict(num_passes=2, patience=1),
            ),
            quantization='int4',
        ),
    )
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, GPUSQHook))
    assert hook.sparsity.mask_grad and hook.sparsity.permute
    assert hook.sparsity.permute_search == dict(num_passes=2, patience=1)
    student = _student(runner)
    for name, layer in quantized_layers(student).items():
        wq = layer._weight_quantizer
        assert wq.num_bits == 4 and wq.enabled, name
        # at most 16 levels per output channel in the fake-quantized weight
        levels = wq(layer.weight).detach()
        per_row = [len(torch.unique(r)) for r in levels.flatten(1)]
        assert max(per_row) <= 16, name


def test_misuse_is_refused(tmp_path, cls_data_root):
    # a GPUSQHook next to one of its parts would run it twice
    cfg = gpusq_run(cls_data_root, str(tmp_path), qat_begin_iter=1)
    cfg.custom_hooks.append(dict(type='gpusq_mm.SparsityHook'))
    with pytest.raises(ValueError, match='SparsityHook'):
        Runner.from_cfg(cfg).train()
    # a QAT start without quantization would be ignored
    cfg = gpusq_run(
        cls_data_root,
        str(tmp_path / 'fp'),
        qat_begin_iter=1,
        model=dict(quantization=None),
    )
    with pytest.raises(ValueError, match='not quantized'):
        Runner.from_cfg(cfg).train()
    # a plain model
    cfg = gpusq_run(cls_data_root, str(tmp_path / 'plain'), qat_ratio=0.5)
    cfg.model = cfg.model.architecture
    with pytest.raises(TypeError, match='needs a gpusq_mm.GPUSQ model'):
        Runner.from_cfg(cfg).train()
    # the old hooks' settings that a GPUSQ model would ignore
    cfg = gpusq_run(cls_data_root, str(tmp_path / 'old'), qat_ratio=0.5)
    cfg.custom_hooks = [
        dict(type='gpusq_mm.QATHook', begin_iter=1, quantization='int4')
    ]
    with pytest.raises(ValueError, match='quantization=int4 would be'):
        Runner.from_cfg(cfg).train()
    cfg.custom_hooks = [dict(type='gpusq_mm.SparsityHook', in_align=32)]
    with pytest.raises(ValueError, match='would be ignored'):
        Runner.from_cfg(cfg).train()
    # the model's permutation search settings, under a plain SparsityHook
    # that permutes with its own (default) search
    cfg = gpusq_run(cls_data_root, str(tmp_path / 'search'), qat_ratio=0.5)
    cfg.model.sparsity = dict(
        permute=True, permute_search=dict(num_passes=2, patience=1)
    )
    cfg.custom_hooks = [dict(type='gpusq_mm.SparsityHook', permute=True)]
    with pytest.raises(ValueError, match='this hook would ignore'):
        Runner.from_cfg(cfg).train()


def test_model_permutation_options_in_a_run(
    tmp_path, cls_data_root, monkeypatch
):
    """``model.sparsity.permute`` / ``permute_pairs`` / ``permute_search``
    end to end: the hook permutes exactly the given pairs with the given
    search, before the masks; the permutation leaves the student's output
    unchanged (it still computes what the unpermuted teacher computes),
    raises the magnitude the 2:4 masks keep, and the masks, computed on the
    permuted weights, stay 2:4 through the optimizer steps of both
    stages."""
    import copy

    from gpusq_mm.engine.hooks import sparsity_hook
    from gpusq_mm.sparsity import compute_2to4_mask

    pairs = [
        (
            f'backbone.stages.{i}.blocks.0.ffn.layers.0.0',
            f'backbone.stages.{i}.blocks.0.ffn.layers.1',
        )
        for i in (1, 2)
    ]
    search = dict(num_passes=20, patience=3, seed=7)
    real = sparsity_hook.permute_model
    seen = {}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def spy(student, pairs=None, consumers=None, **kwargs):
        was = student.training
        student.eval()  # no drop-path noise in the comparison
        with torch.no_grad():
            seen['before'] = student(x, mode='tensor')
            seen['dense'] = copy.deepcopy(student)
            report = real(student, pairs=pairs, consumers=consumers, **kwargs)
            seen['after'] = student(x, mode='tensor')
            seen['permuted'] = copy.deepcopy(student)
        student.train(was)
        seen.update(pairs=pairs, consumers=consumers, search=kwargs)
        seen['report'] = report
        return report

    monkeypatch.setattr(sparsity_hook, 'permute_model', spy)
    cfg = gpusq_run(
        cls_data_root,
        str(tmp_path),
        qat_begin_iter=2,
        model=dict(
            sparsity=dict(
                permute=True, permute_pairs=pairs, permute_search=search
            )
        ),
    )
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.model.stage == 2
    # the settings reach the search, not only the hook
    assert [tuple(p) for p in seen['pairs']] == pairs
    assert seen['search'] == search
    report = seen['report']
    consumers = [c for _, c in pairs]
    assert sorted(report['layers']) == consumers  # only the given pairs
    for name in consumers:
        layer = report['layers'][name]
        assert layer['after'] > layer['before'], name
    # the permutation itself keeps the function: same output as before it,
    # i.e. as the (unpermuted) teacher's
    torch.testing.assert_close(seen['after'], seen['before'])
    teacher = runner.model.dense_teacher
    with torch.no_grad():
        torch.testing.assert_close(
            teacher(x, mode='tensor'), seen['before'], rtol=1e-5, atol=1e-6
        )
    # deterministic: the same call on the dense student gives these weights
    again = copy.deepcopy(seen['dense'])
    real(again, pairs=pairs, consumers=seen['consumers'], **search)
    dense = dict(seen['dense'].named_modules())
    permuted = dict(seen['permuted'].named_modules())
    student = dict(_student(runner).named_modules())
    for name in consumers:
        w_dense = dict(again.named_modules())[name].weight
        w_perm = permuted[name].weight
        assert torch.equal(w_perm, w_dense)
        assert not torch.equal(w_perm, dense[name].weight)  # really moved
        # teacher unpermuted: its columns are the dense ones
        t_w = dict(teacher.named_modules())[name].weight
        assert torch.equal(t_w, dense[name].weight)
        # the masks were computed on the permuted weights and kept more
        mask = student[name].sparsity_mask
        assert torch.equal(mask, compute_2to4_mask(w_perm))
        kept = (w_perm.abs() * mask).sum()
        plain = (
            dense[name].weight.abs() * compute_2to4_mask(dense[name].weight)
        ).sum()
        assert kept > plain, name
    # after the optimizer steps of both stages: still 2:4, pruned = 0
    for name, layer in masked_layers(_student(runner)).items():
        weight = layer.weight.detach()
        assert is_2to4(weight), name
        assert not weight[~layer.sparsity_mask].any(), name
