"""EMAHook next to our hooks, in both registration orders: the averaged
weights checkpoints hold stay 2:4 and the averaged copy is quantized."""

import os.path as osp

import pytest
import torch
from test_engine.toy import MASKED, ToyData, toy_runner

import gpusq_mm  # noqa: F401
from gpusq_mm.quantization import is_quantized, quantizers
from gpusq_mm.sparsity import is_2to4

OURS = [
    dict(type='gpusq_mm.SparsityHook'),
    dict(type='gpusq_mm.QATHook', begin_iter=3, num_batches=2, progress=False),
]
EMA = dict(type='EMAHook', momentum=0.5, priority='ABOVE_NORMAL')


@pytest.mark.parametrize('ema_first', [True, False])
def test_ema_weights_stay_2to4_and_quantized(tmp_path, ema_first):
    hooks = [EMA, *OURS] if ema_first else [*OURS, EMA]
    runner = toy_runner(
        tmp_path,
        f'ema_{ema_first}',
        custom_hooks=hooks,
        max_iters=6,
        ckpt_interval=6,
        data=ToyData(scaled=True),
        optimizer=dict(type='SGD', lr=0.1, momentum=0.9),
    )
    runner.train()
    ema_hook = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook')
    ema = ema_hook.ema_model.module
    live = {n: q for n, q in quantizers(runner.model).items()}
    for name in MASKED:
        layer = ema.get_submodule(name)
        assert is_quantized(layer), name
        assert is_2to4(layer.weight), name
    for name, q in quantizers(ema).items():
        assert q.enabled == live[name].enabled, name
        assert torch.equal(q.amax, live[name].amax), name
    # the EMA differs from the live weights: it really averaged
    assert not torch.equal(
        ema.get_submodule('neck').weight, runner.model.neck.weight
    )
    ckpt = torch.load(osp.join(runner.work_dir, 'iter_6.pth'))
    state = ckpt['state_dict']  # EMAHook swapped the averaged weights in
    for name in MASKED:
        weight = state[f'{name}.weight']
        assert is_2to4(weight), name
        assert torch.equal(weight, ema.get_submodule(name).weight), name
        assert bool(state[f'{name}._input_quantizer._enabled']), name
        assert torch.isfinite(state[f'{name}._input_quantizer._amax']).all()
    ema_state = ckpt['ema_state_dict']
    for name in MASKED:
        assert is_2to4(ema_state[f'module.{name}.weight']), name
