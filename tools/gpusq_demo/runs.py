"""Run ``tools/train.py`` subprocesses and find their checkpoints."""

import os
import os.path as osp
import signal
import subprocess
import sys
import threading
import time
from typing import List

from .lanes import Lanes
from .schedules import ROOT

#: the slots the runs share (``tools/demo.py --jobs`` sets them)
LANES = Lanes(1)
_PRINT = threading.Lock()
_ABORT = threading.Event()
_RUNNING = set()  # the Popen objects of the runs in progress
_RUNNING_LOCK = threading.Lock()


def _kill(proc: subprocess.Popen) -> None:
    """Kill a run and its children (dataloader workers): its own process
    group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def abort_runs() -> None:
    """Stop the running subprocesses now and refuse new ones (a run of
    another task failed: the demo cannot finish)."""
    _ABORT.set()
    with _RUNNING_LOCK:
        for proc in list(_RUNNING):
            _kill(proc)


def set_jobs(jobs: int) -> Lanes:
    """Let ``jobs`` runs train at once (see :mod:`.lanes`)."""
    global LANES
    LANES = Lanes(jobs)
    _ABORT.clear()
    return LANES


def log(msg: str) -> None:
    with _PRINT:
        print(f'[demo {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def run(
    cmd: List[str], log_file: str, priority: int = 1, width: int = 1
) -> None:
    """Run a subprocess, streaming its output to the console and a log.

    It waits for a slot of :data:`LANES` (``priority``: lower first;
    ``width``: slots it takes). With more than one slot in all, the
    subprocess gets ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to its
    share of the cores, so that runs side by side do not oversubscribe
    them.
    """
    name = osp.splitext(
        osp.relpath(log_file, osp.dirname(osp.dirname(log_file)))
    )[0]
    shown = ' '.join(
        osp.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd
    )
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    with LANES.slot(priority, width) as threads:
        if _ABORT.is_set():
            raise RuntimeError(f'not started (another run failed): {shown}')
        if LANES.jobs > 1:
            env.update(
                OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)
            )
            log(f'[{name}] {threads} thread(s): {shown}')
        else:
            log(shown)
        _stream(
            cmd, log_file, env, f'    [{name}] ' if LANES.jobs > 1 else '    '
        )


def _stream(cmd: List[str], log_file: str, env: dict, prefix: str) -> None:
    with open(log_file, 'w') as f:
        with _RUNNING_LOCK:  # an abort between run()'s check and here
            if _ABORT.is_set():
                raise RuntimeError(
                    'not started (another run failed): ' + ' '.join(cmd)
                )
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=ROOT,
                start_new_session=True,  # its own group: abort kills all
            )
            _RUNNING.add(proc)
        try:
            _copy_output(proc, f, prefix)
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
    if proc.returncode != 0:
        if _ABORT.is_set():
            raise RuntimeError(f'stopped (another run failed): {log_file}')
        raise RuntimeError(
            f'command failed ({proc.returncode}), see {log_file}:\n'
            + ' '.join(cmd)
        )


def _copy_output(proc: subprocess.Popen, f, prefix: str) -> None:
    """Copy the run's output to its log and its progress to the console
    until it exits (a KeyboardInterrupt kills it on the way out)."""
    try:
        for line in proc.stdout:
            f.write(line)
            if ' - mmengine - ' in line and (
                'Iter(' in line or 'Epoch(' in line or 'gpusq' in line.lower()
            ):
                with _PRINT:
                    sys.stdout.write(prefix + line.split(' - mmengine - ')[-1])
                    sys.stdout.flush()
        proc.wait()
    except BaseException:
        _kill(proc)
        proc.wait()
        raise


def last_checkpoint(work_dir: str) -> str:
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(path):
        raise FileNotFoundError(f'no checkpoint was written in {work_dir}')
    with open(path) as f:
        return f.read().strip()


def evaluate(
    py: str,
    config: str,
    checkpoint: str,
    work_dir: str,
    log_file: str,
    priority: int = 2,
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
        priority=priority,
    )
    with open(out) as f:
        return json.load(f)
