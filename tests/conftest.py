"""Shared fixtures: small generated datasets and the real sample data.

The generated datasets are written once per test session into a temporary
folder (a few seconds); tests read them through the upstream datasets:

- ``coco_data_root``: COCO layout (``annotations/instances_*2017.json``,
  ``train2017/``, ``val2017/``), 8 train / 4 val images, 6 shape classes.
- ``ade_data_root``: ADE20K layout (``images/``, ``annotations/``),
  8 training / 4 validation scenes, ADE20K label ids.
- ``cls_data_root``: class folders (``train/<class>/``, ``val/<class>/``),
  24 train / 12 val images over 6 classes.
- ``coco_cfg_options`` / ``ade_cfg_options`` / ``cls_cfg_options``:
  ``--cfg-options`` lists that point the demo configs in
  ``configs/gpusq/demo`` at those folders.
- ``shared_data_root``: ``<repo>/../shared/data`` (real COCO / ADE20K
  samples), skipped when absent, e.g. in a user's clone.
- ``dense_checkpoint``: factory that builds a config's model with seeded,
  initialised random weights and saves it as a checkpoint (a stand-in
  for a trained dense model).
"""

import os.path as osp
from typing import List

import pytest

from gpusq_mm.datasets import generate_task

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHARED_DATA = osp.join(osp.dirname(REPO_ROOT), 'shared', 'data')

#: (train, val) image counts of the session datasets.
SIZES = {'det': (8, 4), 'seg': (8, 4), 'cls': (24, 12)}


@pytest.fixture(scope='session')
def generated_data_dir(tmp_path_factory) -> str:
    """Parent folder of the session's generated datasets."""
    return str(tmp_path_factory.mktemp('gpusq_data'))


def _generate(task: str, out_dir: str) -> str:
    num_train, num_val = SIZES[task]
    return generate_task(task, out_dir, num_train, num_val, seed=0)


@pytest.fixture(scope='session')
def coco_data_root(generated_data_dir) -> str:
    """Root of a small generated COCO-format instance dataset."""
    return _generate('det', generated_data_dir)


@pytest.fixture(scope='session')
def ade_data_root(generated_data_dir) -> str:
    """Root of a small generated ADE20K-format segmentation dataset."""
    return _generate('seg', generated_data_dir)


@pytest.fixture(scope='session')
def cls_data_root(generated_data_dir) -> str:
    """Root of a small generated class-folder classification dataset."""
    return _generate('cls', generated_data_dir)


def _loader_roots(root: str) -> List[str]:
    return [
        f'{split}_dataloader.dataset.data_root={root}/'
        for split in ('train', 'val', 'test')
    ]


@pytest.fixture(scope='session')
def coco_cfg_options(coco_data_root) -> List[str]:
    """``--cfg-options`` pointing a demo detection config at the data."""
    ann = osp.join(coco_data_root, 'annotations', 'instances_val2017.json')
    return _loader_roots(coco_data_root) + [
        f'val_evaluator.ann_file={ann}',
        f'test_evaluator.ann_file={ann}',
    ]


@pytest.fixture(scope='session')
def ade_cfg_options(ade_data_root) -> List[str]:
    """``--cfg-options`` pointing a demo segmentation config at the data."""
    return _loader_roots(ade_data_root)


@pytest.fixture(scope='session')
def cls_cfg_options(cls_data_root) -> List[str]:
    """``--cfg-options`` pointing a demo classification config at the data."""
    return _loader_roots(cls_data_root)


@pytest.fixture(scope='session')
def shared_data_root() -> str:
    """``<repo>/../shared/data`` with real COCO / ADE20K samples."""
    if not osp.isdir(SHARED_DATA):
        pytest.skip(
            f'real sample data not found at {SHARED_DATA} (it lives next '
            'to the repository in the development checkout only)'
        )
    return SHARED_DATA


def _dense_checkpoint(config: str, path: str, seed: int = 0):
    import torch
    from mmengine.registry import DefaultScope

    from gpusq_mm.models.teacher import load_teacher_config
    from gpusq_mm.registry import MODELS

    model_cfg, scope = load_teacher_config(config)
    # no pretrained backbone download: the weights are random anyway
    model_cfg.get('backbone', {}).pop('init_cfg', None)
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(model_cfg)
    # parameters such as DINO's level_embed are allocated uninitialised
    # and only set by init_weights(): without it the model can hold
    # whatever was in memory, NaN included
    model.init_weights()
    torch.save({'state_dict': model.state_dict()}, path)
    return model, path


@pytest.fixture(scope='session')
def dense_checkpoint():
    """``make(config, path, seed=0) -> (model, path)``, see module doc."""
    return _dense_checkpoint
