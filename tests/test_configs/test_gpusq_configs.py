"""Every config in configs/gpusq/ runs as its header comment documents.

The command in each config's header comment (``python tools/train.py
configs/gpusq/X.py --cfg-options model.teacher.checkpoint=dense.pth``),
the COCO block of ``configs/gpusq/README.md`` (train, ``dist_train.sh``,
``tools/test.py``, ``check_sparsity.py``) and the README's upstream
``--gpusq dense.pth`` command are read from those files at test time and
run in a scratch folder laid out as they assume: ``configs/``, ``tools/``,
``data/coco/``, ``data/ade/ADEChallengeData2016/``, ``data/imagenet/``
(see ``tests/test_docs/layouts.py``) and ``dense.pth``. Only ``python`` is
this interpreter. What is adapted, and nothing else:

- the data: a few generated images per split in the upstream layouts and
  label sets; detection / segmentation images are strips that the
  configs' keep-ratio resizes leave as they are;
- ``dense.pth``: a seeded, randomly initialised model of the config's own
  architecture (the real configs' architectures, Swin-L DINO included),
  standing in for the trained dense model;
- appended ``--cfg-options``: the schedule length only (2 epochs or
  iterations, the QAT stage from the second, one validation and one
  checkpoint at the end), and for UperNet the size the data preprocessor
  pads every training batch to (512x512 by default: 4x the cost of the
  whole run on a CPU; the images themselves are 32 pixels high) and for
  Mask R-CNN the score threshold of its test_cfg (0.0: the randomly
  initialised model scores below the default 0.05, which would leave the
  evaluator nothing to score), also appended to ``tools/test.py``;
- ``dist_train.sh ... 8``: run as 2 CPU processes (gloo), not 8.
"""

import os
import os.path as osp
import runpy
import sys

import pytest
import torch
from test_docs.commands import (
    REPO_ROOT,
    argv_of,
    bash_block_commands,
    env,
    free_port,
    header_commands,
    inline_commands,
    link_repo,
    one_command,
    run_in_process,
    run_subprocess,
    short_schedule,
)
from test_docs.layouts import write_all

pytestmark = pytest.mark.slow

CFG_DIR = osp.join(REPO_ROOT, 'configs', 'gpusq')
CFG_README = 'configs/gpusq/README.md'
MASKRCNN = 'swin_maskrcnn_coco.py'
#: a randomly initialised Mask R-CNN scores below the default 0.05
NO_SCORE_THR = 'model.architecture.test_cfg.rcnn.score_thr=0.0'

#: config -> its main metric
CASES = {
    'swin_maskrcnn_coco.py': 'coco/bbox_mAP',
    'detr_r50_coco.py': 'coco/bbox_mAP',
    'dino_swin_coco.py': 'coco/bbox_mAP',
    'upernet_swin_ade20k.py': 'mIoU',
    'swin_tiny_in1k.py': 'accuracy/top1',
}


def schedule(name: str) -> list:
    """The appended ``--cfg-options`` (see the module doc)."""
    opts = short_schedule(f'configs/gpusq/{name}')
    if name == MASKRCNN:
        opts.append(NO_SCORE_THR)
    if name.startswith('upernet'):
        opts.append('model.architecture.data_preprocessor.size=(64,512)')
    return opts


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> str:
    return write_all(str(tmp_path_factory.mktemp('layout') / 'data'))


@pytest.fixture(scope='module')
def dense_of(tmp_path_factory, dense_checkpoint):
    """``dense_of(config) -> path``: one dense checkpoint per config."""
    made, root = {}, tmp_path_factory.mktemp('dense')

    def make(name: str) -> str:
        if name not in made:
            from mmengine.config import Config

            cfg = Config.fromfile(osp.join(CFG_DIR, name))
            upstream = dict(
                model=cfg.model.architecture.to_dict(),
                default_scope=cfg.default_scope,
            )
            path = str(root / name.replace('.py', '.pth'))
            made[name] = dense_checkpoint(upstream, path)[1]
        return made[name]

    return make


def _scratch(tmp_path, data_dir, dense: str):
    link_repo(tmp_path)
    os.symlink(data_dir, tmp_path / 'data')
    os.symlink(dense, tmp_path / 'dense.pth')
    return tmp_path


def _check_trained(runner, metric: str) -> float:
    from gpusq_mm.sparsity import is_2to4, masked_layers

    model = runner.model
    assert int(model.gpusq_stage) == 2, 'QAT stage not reached'
    value = runner.message_hub.get_scalar(f'val/{metric}').current()
    assert 0.0 <= float(value) <= 100.0, (metric, value)
    layers = masked_layers(model.architecture)
    assert layers, 'no 2:4 layers in the student'
    for name, module in layers.items():
        assert is_2to4(module.weight.detach()), name
    final = osp.join(runner.work_dir, 'student_final.pth')
    state = torch.load(final, map_location='cpu')['state_dict']
    assert not any(k.startswith('teacher') for k in state)
    return float(value)


def test_every_config_documents_its_command():
    import glob

    found = {osp.basename(p) for p in glob.glob(osp.join(CFG_DIR, '*.py'))}
    assert found == set(CASES), f'untested configs: {found ^ set(CASES)}'
    for name in CASES:
        rel = f'configs/gpusq/{name}'
        assert header_commands(rel) == [
            f'python tools/train.py {rel} '
            '--cfg-options model.teacher.checkpoint=dense.pth'
        ], rel


@pytest.mark.parametrize('name', sorted(set(CASES) - {MASKRCNN}))
def test_header_command(name, tmp_path, data_dir, dense_of, monkeypatch):
    """The header command of each config (Mask R-CNN's: the COCO block)."""
    metric = CASES[name]
    cwd = _scratch(tmp_path, data_dir, dense_of(name))
    (command,) = header_commands(f'configs/gpusq/{name}')
    runner = run_in_process(
        argv_of(command), cwd, monkeypatch, extra=schedule(name)
    )
    assert runner.work_dir == str(cwd / 'work_dirs' / name[:-3])
    _check_trained(runner, metric)


def test_coco_block_of_the_configs_readme(
    tmp_path, data_dir, dense_of, monkeypatch, capsys
):
    """``configs/gpusq/README.md``'s COCO block, in order: train (the
    config's header command), the same on several processes, test the
    student (no teacher needed), check its 2:4 layers."""
    commands = bash_block_commands(CFG_README)
    assert len(commands) == 4, commands
    train, dist, test, check = commands
    assert header_commands(f'configs/gpusq/{MASKRCNN}') == [train]
    dense = dense_of(MASKRCNN)
    cwd = _scratch(tmp_path, data_dir, dense)
    runner = run_in_process(
        argv_of(train), cwd, monkeypatch, extra=schedule(MASKRCNN)
    )
    val = _check_trained(runner, 'coco/bbox_mAP')
    del runner

    # tools/test.py: the student alone, with the config's evaluator; the
    # dense checkpoint is gone. Same weights, same images: the training's
    # last validation (after the last QAT step) exactly.
    os.remove(cwd / 'dense.pth')
    metrics = run_in_process(
        argv_of(test), cwd, monkeypatch, ['--cfg-options', NO_SCORE_THR]
    )
    assert metrics['coco/bbox_mAP'] == val

    # check_sparsity.py (a script without main(argv)): exit status 0
    argv = argv_of(check)
    monkeypatch.setattr(sys, 'argv', argv[1:])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(argv[1], run_name='__main__')
    out = capsys.readouterr().out
    assert exit_.value.code == 0, out[-3000:]
    assert 'NOT 2:4' not in out and '2:4 weights:' in out

    # dist_train.sh with 2 CPU processes for the documented 8 GPUs
    os.symlink(dense, cwd / 'dense.pth')
    argv = argv_of(dist) + schedule(MASKRCNN)
    assert argv[:4] == ['bash', 'tools/dist_train.sh', argv[2], '8']
    argv[3] = '2'
    os.rename(cwd / 'work_dirs', cwd / 'single')
    run_subprocess(argv, cwd, timeout=1200, env=env(PORT=str(free_port())))
    final = cwd / 'work_dirs' / MASKRCNN[:-3] / 'student_final.pth'
    assert torch.load(final, map_location='cpu')['meta']['gpusq_stage'] == 2


def test_upstream_config_with_the_gpusq_flag(
    tmp_path, data_dir, dense_of, monkeypatch
):
    """README: ``python tools/train.py mmdet::swin/mask-rcnn_swin-t-p4-
    w7_fpn_1x_coco.py --gpusq dense.pth``, which is also the configs
    README's ``python tools/train.py UPSTREAM_CONFIG --gpusq DENSE.pth``
    with its two placeholders filled in. The upstream model is the one of
    swin_maskrcnn_coco.py: the same dense checkpoint fits. Schedule: 2
    epochs, QAT (``qat_ratio``) in the second."""
    command = one_command(
        inline_commands('README.md'), 'python tools/train.py mmdet::'
    )
    template = one_command(
        inline_commands(CFG_README), 'python tools/train.py UPSTREAM_CONFIG'
    )
    upstream = command.split()[2]
    argv = argv_of(command)
    assert argv == argv_of(
        template, {'UPSTREAM_CONFIG': upstream, 'DENSE.pth': 'dense.pth'}
    )
    cwd = _scratch(tmp_path, data_dir, dense_of(MASKRCNN))
    extra = [
        '--cfg-options',
        'train_cfg.max_epochs=2',
        'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2',
        'custom_hooks.0.qat_ratio=0.5',
        NO_SCORE_THR,
    ]
    runner = run_in_process(argv, cwd, monkeypatch, extra=extra)
    assert runner.work_dir == str(
        cwd / 'work_dirs' / 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco_gpusq'
    )
    _check_trained(runner, 'coco/bbox_mAP')
