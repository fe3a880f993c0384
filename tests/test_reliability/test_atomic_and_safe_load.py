"""Atomic checkpoints (a process killed mid-save) and safe loading."""

import errno
import glob
import os
import os.path as osp
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from mmengine.hooks import checkpoint_hook
from mmengine.runner.checkpoint import load_checkpoint, save_checkpoint

import gpusq_mm  # noqa: F401  (atomic writes, safe loading)
from gpusq_mm.utils.checkpoint import atomic_torch_save, safe_torch_load

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# A child that saves a big checkpoint through our save paths, forever.
CHILD = textwrap.dedent(
    """
    import sys, torch, gpusq_mm
    from mmengine.runner.checkpoint import save_checkpoint
    from gpusq_mm.models.student import student_checkpoint
    path, kind = sys.argv[1], sys.argv[2]
    big = torch.nn.Linear(4096, 4096)  # 64 MB of weights
    while True:
        if kind == 'full':
            save_checkpoint({'state_dict': big.state_dict()}, path)
        else:
            student_checkpoint(big, path, dict(iter=2))
    """
)


def _kill_mid_write(path: str, kind: str) -> bool:
    """Start the child, SIGKILL it while its temp file is being written."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.Popen([sys.executable, '-c', CHILD, path, kind], env=env)
    pattern = osp.join(osp.dirname(path), '.' + osp.basename(path) + '.*')
    seen = False
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if glob.glob(pattern):
                seen = True
                break
            time.sleep(0.002)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return seen


@pytest.mark.parametrize('kind', ['full', 'student'])
def test_kill_during_save_keeps_previous_checkpoint(tmp_path, kind):
    path = str(tmp_path / ('epoch_1.pth' if kind == 'full' else 'student.pth'))
    old = {'meta': {'iter': 1}, 'state_dict': {'w': torch.arange(6.0)}}
    atomic_torch_save(old, path)
    with open(path, 'rb') as f:
        before = f.read()
    last = tmp_path / 'last_checkpoint'
    with checkpoint_hook.open(str(last), 'w') as f:  # as CheckpointHook
        f.write(path)
    assert _kill_mid_write(path, kind), 'the child never started writing'
    with open(path, 'rb') as f:
        assert f.read() == before  # not a byte changed
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded['state_dict']['w'], torch.arange(6.0))
    assert last.read_text() == path


def test_last_checkpoint_pointer_is_atomic(tmp_path):
    last = tmp_path / 'last_checkpoint'
    with checkpoint_hook.open(str(last), 'w') as f:
        f.write('/a/epoch_1.pth')
    with pytest.raises(KeyboardInterrupt):
        with checkpoint_hook.open(str(last), 'w') as f:
            f.write('/a/epoch_')
            raise KeyboardInterrupt  # killed mid-write
    assert last.read_text() == '/a/epoch_1.pth'
    assert os.listdir(tmp_path) == ['last_checkpoint']  # no temp left


def test_out_of_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / 'epoch_1.pth')
    save_checkpoint({'state_dict': {'w': torch.ones(3)}}, path)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, 'fsync', full_disk)
    with pytest.raises(OSError) as info:
        save_checkpoint({'state_dict': {'w': torch.zeros(3)}}, path)
    assert info.value.errno == errno.ENOSPC
    text = str(info.value)
    assert path in text and 'No space left' in text
    assert 'the previous file is unchanged' in text
    monkeypatch.undo()
    assert torch.load(path)['state_dict']['w'].tolist() == [1.0, 1.0, 1.0]
    assert os.listdir(tmp_path) == ['epoch_1.pth']


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_arbitrary_pickled_object_refused_clearly(tmp_path):
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {}, 'x': _Evil()}, path)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(pickle.UnpicklingError) as info:
        load_checkpoint(model, path)
    text = str(info.value)
    assert path in text and 'allow-list' in text and 'system' in text


def test_garbled_checkpoint_named(tmp_path):
    """Garbled bytes are a clear error naming the file, whatever the
    unpickler trips on: UnpicklingError for ~91 % of random blobs, but
    IndexError / KeyError / UnicodeDecodeError for the rest (found by CI,
    when the blob came from os.urandom)."""
    import random
    import warnings

    path = str(tmp_path / 'garbled.pth')
    # an opcode popping a mark that was never pushed: IndexError inside
    blobs = [b'\x80\x02e']
    blobs += [random.Random(seed).randbytes(1000) for seed in range(300)]
    for blob in blobs:
        with open(path, 'wb') as f:
            f.write(blob)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # 'Detected pickle protocol'
            with pytest.raises(pickle.UnpicklingError) as info:
                safe_torch_load(path)
        assert path in str(info.value)
        assert 'not a readable PyTorch checkpoint' in str(info.value)
    truncated = str(tmp_path / 'truncated.pth')
    torch.save({'w': torch.ones(1000)}, truncated)
    with open(truncated, 'r+b') as f:
        f.truncate(2000)
    with pytest.raises(pickle.UnpicklingError, match='not a readable'):
        safe_torch_load(truncated)


def test_loads_go_through_weights_only(tmp_path, monkeypatch):
    """Resume / load_from / teacher loads all use weights_only=True."""
    path = str(tmp_path / 'ok.pth')
    torch.save({'state_dict': torch.nn.Linear(2, 2).state_dict()}, path)
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get('weights_only'))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, 'load', spy)
    load_checkpoint(torch.nn.Linear(2, 2), path)
    assert calls == [True]


def test_resume_and_teacher_load_with_weights_only(
    tmp_path, monkeypatch, dense_checkpoint
):
    """A real resume (message hub, numpy scalars inside), a teacher load
    and a student-only load all go through torch.load(weights_only=True)."""
    from test_engine.toy import toy_runner

    from gpusq_mm.models.student import student_checkpoint
    from gpusq_mm.models.teacher import build_teacher

    config = osp.join(
        REPO_ROOT, 'configs', 'gpusq', 'demo', 'swin_cls_tiny_dense.py'
    )
    _, teacher = dense_checkpoint(config, str(tmp_path / 'dense.pth'))
    first = toy_runner(tmp_path, 'first', max_iters=2, ckpt_interval=2)
    first.train()
    ckpt = osp.join(first.work_dir, 'iter_2.pth')
    student = str(tmp_path / 'student.pth')
    student_checkpoint(first.model, student, dict(iter=2))
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get('weights_only'))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, 'load', spy)
    second = toy_runner(
        tmp_path, 'second', load_from=ckpt, resume=True, max_iters=3
    )
    second.train()
    assert second.iter == 3 and calls == [True]
    build_teacher(config, teacher)
    load_checkpoint(second.model, student, strict=True)
    assert calls == [True, True, True]
