"""End to end: ``tools/train.py`` / ``tools/test.py`` on the tiny demo.

Trains the tiny dense Swin Mask R-CNN demo config a few iterations on the
generated COCO-format data, checks that mmdet's CocoMetric reports a real
``coco/bbox_mAP``, evaluates the checkpoint with ``tools/test.py``, and
resumes an interrupted run (this loads an MMEngine checkpoint under
torch's ``weights_only`` safe loading, see ``gpusq_mm.utils.checkpoint``).
"""

import importlib.util
import os.path as osp

import pytest
import torch

pytestmark = pytest.mark.slow

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(
    REPO_ROOT, 'configs', 'gpusq', 'demo', 'swin_maskrcnn_tiny_dense.py'
)
# small and single-process: a few iterations, 2 val images, no workers
FAST = [
    'train_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'val_dataloader.num_workers=0',
    'val_dataloader.persistent_workers=False',
    'test_dataloader.num_workers=0',
    'test_dataloader.persistent_workers=False',
    'val_dataloader.dataset.indices=2',
    'test_dataloader.dataset.indices=2',
    'default_hooks.logger.interval=1',
]


def _tool(name: str):
    path = osp.join(REPO_ROOT, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _options(coco_cfg_options, iters, val=True):
    opts = coco_cfg_options + FAST
    opts += [
        f'train_cfg.max_iters={iters}',
        f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={iters}',
        'param_scheduler.0.end=2',
    ]
    if not val:
        opts.append(f'train_cfg.val_begin={iters + 1}')
    return opts


def test_train_then_test(tmp_path, coco_cfg_options):
    work_dir = str(tmp_path / 'train')
    runner = _tool('train')(
        [CONFIG, '--work-dir', work_dir, '--cfg-options']
        + _options(coco_cfg_options, 3)
    )
    assert runner.iter == 3
    hub = runner.message_hub
    for key in ('val/coco/bbox_mAP', 'val/coco/segm_mAP'):
        value = hub.get_scalar(key).current()
        assert 0.0 <= value <= 1.0, (key, value)  # -1 would mean no GT
    ckpt = osp.join(work_dir, 'iter_3.pth')
    assert osp.isfile(ckpt)

    metrics = _tool('test')(
        [
            CONFIG,
            ckpt,
            '--work-dir',
            str(tmp_path / 'test'),
            '--out',
            str(tmp_path / 'metrics.json'),
            '--cfg-options',
        ]
        + coco_cfg_options
        + FAST
    )
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50'):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
    assert osp.isfile(tmp_path / 'metrics.json')


def test_resume_continues_from_checkpoint(tmp_path, coco_cfg_options):
    work_dir = str(tmp_path / 'resume')
    train = _tool('train')
    first = train(
        [CONFIG, '--work-dir', work_dir, '--cfg-options']
        + _options(coco_cfg_options, 2, val=False)
    )
    assert first.iter == 2
    ckpt = osp.join(work_dir, 'iter_2.pth')
    saved = torch.load(ckpt, map_location='cpu')  # weights_only default
    assert saved['meta']['iter'] == 2 and 'message_hub' in saved
    # a fresh run with --resume (latest checkpoint) goes on to iter 4
    second = train(
        [CONFIG, '--work-dir', work_dir, '--resume', '--cfg-options']
        + _options(coco_cfg_options, 4, val=False)
    )
    assert second.iter == 4
    assert osp.isfile(osp.join(work_dir, 'iter_4.pth'))
    # the optimizer state came back: AdamW's step count went on from 2
    state = second.optim_wrapper.optimizer.state
    steps = {int(s['step']) for s in state.values() if 'step' in s}
    assert steps == {4}, steps
    # and an explicit path resumes the same way
    third = train(
        [
            CONFIG,
            '--work-dir',
            str(tmp_path / 'explicit'),
            '--resume',
            ckpt,
            '--cfg-options',
        ]
        + _options(coco_cfg_options, 3, val=False)
    )
    assert third.iter == 3
