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
    # the others still load (at the config's img_size)
    assert dataset[1]['inputs'].shape[-1] == 56


def _tool_main(name: str):
    import importlib.util

    path = osp.join(REPO_ROOT, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_garbled_annotation_file_named_by_train_py(tmp_path):
    """pycocotools' bare JSONDecodeError becomes an error naming the
    config key and the file; the file is left as it was."""
    root = generate_task('det', str(tmp_path / 'data'), 2, 2, seed=0)
    ann = osp.join(root, 'annotations', 'instances_train2017.json')
    with open(ann, 'rb') as f:
        text = f.read()
    with open(ann, 'wb') as f:
        f.write(text[: len(text) // 2])  # truncated mid-write
    with open(ann, 'rb') as f:
        before = hashlib.sha256(f.read()).hexdigest()
    val_ann = osp.join(root, 'annotations', 'instances_val2017.json')
    config = osp.join(
        REPO_ROOT, 'configs', 'gpusq', 'demo', 'swin_maskrcnn_tiny_dense.py'
    )
    opts = [f'{s}_dataloader.dataset.data_root={root}' for s in _SPLITS]
    opts += [f'{s}_dataloader.num_workers=0' for s in _SPLITS]
    opts += [f'{s}_dataloader.persistent_workers=False' for s in _SPLITS]
    opts += [f'val_evaluator.ann_file={val_ann}']
    work_dir = str(tmp_path / 'work')
    with pytest.raises(ValueError) as info:
        _tool_main('train')(
            [config, '--work-dir', work_dir, '--cfg-options', *opts]
        )
    msg = str(info.value)
    assert 'train_dataloader.dataset.ann_file' in msg and ann in msg
    assert 'not valid JSON' in msg and val_ann not in msg
    with open(ann, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() == before


_SPLITS = ('train', 'val', 'test')
