"""The README's "Deploy" commands, run exactly as written.

The commands are read from the README's ``## Deploy`` bash block and run
in a scratch folder holding ``configs/`` and ``tools/`` (links to the
repository) and the demo's ``work_dirs/demo/cls/gpusq/student_final.pth``
(a tiny QAT student made without training) and the demo's class-folder
data in ``data/gpusq_demo/cls`` (generated, small). Only ``python`` is
replaced by this interpreter.
"""

import os
import os.path as osp
import re
import shlex
import subprocess
import sys

import pytest

from gpusq_mm.datasets import generate_task
from gpusq_mm.deploy.trt import tensorrt_unavailable

from .helpers import REPO_ROOT, make_student

pytestmark = pytest.mark.slow


def readme_commands(section: str = 'Deploy'):
    """The commands of the first bash block of a README section."""
    with open(osp.join(REPO_ROOT, 'README.md')) as f:
        text = f.read()
    body = text.split(f'\n## {section}\n', 1)[1].split('\n## ', 1)[0]
    block = re.search(r'```bash\n(.*?)```', body, re.S).group(1)
    return [
        c.strip() for c in block.replace('\\\n', ' ').splitlines() if c.strip()
    ]


def test_readme_deploy_commands(tmp_path):
    for name in ('configs', 'tools'):
        os.symlink(osp.join(REPO_ROOT, name), tmp_path / name)
    ckpt = tmp_path / 'work_dirs/demo/cls/gpusq/student_final.pth'
    ckpt.parent.mkdir(parents=True)
    make_student('cls', str(ckpt), stage=2)
    generate_task('cls', str(tmp_path / 'data/gpusq_demo'), 6, 12, seed=0)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    commands = readme_commands()
    assert len(commands) == 4
    for cmd in commands:
        argv = shlex.split(cmd)
        assert argv[0] == 'python'
        proc = subprocess.run(
            [sys.executable] + argv[1:],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        if 'build_trt.py' in cmd and tensorrt_unavailable():
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert proc.stdout.count('\n') == 1, proc.stdout
            assert 'Traceback' not in proc.stderr
            continue
        assert proc.returncode == 0, cmd + '\n' + proc.stderr[-3000:]
    out = tmp_path / 'work_dirs/demo/cls'
    assert (out / 'student.onnx').stat().st_size > 0
    for ext in ('md', 'json', 'png'):
        assert (out / 'report' / f'report.{ext}').stat().st_size > 0


def test_readme_compare_runs_command(tmp_path, cls_data_root):
    """README's ``compare_runs.py`` command, as written, on the demo's
    layout: ``nokd.py`` / ``gpusq.py`` written by the demo's own
    ``prepare_config``, the no-KD checkpoint as a plain model with its
    SparsityHook masks, the KD one as a GPUSQ student."""
    import torch

    sys.path.insert(0, osp.join(REPO_ROOT, 'tools'))
    try:
        from gpusq_demo.configs import prepare_config
        from gpusq_demo.schedules import DEMO_CFG, SCHEDULES, TASKS
    finally:
        sys.path.pop(0)
    from test_docs.commands import argv_of, bash_block_commands

    (command,) = [
        c for c in bash_block_commands('README.md') if 'compare_runs.py' in c
    ]
    for name in ('configs', 'tools'):
        os.symlink(osp.join(REPO_ROOT, name), tmp_path / name)
    demo = tmp_path / 'work_dirs/demo/cls'
    demo.mkdir(parents=True)
    src = osp.join(DEMO_CFG, TASKS['cls']['gpusq'])
    sched = SCHEDULES['full']['cls']
    for name, kd in (('gpusq', True), ('nokd', False)):
        prepare_config(
            src,
            str(demo / f'{name}.py'),
            cls_data_root,
            0,
            stages=sched,
            teacher_ckpt='dense.pth',
            kd=kd,
        )
    epoch = f'epoch_{sched["stage1"]}.pth'
    for run, stage in (('sparse24_nokd', 1), ('gpusq', 2)):
        (demo / run).mkdir()
        make_student('cls', str(demo / run / epoch), stage=stage)
    # the no-KD run is the plain model + SparsityHook: weights and 2:4
    # mask buffers, no quantizers
    path = demo / 'sparse24_nokd' / epoch
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    state = ckpt.get('state_dict', ckpt)
    for key in [k for k in state if '_quantizer.' in k]:
        del state[key]
    assert any(k.endswith('.sparsity_mask') for k in state)
    torch.save(ckpt, path)
    proc = subprocess.run(
        [sys.executable] + argv_of(command)[1:],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'accuracy/top1 on 12 images' in proc.stdout, proc.stdout
    assert '95 % interval' in proc.stdout
