"""Run ``tools/train.py`` subprocesses and find their checkpoints."""

import os
import os.path as osp
import subprocess
import sys
import time
from typing import List

from .schedules import ROOT


def log(msg: str) -> None:
    print(f'[demo {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def run(cmd: List[str], log_file: str) -> None:
    """Run a subprocess, streaming its output to the console and a log."""
    log(
        ' '.join(
            osp.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd
        )
    )
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    with open(log_file, 'w') as f:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for line in proc.stdout:
            f.write(line)
            if ' - mmengine - ' in line and (
                'Iter(' in line or 'Epoch(' in line or 'gpusq' in line.lower()
            ):
                sys.stdout.write('    ' + line.split(' - mmengine - ')[-1])
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(
            f'command failed ({proc.returncode}), see {log_file}:\n'
            + ' '.join(cmd)
        )


def last_checkpoint(work_dir: str) -> str:
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(path):
        raise FileNotFoundError(f'no checkpoint was written in {work_dir}')
    with open(path) as f:
        return f.read().strip()


def evaluate(
    py: str, config: str, checkpoint: str, work_dir: str, log_file: str
) -> dict:
    """``tools/test.py config checkpoint``: the metrics it dumps."""
    import json

    out = osp.join(work_dir, 'metrics.json')
    run(
        [
            py,
            osp.join(ROOT, 'tools', 'test.py'),
            config,
            checkpoint,
            '--work-dir',
            work_dir,
            '--out',
            out,
        ],
        log_file,
    )
    with open(out) as f:
        return json.load(f)
