"""QATHook in a real MMEngine Runner on a toy model (CPU)."""

import os

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import load_checkpoint

import gpusq_mm  # noqa: F401  (registers the hooks)
from gpusq_mm.quantization import (
    is_quantized,
    quant_state,
    quantize_model,
    quantizers,
)
from gpusq_mm.sparsity import attach_masks, is_2to4, masked_layers

from .toy import (
    MASKED,
    ToyAlgorithm,
    ToyData,
    ToyModel,
    init_gloo,
    run_two_ranks,
    toy_runner,
)


class RecordingAlgorithm(ToyAlgorithm):
    """The toy algorithm with GPUSQ's ``begin_qat``, recording calls."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def begin_qat(self):
        states = quant_state(self.architecture)
        self.calls.append(states['calibrated'])


class RecordLoss(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.losses = []

    def after_train_iter(
        self, runner, batch_idx, data_batch=None, outputs=None
    ):
        self.losses.append(float(outputs['loss']))


def _runner(tmp_path, name, model=None, qat=None, hooks=(), **kw):
    qat = dict(
        dict(type='gpusq_mm.QATHook', begin_iter=4, num_batches=3),
        progress=False,
        **(qat or {}),
    )
    if 'begin_epoch' in qat:
        qat.pop('begin_iter')
    kw.setdefault('max_iters', 10)
    return toy_runner(
        tmp_path,
        name,
        model=model,
        optimizer=dict(type='AdamW', lr=0.01, weight_decay=0.01),
        hooks=[qat, *hooks],
        ckpt_interval=8,
        data=ToyData(scaled=True),
        **kw,
    )


def _hook(runner):
    return next(h for h in runner.hooks if type(h).__name__ == 'QATHook')


def _amax(model):
    return {n: q.amax.clone() for n, q in quantizers(model).items()}


def _assert_qat_sparse(model, bits=8):
    layers = masked_layers(model)
    assert sorted(layers) == MASKED
    for name, layer in layers.items():
        assert is_quantized(layer), name
        assert is_2to4(layer.weight), name
        wq = layer._weight_quantizer
        assert wq.enabled and wq.num_bits == bits, name
        assert layer._input_quantizer.enabled, name
        quant_weight = wq(layer.weight)  # what the forward multiplies
        assert is_2to4(quant_weight), name
        assert not quant_weight[~layer.sparsity_mask].any(), name
    assert not is_quantized(model.head.fc)  # prediction layer skipped


@pytest.mark.parametrize('bits', [8, 4])
def test_qat_after_2to4_keeps_masks_and_quantizers_on(tmp_path, bits):
    record = RecordLoss()
    runner = _runner(
        tmp_path,
        f'int{bits}',
        qat=dict(quantization=dict(w_bits=bits), lr_factor=0.1),
        hooks=[record, dict(type='EMAHook', momentum=0.2)],
    )
    runner.train()
    hook = _hook(runner)
    ema = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook')
    ema_model = ema.ema_model.module
    for name, q in quantizers(ema_model).items():  # swapped before the copy
        assert q.enabled and torch.equal(q.amax, _amax(runner.model)[name])
    assert hook.active and hook.num_calibrations == 1
    _assert_qat_sparse(runner.model, bits)
    for name, amax in _amax(runner.model).items():
        assert torch.isfinite(amax).all() and (amax > 0).all(), name
    assert all(torch.isfinite(torch.tensor(record.losses)))
    group = runner.optim_wrapper.optimizer.param_groups[0]
    assert group['lr'] == pytest.approx(0.001)
    assert runner.message_hub.get_info('qat_active') == 1


def test_algorithm_begin_qat_called_first_and_only_student(tmp_path):
    model = RecordingAlgorithm()
    runner = _runner(tmp_path, 'algo', model=model, max_iters=6)
    runner.train()
    assert model.calls == [0]  # before calibration, exactly once
    assert all(is_quantized(model.architecture.backbone[i]) for i in (0, 2))
    assert not any(is_quantized(m) for m in model.teacher.modules())
    _assert_qat_sparse(model.architecture)


def test_resume_mid_qat_restores_amax_without_recalibration(tmp_path):
    runner = _runner(tmp_path, 'first', max_iters=12)
    runner.train()
    ckpt = str(tmp_path / 'first' / 'iter_8.pth')
    saved = torch.load(ckpt, map_location='cpu', weights_only=False)
    saved_amax = {
        k: v for k, v in saved['state_dict'].items() if k.endswith('_amax')
    }
    assert saved_amax and all(
        torch.equal(v, _amax(runner.model)[k[: -len('._amax')]])
        for k, v in saved_amax.items()
    )
    resumed = _runner(
        tmp_path, 'second', load_from=ckpt, resume=True, max_iters=12
    )
    resumed.train()
    hook = _hook(resumed)
    assert resumed.iter == 12
    assert hook.active and hook.num_calibrations == 0
    now = _amax(resumed.model)
    for key, value in saved_amax.items():
        assert torch.equal(now[key[: -len('._amax')]], value), key
    _assert_qat_sparse(resumed.model)

    # a model built from the config + the QAT checkpoint evaluates
    # fake-quantized
    fresh = ToyModel()
    attach_masks(fresh, MASKED)
    quantize_model(fresh)
    load_checkpoint(fresh, ckpt, map_location='cpu', strict=True)
    assert all(q.enabled for n, q in quantizers(fresh).items())
    reference = ToyModel()
    attach_masks(reference, MASKED)
    quantize_model(reference)
    reference.load_state_dict(saved['state_dict'])
    x = torch.randn(5, 32)
    assert torch.equal(fresh(x), reference(x))
    for q in quantizers(reference).values():
        q.disable()
    assert not torch.equal(fresh(x), reference(x))


def _ddp_worker(rank, port, tmp_path, out):
    init_gloo(rank, port)
    runner = _runner(
        tmp_path,
        'ddp',
        qat=dict(calib=dict(method='max')),
        launcher='pytorch',
        cfg=dict(
            model_wrapper_cfg=dict(
                type='MMDistributedDataParallel',
                device_ids=None,
                broadcast_buffers=False,  # only our all-reduce syncs amax
            )
        ),
        max_iters=6,
    )
    runner.train()
    torch.save(_amax(runner.model.module), os.path.join(out, f'{rank}.pth'))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_agree_on_amax(tmp_path):
    out = run_two_ranks(_ddp_worker, tmp_path)
    r0 = torch.load(os.path.join(out, '0.pth'), weights_only=False)
    r1 = torch.load(os.path.join(out, '1.pth'), weights_only=False)
    assert sorted(r0) == sorted(r1) and len(r0) == 2 * len(MASKED)
    for name in r0:
        assert torch.equal(r0[name], r1[name]), name


class RecordEnabled(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.enabled = []

    def before_train_epoch(self, runner):
        self.enabled.append(quant_state(runner.model)['enabled'])


def test_epoch_based_switch_from_config_fragment(tmp_path):
    from mmengine.config import Config

    root = os.path.join(os.path.dirname(__file__), '..', '..')
    cfg = Config.fromfile(
        os.path.join(root, 'configs', '_base_', 'gpusq', 'qat_int4.py')
    )
    qat = dict(cfg.gpusq_qat_hook)
    assert qat.pop('type') == 'gpusq_mm.QATHook'
    assert qat['quantization'] == 'int4'
    qat.update(begin_epoch=1, num_batches=2)
    record = RecordEnabled()
    runner = _runner(
        tmp_path,
        'epochs',
        qat=qat,
        hooks=[record],
        train_cfg=dict(by_epoch=True, max_epochs=2),
        log_processor=dict(by_epoch=True),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=100)),
    )
    runner.train()
    assert record.enabled == [0, 2 * len(MASKED)]
    _assert_qat_sparse(runner.model, bits=4)


def test_calibration_with_infinite_sampler_and_persistent_workers(tmp_path):
    """Iteration-based configs (mmseg's) use an InfiniteSampler with
    persistent workers: calibration must get its batches and training must
    go on afterwards (iterating the train loader itself hung here)."""
    runner = _runner(
        tmp_path,
        'infinite',
        max_iters=8,
        train_dataloader=dict(
            dataset=ToyData(scaled=True),
            sampler=dict(type='InfiniteSampler', shuffle=True),
            collate_fn=dict(type='default_collate'),
            batch_size=4,
            num_workers=1,
            persistent_workers=True,
        ),
    )
    runner.train()
    assert runner.iter == 8
    hook = _hook(runner)
    assert hook.num_calibrations == 1
    model = runner.model
    inputs = [q for n, q in quantizers(model).items() if 'input' in n]
    assert inputs and all(q.enabled for q in inputs)
    assert all(torch.isfinite(q.amax).all() for q in inputs)
