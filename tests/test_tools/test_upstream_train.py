"""Our configs run under the task libraries' own ``tools/train.py``.

The demo GPUSQ configs (2:4 + KD, then QAT + KD) are trained for a
couple of iterations by mmdet's and mmseg's own training scripts (shipped
in their packages under ``.mim/tools``), with their ``custom_imports``
removed: the scoped ``gpusq_mm.`` types alone bring in the plugin.
"""

import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO_ROOT, 'configs', 'gpusq', 'demo')

pytestmark = pytest.mark.slow


def _upstream_train(pkg: str) -> str:
    import importlib

    mod = importlib.import_module(pkg)
    path = osp.join(osp.dirname(mod.__file__), '.mim', 'tools', 'train.py')
    if not osp.isfile(path):
        pytest.skip(f'{pkg} ships no tools/train.py at {path}')
    return path


@pytest.mark.parametrize(
    'pkg,task,name',
    [
        ('mmdet', 'det', 'swin_maskrcnn_tiny'),
        ('mmseg', 'seg', 'swin_upernet_tiny'),
    ],
)
def test_gpusq_config_under_upstream_train_py(
    pkg, task, name, tmp_path, coco_data_root, ade_data_root, dense_checkpoint
):
    sys.path.insert(0, osp.join(REPO_ROOT, 'tools'))
    try:
        import demo
    finally:
        sys.path.pop(0)
    root = coco_data_root if task == 'det' else ade_data_root
    ckpt = dense_checkpoint(
        osp.join(DEMO, f'{name}_dense.py'), str(tmp_path / 'dense.pth')
    )[1]
    cfg = demo.prepare_config(
        osp.join(DEMO, f'{name}_gpusq.py'),
        str(tmp_path / 'gpusq.py'),
        root.rstrip('/') + '/',
        seed=0,
        stages=dict(stage1=2, qat=1),
        teacher_ckpt=ckpt,
    )
    from mmengine.config import Config

    plain = Config.fromfile(cfg)
    plain.pop('custom_imports', None)
    plain.dump(cfg)
    work = tmp_path / 'work'
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    out = subprocess.run(
        [sys.executable, _upstream_train(pkg), cfg, '--work-dir', str(work)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=900,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert 'QATHook: QAT stage begins' in log
    assert 'custom_imports' not in open(cfg).read()
    assert osp.isfile(work / 'student_final.pth')
    state = torch.load(work / 'student_final.pth', map_location='cpu')
    assert not any(k.startswith('teacher') for k in state['state_dict'])
    assert any(k.endswith('sparsity_mask') for k in state['state_dict'])
