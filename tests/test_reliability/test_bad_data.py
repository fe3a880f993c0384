"""A corrupt image in the training set is reported by path, and reading
it changes nothing on disk."""

import hashlib
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope

import gpusq_mm  # noqa: F401
from gpusq_mm.datasets import generate_task

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CLS_DENSE = osp.join(
    REPO_ROOT, 'configs', 'gpusq', 'demo', 'swin_cls_tiny_dense.py'
)


def test_corrupt_training_image_named(tmp_path):
    from mmpretrain.registry import DATASETS

    root = generate_task('cls', str(tmp_path), 6, 6, seed=0)
    cfg = Config.fromfile(CLS_DENSE)
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.data_root = root
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        dataset = DATASETS.build(dataset_cfg)
    bad = dataset.get_data_info(0)['img_path']
    with open(bad, 'wb') as f:
        f.write(b'\xff\xd8 not a jpeg' * 20)
    with open(bad, 'rb') as f:
        before = hashlib.sha256(f.read()).hexdigest()
    with pytest.raises(Exception) as info:
        dataset[0]
    assert bad in str(info.value)
    with open(bad, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() == before
    assert dataset[1]['inputs'].shape[-1] == 64  # the others still load
