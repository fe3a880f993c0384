"""DDP on a CPU machine: the launcher path, disjoint calibration shards and
statistics that every rank agrees on."""

import json
import os
import os.path as osp
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config
from test_engine.toy import init_gloo, run_two_ranks

import gpusq_mm  # noqa: F401
from gpusq_mm.distillation import LossStatistics
from gpusq_mm.utils.dist import (
    all_reduce_loss_statistics,
    setup_cpu_distributed,
    shard_indices,
)

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CLS_DENSE = osp.join(
    REPO_ROOT, 'configs', 'gpusq', 'demo', 'swin_cls_tiny_dense.py'
)
CLS_GPUSQ = osp.join(
    REPO_ROOT, 'configs', 'gpusq', 'demo', 'swin_cls_tiny_gpusq.py'
)


# -- the launcher helper ------------------------------------------------------
def test_nothing_to_do_without_the_pytorch_launcher():
    cfg = Config(dict(launcher='none'))
    assert setup_cpu_distributed(cfg, cuda=False) is None
    cfg = Config(dict(launcher='pytorch'))
    assert setup_cpu_distributed(cfg, cuda=True) is None  # MMEngine's path


def test_explicit_nccl_without_cuda_fails_clearly():
    cfg = Config(dict(launcher='pytorch'))
    with pytest.raises(RuntimeError) as info:
        setup_cpu_distributed(
            cfg, {'env_cfg.dist_cfg.backend': 'nccl'}, cuda=False
        )
    text = str(info.value)
    assert "env_cfg.dist_cfg.backend='nccl' needs CUDA" in text
    assert "backend='gloo'" in text


def test_missing_torchrun_environment(monkeypatch):
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    cfg = Config(dict(launcher='pytorch'))
    with pytest.raises(RuntimeError, match='tools/dist_train.sh'):
        setup_cpu_distributed(cfg, cuda=False)


def test_gloo_group_started_and_wrapper_set_on_cpu(monkeypatch):
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(_free_port()))
    cfg = Config(
        dict(
            launcher='pytorch',
            env_cfg=dict(dist_cfg=dict(backend='nccl', timeout=60)),
        )
    )
    try:
        assert setup_cpu_distributed(cfg, cuda=False) == 'gloo'
        assert torch.distributed.get_backend() == 'gloo'
    finally:
        torch.distributed.destroy_process_group()
    assert cfg.env_cfg.dist_cfg == dict(backend='gloo', timeout=60)
    assert cfg.model_wrapper_cfg == dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=False,
        device_ids=None,
    )


def test_shards_are_disjoint_and_cover_the_set():
    shards = [shard_indices(10, r, 2) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(10))
    assert not set(shards[0]) & set(shards[1])
    assert (
        shard_indices(10, 0, 1)
        == torch.randperm(
            10, generator=torch.Generator().manual_seed(0)
        ).tolist()
    )  # one process: the old seeded shuffle


# -- statistics all-reduce ----------------------------------------------------
def _stats_worker(rank, port, tmp_path, out):
    init_gloo(rank, port)
    stats = LossStatistics()
    refs = (stats.mean, stats.count, stats.factors)
    # rank 0 sees 3 steps, rank 1 one step of other losses
    steps = [[1.0, 4.0], [2.0, 4.0], [3.0, 4.0]] if rank == 0 else [[9, 1]]
    for losses in steps:
        stats.update(['a', 'b'], [torch.tensor(v) for v in losses])
    assert all_reduce_loss_statistics(stats)
    stats.freeze('inverse')
    same = [
        a is b for a, b in zip(refs, (stats.mean, stats.count, stats.factors))
    ]
    torch.save(
        dict(
            mean=stats.mean.clone(),
            count=stats.count.clone(),
            factors=stats.factors.clone(),
            same=same,
        ),
        os.path.join(out, f'stats{rank}.pth'),
    )
    torch.distributed.destroy_process_group()


def test_ddp_ranks_agree_on_stage1_statistics(tmp_path):
    out = run_two_ranks(_stats_worker, tmp_path)
    r0, r1 = (torch.load(osp.join(out, f'stats{r}.pth')) for r in (0, 1))
    for key in ('mean', 'count', 'factors'):
        assert torch.equal(r0[key], r1[key]), key
    # the count-weighted mean over both ranks' 4 observations
    expected = torch.tensor([(1 + 2 + 3 + 9) / 4, (4 * 3 + 1) / 4])
    assert torch.allclose(r0['mean'], expected.double())
    assert r0['count'].tolist() == [4, 4]
    assert r0['same'] == [True, True, True]  # buffers updated in place


class _Loader:
    def __init__(self, dataset):
        self.dataset = dataset
        self.batch_size = 4
        self.collate_fn = None


def _small_shard_worker(rank, port, tmp_path, out):
    from gpusq_mm.engine.hooks.calibration_data import (
        calibration_loader,
        check_calibration_set,
    )

    init_gloo(rank, port)
    loader = calibration_loader(_Loader([torch.zeros(2)]))  # 1 sample
    try:
        check_calibration_set(loader, 4)
        message = None
    except RuntimeError as e:
        message = str(e)
    with open(os.path.join(out, f'shard{rank}.txt'), 'w') as f:
        f.write(f'{len(loader.dataset)}|{message}')
    torch.distributed.destroy_process_group()


def test_calibration_set_smaller_than_the_ranks_fails_on_all(tmp_path):
    out = run_two_ranks(_small_shard_worker, tmp_path)
    texts = [open(osp.join(out, f'shard{r}.txt')).read() for r in (0, 1)]
    assert [t.split('|')[0] for t in texts] == ['1', '0']
    for text in texts:  # every rank stops, not only the empty one
        assert 'calibration set is empty' in text
        assert 'list has 1 samples for 2 rank(s)' in text


# -- the whole demo pipeline through tools/dist_train.sh ----------------------
DUMP_HOOK = textwrap.dedent(
    """
    import torch
    from mmengine.dist import get_rank
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper
    from mmengine.registry import HOOKS


    @HOOKS.register_module()
    class RankDump(Hook):
        priority = 'LOWEST'

        def __init__(self, out):
            self.out = out
            self.val_sizes, self.val_samples, self.metrics = [], 0, []

        def before_val(self, runner):
            metric = runner.val_evaluator.metrics[0]
            if getattr(metric, '_dump_wrapped', False):
                return
            real = metric.compute_metrics

            def compute(results):
                self.val_sizes.append(len(results))
                return real(results)

            metric.compute_metrics = compute
            metric._dump_wrapped = True

        def after_val_iter(self, runner, batch_idx, data_batch=None,
                           outputs=None):
            self.val_samples += len(outputs)

        def after_val_epoch(self, runner, metrics=None):
            self.metrics.append(dict(metrics or {}))

        def after_train(self, runner):
            model = runner.model
            algo = model.module if is_model_wrapper(model) else model
            params = {id(p) for p in model.parameters()}
            teachers = [algo.dense_teacher, algo._qat_teacher]
            info = dict(
                wrapper=type(model).__name__,
                teacher_params_in_ddp=any(
                    id(p) in params
                    for t in teachers if t is not None
                    for p in t.parameters()),
                teacher_types=[type(t).__name__ for t in teachers],
                val_sizes=self.val_sizes,
                val_samples=self.val_samples,
                metrics=self.metrics,
                stage=algo.stage,
                factors=algo.feature_kd.stats.factor_dict(),
            )
            state = {k: v.detach().clone()
                     for k, v in algo.state_dict().items()}
            torch.save(dict(info=info, state=state),
                       f'{self.out}/rank{get_rank()}.pth')
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_dist_train_sh_runs_the_demo_pipeline_on_cpu(
    tmp_path, cls_cfg_options, dense_checkpoint
):
    _, teacher = dense_checkpoint(CLS_DENSE, str(tmp_path / 'dense.pth'))
    (tmp_path / 'rank_dump.py').write_text(DUMP_HOOK)
    config = tmp_path / 'cls_gpusq_ddp.py'
    # the demo config plus a hook that dumps each rank's state
    config.write_text(
        textwrap.dedent(
            f"""
            _base_ = [{CLS_GPUSQ!r}]
            custom_imports = dict(
                imports=['gpusq_mm', 'rank_dump'],
                allow_failed_imports=False)
            custom_hooks = [
                dict(type='gpusq_mm.SparsityHook'),
                dict(type='gpusq_mm.QATHook', begin_epoch=1,
                     num_batches=8, lr_factor=0.05),
                dict(type='gpusq_mm.StudentCheckpointHook'),
                dict(type='RankDump', out={str(tmp_path)!r}),
            ]
            """
        )
    )
    loaders = [
        f'{s}_dataloader.{k}'
        for s in ('train', 'val', 'test')
        for k in ('num_workers=0', 'persistent_workers=False')
    ]
    work_dir = str(tmp_path / 'work')
    cmd = [
        'bash',
        'tools/dist_train.sh',
        str(config),
        '2',
        '--work-dir',
        work_dir,
        '--cfg-options',
        f'model.teacher.checkpoint={teacher}',
        'train_cfg.max_epochs=2',
        'train_cfg.val_interval=1',
        'param_scheduler.0.end=1',
        'param_scheduler.1.begin=1',
        'param_scheduler.1.end=2',
        'default_hooks.checkpoint.interval=1',
        'randomness.seed=0',
        *loaders,
        *cls_cfg_options,
    ]
    env = dict(
        os.environ,
        PYTHONPATH=str(tmp_path),
        PORT=str(_free_port()),
        PATH=osp.dirname(sys.executable) + os.pathsep + os.environ['PATH'],
    )
    proc = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pth') for r in (0, 1))
    for info in (r0['info'], r1['info']):
        assert info['wrapper'] == 'MMDistributedDataParallel'
        assert not info['teacher_params_in_ddp']
        assert info['stage'] == 2
        # 2 validations of 12 images, each rank runs half of them
        assert info['val_samples'] == 2 * 6
    assert r0['info']['val_sizes'] == [12, 12]  # gathered from both ranks
    assert r0['info']['metrics'] == r1['info']['metrics']
    assert r0['info']['factors'] == r1['info']['factors']
    assert r0['info']['factors']  # frozen from stage-1 statistics
    s0, s1 = r0['state'], r1['state']
    assert sorted(s0) == sorted(s1)
    kinds = {'sparsity_mask': 0, '_amax': 0, 'stats.': 0, 'qat_teacher.': 0}
    for key in s0:
        assert torch.equal(s0[key], s1[key]), key
        for kind in kinds:
            kinds[kind] += kind in key
    assert all(kinds.values()), kinds
    saved = torch.load(osp.join(work_dir, 'epoch_2.pth'))['state_dict']
    for key, value in s0.items():
        assert torch.equal(saved[key], value), key
    assert osp.isfile(osp.join(work_dir, 'student_final.pth'))

    # tools/dist_test.sh on the same CPU ranks: the gathered metric of the
    # last checkpoint equals the last validation of the training run
    out = str(tmp_path / 'metrics.json')
    env['PORT'] = str(_free_port())
    cmd = [
        'bash',
        'tools/dist_test.sh',
        str(config),
        osp.join(work_dir, 'epoch_2.pth'),
        '2',
        '--work-dir',
        str(tmp_path / 'test'),
        '--out',
        out,
        '--cfg-options',
        f'model.teacher.checkpoint={teacher}',
        *loaders,
        *cls_cfg_options,
    ]
    proc = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(out) as f:
        metrics = json.load(f)
    assert metrics == r0['info']['metrics'][-1]
