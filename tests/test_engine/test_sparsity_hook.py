"""SparsityHook in a real MMEngine Runner on a toy model."""

import copy
import os

import pytest
import torch
from mmengine.hooks import Hook

import gpusq_mm  # noqa: F401  (registers gpusq_mm.SparsityHook)
from gpusq_mm.sparsity import (
    compute_2to4_mask,
    is_2to4,
    masked_layers,
)

from .toy import (
    MASKED,
    ToyAlgorithm,
    ToyModel,
    init_gloo,
    run_two_ranks,
    toy_runner,
)


class PerturbOnRank1(Hook):
    """Makes rank 1's weights differ before masks are computed."""

    priority = 'VERY_HIGH'

    def before_train(self, runner):
        if runner.rank == 1:
            with torch.no_grad():
                for p in runner.model.module.parameters():
                    p.normal_()


_runner = toy_runner


def _masks(model):
    return {
        n: m.sparsity_mask.clone() for n, m in masked_layers(model).items()
    }


def _assert_sparse(model, masks):
    assert sorted(masks) == sorted(MASKED)
    layers = masked_layers(model)
    for name, mask in masks.items():
        weight = layers[name].weight
        assert torch.equal(layers[name].sparsity_mask, mask), name
        assert not weight[~mask].any(), name
        assert weight[mask].all(), name  # kept weights train on
        assert is_2to4(weight), name


class RecordMasks(Hook):
    priority = 'LOWEST'

    def before_train(self, runner):
        model = runner.model
        self.initial = _masks(getattr(model, 'architecture', model))
        self.weights = {
            n: m.weight.detach().clone()
            for n, m in masked_layers(model).items()
        }


@pytest.mark.parametrize(
    'optimizer',
    [
        dict(type='AdamW', lr=0.01, weight_decay=0.1),
        dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-3),
    ],
    ids=['adamw', 'sgd_momentum'],
)
def test_masks_survive_optimizers_and_ema(tmp_path, optimizer):
    record = RecordMasks()
    runner = _runner(
        tmp_path,
        optimizer['type'],
        optimizer=optimizer,
        hooks=[dict(type='EMAHook', momentum=0.2), record],
    )
    runner.train()
    model = runner.model
    assert sorted(record.initial) == MASKED
    for name, mask in record.initial.items():
        assert mask.sum() * 2 == mask.numel()
    _assert_sparse(model, record.initial)
    assert 'head.fc' not in masked_layers(model)  # prediction layer
    ema = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook')
    _assert_sparse(ema.ema_model.module, record.initial)
    # the masks were computed once, from the weights at the start
    trained = {n: m.weight for n, m in masked_layers(model).items()}
    assert any(not torch.equal(trained[n], record.weights[n]) for n in trained)


def test_load_from_dense_then_resume_keeps_masks(tmp_path):
    # a dense checkpoint, as a teacher would be
    dense = ToyModel()
    torch.nn.init.normal_(dense.backbone[0].weight)
    ckpt = tmp_path / 'dense.pth'
    torch.save(dict(state_dict=dense.state_dict(), meta=dict()), ckpt)
    runner = _runner(tmp_path, 'first', load_from=str(ckpt), max_iters=10)
    runner.train()
    first = _masks(runner.model)
    expected = compute_2to4_mask(dense.backbone[0].weight)
    assert torch.equal(first['backbone.0'], expected)  # from loaded weights

    # change the checkpoint's weights so that recomputing would differ
    saved = tmp_path / 'first' / 'iter_10.pth'
    state = torch.load(saved, map_location='cpu', weights_only=False)
    for name in MASKED:
        key = f'{name}.weight'
        state['state_dict'][key] = torch.randn_like(state['state_dict'][key])
        assert not torch.equal(
            compute_2to4_mask(state['state_dict'][key]), first[name]
        )
    torch.save(state, saved)

    runner = _runner(
        tmp_path, 'second', load_from=str(saved), resume=True, max_iters=14
    )
    runner.train()
    assert runner.iter == 14
    _assert_sparse(runner.model, first)


def test_only_the_student_of_an_algorithm_is_pruned(tmp_path):
    model = ToyAlgorithm()
    teacher = copy.deepcopy(model.teacher.state_dict())
    runner = _runner(tmp_path, 'algo', model=model, max_iters=4)
    runner.train()
    assert sorted(masked_layers(model)) == [
        f'architecture.{n}' for n in MASKED
    ]
    _assert_sparse(model.architecture, _masks(model.architecture))
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, teacher[key])
    assert 'architecture.neck.sparsity_mask' in model.state_dict()


def _ddp_worker(rank, port, tmp_path, out):
    init_gloo(rank, port)
    runner = _runner(
        tmp_path,
        'ddp',
        hooks=[PerturbOnRank1()],
        launcher='pytorch',
        cfg=dict(
            model_wrapper_cfg=dict(
                type='MMDistributedDataParallel', device_ids=None
            )
        ),
        max_iters=6,
    )
    runner.train()
    model = runner.model.module
    torch.save(
        dict(masks=_masks(model), weights=model.state_dict()),
        os.path.join(out, f'rank{rank}.pth'),
    )
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_hold_identical_masks(tmp_path):
    out = run_two_ranks(_ddp_worker, tmp_path)
    r0 = torch.load(os.path.join(out, 'rank0.pth'), weights_only=False)
    r1 = torch.load(os.path.join(out, 'rank1.pth'), weights_only=False)
    assert sorted(r0['masks']) == MASKED
    for name in MASKED:
        assert torch.equal(r0['masks'][name], r1['masks'][name])
        for rank in (r0, r1):
            weight = rank['weights'][f'{name}.weight']
            assert not weight[~r0['masks'][name]].any()


class RecordKept(Hook):
    priority = 'LOWEST'

    def before_train(self, runner):
        weight = runner.model.backbone[2].weight
        self.kept = float(weight.abs().sum())


def test_permutation_in_the_hook(tmp_path):
    kept = {}
    for permute in (False, True):
        record = RecordKept()
        runner = _runner(tmp_path, f'perm{permute}', hooks=[record])
        hook = next(
            h for h in runner.hooks if type(h).__name__ == 'SparsityHook'
        )
        hook.permute = permute
        hook.permute_pairs = [('backbone.0', 'backbone.2')]
        runner.train()
        kept[permute] = record.kept
        _assert_sparse(runner.model, _masks(runner.model))
    assert kept[True] > kept[False]
