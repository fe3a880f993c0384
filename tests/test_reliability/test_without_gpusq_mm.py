"""A QAT checkpoint opened by a process that never imported gpusq_mm.

Our own messages cannot run there; what such a user meets must still be
safe and say what is wrong: the student-only file loads with
``weights_only=True`` (plain tensors), a strict load into the plain model
names the 2:4 mask and quantizer keys it does not know, and the full
training checkpoint is refused by torch naming MMEngine's
``HistoryBuffer`` (which importing gpusq_mm allow-lists).
"""

import json
import os
import os.path as osp
import subprocess
import sys
import textwrap

from test_engine.toy import toy_runner

import gpusq_mm  # noqa: F401
from gpusq_mm.models.student import student_checkpoint

TESTS = osp.dirname(osp.dirname(osp.abspath(__file__)))

CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    sys.path.insert(0, sys.argv[3])
    from test_engine.toy import ToyModel
    out = {}
    state = torch.load(sys.argv[1], weights_only=True)['state_dict']
    out['student_keys'] = len(state)
    try:
        ToyModel().load_state_dict(state, strict=True)
    except RuntimeError as e:
        out['strict'] = str(e)
    try:
        torch.load(sys.argv[2], weights_only=True)
    except Exception as e:
        out['full'] = str(e)
    out['imported'] = 'gpusq_mm' in sys.modules
    print(json.dumps(out))
    """
)


def test_qat_checkpoint_without_gpusq_mm(tmp_path):
    runner = toy_runner(
        tmp_path,
        'qat',
        hooks=[
            dict(
                type='gpusq_mm.QATHook',
                begin_iter=1,
                num_batches=2,
                progress=False,
            )
        ],
        max_iters=2,
        ckpt_interval=2,
    )
    runner.train()
    student = str(tmp_path / 'student.pth')
    student_checkpoint(runner.model, student, dict(iter=2))
    full = osp.join(runner.work_dir, 'iter_2.pth')
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)  # this checkout's gpusq_mm is not on it
    proc = subprocess.run(
        [sys.executable, '-c', CHILD, student, full, TESTS],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['imported'] is False
    assert out['student_keys'] > 0
    assert 'Unexpected key(s)' in out['strict']
    assert 'neck.sparsity_mask' in out['strict']
    assert 'neck._input_quantizer._amax' in out['strict']
    assert 'HistoryBuffer' in out['full']
