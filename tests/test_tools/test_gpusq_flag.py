"""The README's ``--gpusq`` commands, run exactly as written.

In a scratch folder laid out as the README assumes (``tools/``,
``configs/``, the generated demo data under ``data/gpusq_demo/cls`` and a
dense checkpoint at ``work_dirs/swin_cls_tiny_dense/epoch_30.pth``):
``tools/train.py CONFIG --gpusq DENSE.pth`` compresses the tiny dense
classifier config (no gpusq config at all: 2:4 + KD, then INT8 QAT over
the last 15 % of its 30 epochs) and ``tools/test.py CONFIG STUDENT --gpusq``
evaluates the student with the config's evaluator, without a teacher.
"""

import os
import os.path as osp
import shlex
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = 'configs/gpusq/demo/swin_cls_tiny_dense.py'
#: the two commands of the README's "Using it on your model" section
TRAIN = (
    'python tools/train.py configs/gpusq/demo/swin_cls_tiny_dense.py '
    '--gpusq work_dirs/swin_cls_tiny_dense/epoch_30.pth'
)
TEST = (
    'python tools/test.py configs/gpusq/demo/swin_cls_tiny_dense.py '
    'work_dirs/swin_cls_tiny_dense_gpusq/student_final.pth --gpusq'
)


def _readme_has(command: str) -> bool:
    with open(osp.join(REPO_ROOT, 'README.md')) as f:
        text = f.read().replace('\\\n', ' ')
    return ' '.join(command.split()) in ' '.join(text.split())


def _run(command: str, cwd: str) -> str:
    argv = shlex.split(command)
    assert argv[0] == 'python'
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    out = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout + out.stderr


def test_readme_gpusq_commands(tmp_path, cls_data_root, dense_checkpoint):
    assert _readme_has(TRAIN) and _readme_has(TEST)
    for name in ('tools', 'configs'):
        os.symlink(osp.join(REPO_ROOT, name), tmp_path / name)
    os.makedirs(tmp_path / 'data' / 'gpusq_demo')
    os.symlink(cls_data_root, tmp_path / 'data' / 'gpusq_demo' / 'cls')
    os.makedirs(tmp_path / 'work_dirs' / 'swin_cls_tiny_dense')
    dense_checkpoint(
        osp.join(REPO_ROOT, CONFIG),
        str(tmp_path / 'work_dirs/swin_cls_tiny_dense/epoch_30.pth'),
    )
    log = _run(TRAIN, str(tmp_path))
    assert 'QAT from begin_epoch=26' in log  # round(30 * 0.85)
    student = tmp_path / 'work_dirs/swin_cls_tiny_dense_gpusq'
    final = torch.load(student / 'student_final.pth')
    assert final['meta']['gpusq_stage'] == 2
    # evaluating needs no teacher: the dense checkpoint is gone
    os.remove(tmp_path / 'work_dirs/swin_cls_tiny_dense/epoch_30.pth')
    log = _run(TEST, str(tmp_path))
    assert 'accuracy/top1' in log
    # the same student under the demo's gpusq config, whose default
    # teacher path is that (now absent) dense checkpoint
    log = _run(
        'python tools/test.py configs/gpusq/demo/swin_cls_tiny_gpusq.py '
        'work_dirs/swin_cls_tiny_dense_gpusq/student_final.pth',
        str(tmp_path),
    )
    assert 'accuracy/top1' in log
