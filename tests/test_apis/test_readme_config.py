"""The three-statement config and the ``--gpusq`` command of the READMEs.

The config block is read from ``README.md`` and ``configs/gpusq/README.md``
and loaded exactly as written (it must be identical in both); the
``mmdet::`` ``--gpusq`` command of the README is parsed and its config
built by ``tools/train.py`` (training it needs COCO and a GPU).
"""

import importlib.util
import os
import os.path as osp
import re

from mmengine.config import Config

import gpusq_mm  # noqa: F401

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _python_block(path: str) -> str:
    with open(path) as f:
        blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
    return next(b for b in blocks if 'GPUSQHook' in b)


def _train_tool():
    path = osp.join(REPO_ROOT, 'tools', 'train.py')
    spec = importlib.util.spec_from_file_location('_train_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_statement_config_as_documented(tmp_path):
    block = _python_block(osp.join(REPO_ROOT, 'README.md'))
    cfg_readme = osp.join(REPO_ROOT, 'configs', 'gpusq', 'README.md')
    assert _python_block(cfg_readme) == block
    statements = [
        line for line in block.splitlines() if line and line[0] != ' '
    ]
    assert len(statements) == 3, statements
    path = tmp_path / 'my_gpusq.py'
    path.write_text(block)
    cfg = Config.fromfile(str(path))
    assert cfg.model.type == 'gpusq_mm.GPUSQ'
    assert cfg.model.architecture.type == 'MaskRCNN'
    assert cfg.model.teacher == dict(checkpoint='dense.pth')
    assert cfg.custom_hooks[-1] == dict(
        type='gpusq_mm.GPUSQHook', qat_ratio=0.15
    )
    assert 'custom_imports' not in cfg


def test_gpusq_flag_on_an_upstream_config(tmp_path, monkeypatch):
    with open(osp.join(REPO_ROOT, 'README.md')) as f:
        text = ' '.join(f.read().split())
    command = (
        'python tools/train.py '
        'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py --gpusq dense.pth'
    )
    assert command in text.replace('` `', ' ').replace('`', '')
    monkeypatch.chdir(tmp_path)
    open('dense.pth', 'wb').close()
    train = _train_tool()
    argv = command.split()[2:]
    cfg = train.build_cfg(train.parse_args(argv))
    assert cfg.model.type == 'gpusq_mm.GPUSQ'
    assert cfg.model.teacher == dict(checkpoint='dense.pth')
    assert cfg.model.architecture.backbone.type == 'SwinTransformer'
    assert cfg.custom_hooks[-1]['type'] == 'gpusq_mm.GPUSQHook'
    assert cfg.work_dir == os.path.join(
        './work_dirs', 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco_gpusq'
    )
