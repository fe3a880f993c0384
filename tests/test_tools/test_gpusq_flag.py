"""The README's ``--gpusq`` commands, run exactly as written.

In a scratch folder laid out as the README assumes (``tools/``,
``configs/``, the generated demo data under ``data/gpusq_demo/cls`` and a
dense checkpoint at ``work_dirs/swin_cls_tiny_dense/epoch_24.pth``):
``tools/train.py CONFIG --gpusq DENSE.pth`` compresses the tiny dense
classifier config (no gpusq config at all: 2:4 + KD, then INT8 QAT over
the last 15 % of its 30 epochs) and ``tools/test.py CONFIG STUDENT --gpusq``
evaluates the student with the config's evaluator, without a teacher. The
commands run in this process (arguments exactly as written, `python`
being this interpreter).
"""

import importlib.util
import os
import os.path as osp
import shlex

import pytest
import torch

pytestmark = pytest.mark.slow

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = 'configs/gpusq/demo/swin_cls_tiny_dense.py'
#: the two commands of the README's "Using it on your model" section
TRAIN = (
    'python tools/train.py configs/gpusq/demo/swin_cls_tiny_dense.py '
    '--gpusq work_dirs/swin_cls_tiny_dense/epoch_24.pth'
)
TEST = (
    'python tools/test.py configs/gpusq/demo/swin_cls_tiny_dense.py '
    'work_dirs/swin_cls_tiny_dense_gpusq/student_final.pth --gpusq'
)


def _readme_has(command: str) -> bool:
    with open(osp.join(REPO_ROOT, 'README.md')) as f:
        text = f.read().replace('\\\n', ' ')
    return ' '.join(command.split()) in ' '.join(text.split())


def _run(command: str, cwd, monkeypatch):
    """Run ``python tools/X.py ARGS`` in ``cwd`` (in this process)."""
    argv = shlex.split(command)
    assert argv[0] == 'python' and argv[1].startswith('tools/')
    monkeypatch.chdir(cwd)
    path = osp.join(str(cwd), argv[1])
    spec = importlib.util.spec_from_file_location('_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv[2:])


def test_readme_gpusq_commands(tmp_path, dense_checkpoint, monkeypatch):
    from gpusq_mm.datasets import generate_task
    from gpusq_mm.engine.hooks import GPUSQHook

    assert _readme_has(TRAIN) and _readme_has(TEST)
    for name in ('tools', 'configs'):
        os.symlink(osp.join(REPO_ROOT, name), tmp_path / name)
    # 6 train / 6 val images: one small batch per epoch
    generate_task('cls', str(tmp_path / 'data' / 'gpusq_demo'), 6, 6)
    os.makedirs(tmp_path / 'work_dirs' / 'swin_cls_tiny_dense')
    dense = tmp_path / 'work_dirs/swin_cls_tiny_dense/epoch_24.pth'
    dense_checkpoint(osp.join(REPO_ROOT, CONFIG), str(dense))
    runner = _run(TRAIN, tmp_path, monkeypatch)
    hook = next(h for h in runner.hooks if isinstance(h, GPUSQHook))
    assert hook.qat.begin_epoch == 20  # round(24 * (1 - 0.15))
    assert runner.epoch == 24 and runner.model.stage == 2
    # the last validation ran after the last step (epoch 24, no EMA model):
    # the weights student_final.pth holds
    last_val = runner.message_hub.get_scalar('val/accuracy/top1').current()
    student = tmp_path / 'work_dirs/swin_cls_tiny_dense_gpusq'
    final = torch.load(student / 'student_final.pth')
    assert final['meta']['gpusq_stage'] == 2
    trained = runner.model.architecture.state_dict()
    assert set(final['state_dict']) <= set(trained)
    for key, value in final['state_dict'].items():
        assert torch.equal(value, trained[key]), key
    del runner, trained
    # evaluating needs no teacher: the dense checkpoint is gone
    os.remove(dense)
    metrics = _run(TEST, tmp_path, monkeypatch)
    # the same student on the same images with the same evaluator: the
    # training's last validation, exactly
    assert metrics['accuracy/top1'] == last_val
    # the same student under the demo's gpusq config, whose default
    # teacher path is that (now absent) dense checkpoint
    again = _run(
        'python tools/test.py configs/gpusq/demo/swin_cls_tiny_gpusq.py '
        'work_dirs/swin_cls_tiny_dense_gpusq/student_final.pth',
        tmp_path,
        monkeypatch,
    )
    assert again['accuracy/top1'] == metrics['accuracy/top1']


def test_readme_dist_train_gpusq_template(
    tmp_path, dense_checkpoint, cls_data_root
):
    """README: ``bash tools/dist_train.sh CONFIG GPUS --gpusq dense.pth``.

    Placeholders filled in: CONFIG = the demo's tiny dense classifier
    config, GPUS = 2 (CPU processes, gloo); ``python`` on PATH is this
    interpreter, PORT a free port. Appended ``--cfg-options``: the
    schedule only (2 epochs, QAT from the second: ``qat_ratio=0.5``,
    validation and checkpoint at the end). The data: the session's small
    generated class-folder set at the documented ``data/gpusq_demo/cls``.
    """
    from test_docs.commands import (
        argv_of,
        env,
        free_port,
        inline_commands,
        link_repo,
        one_command,
        run_subprocess,
    )

    command = one_command(
        inline_commands('README.md'), 'bash tools/dist_train.sh'
    )
    argv = argv_of(command, {'CONFIG': CONFIG, 'GPUS': '2'})
    link_repo(tmp_path)
    os.makedirs(tmp_path / 'data')
    os.symlink(osp.dirname(cls_data_root), tmp_path / 'data' / 'gpusq_demo')
    dense_checkpoint(osp.join(REPO_ROOT, CONFIG), str(tmp_path / 'dense.pth'))
    argv += [
        '--cfg-options',
        'train_cfg.max_epochs=2',
        'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2',
        # the wrapped config's hooks: the dense config's ValLossHook, then
        # the GPUSQHook that --gpusq appends
        'custom_hooks.1.qat_ratio=0.5',
    ]
    proc = run_subprocess(argv, tmp_path, env=env(PORT=str(free_port())))
    log = proc.stdout + proc.stderr
    assert 'QATHook: QAT stage begins at epoch 1' in log
    assert 'Distributed training: True' in log
    work = tmp_path / 'work_dirs' / 'swin_cls_tiny_dense_gpusq'
    final = torch.load(work / 'student_final.pth')
    assert final['meta']['gpusq_stage'] == 2
