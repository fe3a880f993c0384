"""Exact resume of the demo GPUSQ pipeline from a checkpoint of each stage.

One uninterrupted run of the demo classifier config (8 images, 1 iteration per
epoch: 2 epochs of 2:4 + KD, then 2 of QAT) records, before every
iteration, the whole algorithm state (student weights, masks, amax,
stage, stage-1 statistics, frozen factors, the QAT teacher) and the lr,
and each iteration's loss. Runs resumed through ``tools/train.py
--resume PATH`` / ``--resume`` (auto) from checkpoints taken right after
the dense weights loaded, mid sparse fine-tune, right after calibration
and mid-QAT must hold the bit-identical state and lr before their next
iteration, and that iteration's loss must equal the uninterrupted one.
"""

import importlib.util
import os.path as osp
import shutil

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

pytestmark = pytest.mark.slow

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO_ROOT, 'configs', 'gpusq', 'demo')
CLS_DENSE = osp.join(DEMO, 'swin_cls_tiny_dense.py')
CLS_GPUSQ = osp.join(DEMO, 'swin_cls_tiny_gpusq.py')

#: run name -> {'state': {iter: state}, 'lr': {iter: lrs}, 'loss': {...}}
RECORDS: dict = {}


@HOOKS.register_module(force=True)
class ResumeRecorder(Hook):
    """Records state / lr / loss; saves the two extra resume points."""

    priority = 'HIGHEST'  # before_train: before SparsityHook prunes

    def __init__(self, run: str, save_extra: bool = False, stop_at=None):
        self.run = run
        self.save_extra = save_extra
        self.stop_at = stop_at  # stop after this iteration (the schedule
        # stays whole: a shortened one would never reach QAT, an error)
        RECORDS[run] = dict(state={}, lr={}, loss={})

    def _save(self, runner, name, epoch):
        runner.save_checkpoint(
            runner.work_dir, name, meta=dict(epoch=epoch, iter=runner.iter)
        )

    def before_train(self, runner):
        if self.save_extra:  # the dense weights are loaded, nothing else
            self._save(runner, 'dense_loaded.pth', 0)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = runner.model
        algo = model.module if is_model_wrapper(model) else model
        rec = RECORDS[self.run]
        rec['state'][runner.iter] = {
            k: v.detach().clone() for k, v in algo.state_dict().items()
        }
        rec['lr'][runner.iter] = [
            g['lr'] for g in runner.optim_wrapper.optimizer.param_groups
        ]
        if self.save_extra and runner.iter == 2:  # QAT just calibrated
            self._save(runner, 'calibrated.pth', runner.epoch)

    def after_train_iter(
        self, runner, batch_idx, data_batch=None, outputs=None
    ):
        RECORDS[self.run]['loss'][runner.iter] = float(outputs['loss'])
        if self.stop_at is not None and runner.iter >= self.stop_at:
            runner.train_loop.stop_training = True


def _train(argv):
    spec = importlib.util.spec_from_file_location(
        '_tool_train', osp.join(REPO_ROOT, 'tools', 'train.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def _config(tmp_path, run: str, save_extra=False, stop_at=None) -> str:
    """The demo config with QAT at epoch 2 and the recorder appended."""
    path = tmp_path / f'{run}.py'
    path.write_text(
        f'_base_ = {CLS_GPUSQ!r}\n'
        'custom_hooks = [\n'
        "    dict(type='gpusq_mm.GPUSQHook', qat_begin_epoch=2,\n"
        '         num_batches=8, lr_factor=0.05),\n'
        f"    dict(type='ResumeRecorder', run={run!r},\n"
        f'         save_extra={save_extra!r}, stop_at={stop_at!r}),\n'
        ']\n'
    )
    return str(path)


def _options(teacher, cls_cfg_options, epochs):
    loaders = [
        f'{s}_dataloader.{k}'
        for s in ('train', 'val', 'test')
        for k in ('num_workers=0', 'persistent_workers=False')
    ]
    return [
        '--cfg-options',
        f'model.teacher.checkpoint={teacher}',
        f'train_cfg.max_epochs={epochs}',
        'train_cfg.val_begin=100',  # no validation
        'param_scheduler.0.end=2',
        'param_scheduler.1.begin=2',
        'param_scheduler.1.end=4',
        'default_hooks.checkpoint.interval=1',
        'default_hooks.checkpoint.max_keep_ckpts=10',
        'randomness.seed=0',
        'train_dataloader.dataset.indices=8',  # 8 images, one batch
        # deterministic batches: no random crop / flip / drop path
        'train_dataloader.dataset.pipeline.1.crop_ratio_range=(1.0,1.0)',
        'train_dataloader.dataset.pipeline.1.aspect_ratio_range=(1.0,1.0)',
        'train_dataloader.dataset.pipeline.2.prob=0.0',
        'model.architecture.backbone.drop_path_rate=0.0',
        *loaders,
        *cls_cfg_options,
    ]


def _assert_same_state(resumed: dict, reference: dict, where: str):
    assert sorted(resumed) == sorted(reference), where
    for key, value in reference.items():
        assert torch.equal(resumed[key], value), f'{where}: {key}'


def test_exact_resume_from_each_stage(
    tmp_path, cls_cfg_options, dense_checkpoint
):
    _, teacher = dense_checkpoint(CLS_DENSE, str(tmp_path / 'dense.pth'))
    full = str(tmp_path / 'full')
    _train(
        [_config(tmp_path, 'full', save_extra=True), '--work-dir', full]
        + _options(teacher, cls_cfg_options, 4)
    )
    ref = RECORDS['full']
    assert sorted(ref['loss']) == [0, 1, 2, 3]
    stages = [int(ref['state'][i]['gpusq_stage']) for i in range(4)]
    assert stages == [1, 1, 2, 2]  # 0 -> 1 in GPUSQHook.before_train
    assert any(k.startswith('qat_teacher.') for k in ref['state'][2])
    assert not any(k.startswith('qat_teacher.') for k in ref['state'][1])

    points = {  # checkpoint -> the iteration it resumes at
        'dense_loaded.pth': 0,  # stage 0: masks not computed yet
        'epoch_1.pth': 1,  # mid sparse fine-tune
        'calibrated.pth': 2,  # right after calibration, no QAT step yet
        'epoch_3.pth': 3,  # mid-QAT (resumed with --resume auto)
    }
    saved0 = torch.load(osp.join(full, 'dense_loaded.pth'))
    assert int(saved0['state_dict']['gpusq_stage']) == 0
    for name, it in points.items():
        run = f'resume_{it}'
        work = str(tmp_path / run)
        if name == 'epoch_3.pth':
            shutil.copytree(full, work)
            with open(osp.join(work, 'last_checkpoint'), 'w') as f:
                f.write(osp.join(work, name))
            resume = ['--resume']
        else:
            resume = ['--resume', osp.join(full, name)]
        _train(
            [_config(tmp_path, run, stop_at=it), '--work-dir', work]
            + resume
            + _options(teacher, cls_cfg_options, 4)
        )
        got = RECORDS[run]
        assert sorted(got['loss']) == [it], (name, got['loss'])
        _assert_same_state(got['state'][it], ref['state'][it], name)
        assert got['lr'][it] == ref['lr'][it], name
        assert got['loss'][it] == ref['loss'][it], name

    # a branch, as the demo's INT4 rows: resume the end of stage 1 with
    # INT4 quantization instead. The stage-1 state carries over exactly;
    # the QAT stage that follows is the INT4 one (another forward).
    work = str(tmp_path / 'branch_int4')
    _train(
        [_config(tmp_path, 'branch', stop_at=2), '--work-dir', work]
        + ['--resume', osp.join(full, 'epoch_2.pth')]
        + _options(teacher, cls_cfg_options, 4)
        + ['model.quantization=int4']
    )
    got = RECORDS['branch']
    assert sorted(got['loss']) == [2]
    state, ref_state = got['state'][2], ref['state'][2]
    assert sorted(state) == sorted(ref_state)
    for key, value in ref_state.items():
        if '_quantizer.' not in key:  # weights, masks, stage, statistics
            assert torch.equal(state[key], value), key
    assert got['lr'][2] == ref['lr'][2]
    assert got['loss'][2] != ref['loss'][2]  # 4-bit, not 8-bit, fake quant
