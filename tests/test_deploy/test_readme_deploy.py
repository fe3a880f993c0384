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
