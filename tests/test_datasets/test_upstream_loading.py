"""Generated and real sample data load through the upstream datasets.

mmdet ``CocoDataset``, mmseg ``ADE20KDataset`` and mmpretrain
``CustomDataset`` read the files unchanged, with the expected counts, and
one sample goes through a real pipeline.
"""

import json
import os.path as osp

import numpy as np
import pytest
from mmengine.registry import DefaultScope

from gpusq_mm.datasets import SHAPE_CLASSES, TEXTURE_CLASSES
from gpusq_mm.datasets.ade_textures import ADE_IDS

DET_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='PackDetInputs'),
]


def _coco(root, split, **kwargs):
    from mmdet.datasets import CocoDataset

    with DefaultScope.overwrite_default_scope('mmdet'):
        return CocoDataset(
            data_root=root,
            ann_file=f'annotations/instances_{split}2017.json',
            data_prefix=dict(img=f'{split}2017/'),
            pipeline=DET_PIPELINE,
            **kwargs,
        )


def _num_anns(root, split, crowd=None):
    path = osp.join(root, 'annotations', f'instances_{split}2017.json')
    with open(path) as f:
        anns = json.load(f)['annotations']
    return sum(1 for a in anns if crowd is None or a['iscrowd'] == crowd)


@pytest.mark.parametrize('split,count', [('train', 8), ('val', 4)])
def test_generated_coco_through_mmdet(coco_data_root, split, count):
    ds = _coco(
        coco_data_root,
        split,
        metainfo=dict(classes=SHAPE_CLASSES),
        test_mode=split == 'val',
    )
    assert len(ds) == count
    assert ds.metainfo['classes'] == SHAPE_CLASSES
    n_inst = sum(len(ds.get_data_info(i)['instances']) for i in range(count))
    assert n_inst == _num_anns(coco_data_root, split)
    sample = ds[0]
    inst = sample['data_samples'].gt_instances
    img = sample['inputs']
    assert img.shape[0] == 3 and max(img.shape[1:]) == 320
    assert len(inst) > 0 and len(inst.masks) == len(inst.bboxes)
    assert int(inst.labels.max()) < len(SHAPE_CLASSES)
    masks = inst.masks.to_ndarray()
    assert (
        masks.shape[1:] == tuple(img.shape[1:])
        and masks.any(axis=(1, 2)).all()
    )


def test_real_coco_tiny_through_mmdet(shared_data_root):
    root = osp.join(shared_data_root, 'coco_real_tiny')
    if not osp.isdir(root):
        pytest.skip(f'{root} not found')
    train = _coco(root, 'train')
    val = _coco(root, 'val', test_mode=True)
    assert (len(train), len(val)) == (15, 23)
    assert len(train.metainfo['classes']) == 80
    n_inst = sum(len(train.get_data_info(i)['instances']) for i in range(15))
    assert n_inst == _num_anns(root, 'train') == 105
    ignored = sum(
        inst['ignore_flag']
        for i in range(len(val))
        for inst in val.get_data_info(i)['instances']
    )
    assert ignored == _num_anns(root, 'val', crowd=1) > 0
    inst = train[0]['data_samples'].gt_instances
    assert len(inst) > 0 and len(inst.masks) == len(inst.bboxes)


def _ade(root, split, **kwargs):
    from mmseg.datasets import ADE20KDataset

    with DefaultScope.overwrite_default_scope('mmseg'):
        return ADE20KDataset(
            data_root=root,
            data_prefix=dict(
                img_path=f'images/{split}',
                seg_map_path=f'annotations/{split}',
            ),
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', reduce_zero_label=True),
                dict(type='PackSegInputs'),
            ],
            **kwargs,
        )


def _seg_values(ds, index):
    return set(np.unique(ds[index]['data_samples'].gt_sem_seg.data).tolist())


@pytest.mark.parametrize('split,count', [('training', 8), ('validation', 4)])
def test_generated_ade_through_mmseg(ade_data_root, split, count):
    # the full ADE20K label space: our ids are ADE ids
    full = _ade(ade_data_root, split)
    assert len(full) == count and len(full.metainfo['classes']) == 150
    assert _seg_values(full, 0) <= {i - 1 for i in ADE_IDS} | {255}
    # as the demo configs read it: remapped to 0..5
    ours = _ade(ade_data_root, split, metainfo=dict(classes=TEXTURE_CLASSES))
    assert len(ours) == count
    assert ours.metainfo['classes'] == TEXTURE_CLASSES
    values = set()
    for i in range(count):
        values |= _seg_values(ours, i)
    assert values <= set(range(len(TEXTURE_CLASSES))) | {255}
    assert len(values - {255}) >= 3
    sample = ours[0]
    assert (
        sample['inputs'].shape[1:]
        == sample['data_samples'].gt_sem_seg.data.shape[1:]
    )


def test_real_ade_sample_through_mmseg(shared_data_root):
    root = osp.join(shared_data_root, 'ade20k_sample')
    if not osp.isdir(root):
        pytest.skip(f'{root} not found')
    ds = _ade(root, 'validation')
    assert len(ds) == 3
    values = _seg_values(ds, 0)
    assert values <= set(range(150)) | {255} and len(values) > 2


@pytest.mark.parametrize('split,count', [('train', 24), ('val', 12)])
def test_generated_cls_through_mmpretrain(cls_data_root, split, count):
    from mmpretrain.datasets import CustomDataset

    with DefaultScope.overwrite_default_scope('mmpretrain'):
        ds = CustomDataset(
            data_root=cls_data_root,
            data_prefix=split,
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='ResizeEdge', scale=112, edge='short'),
                dict(type='CenterCrop', crop_size=112),
                dict(type='PackInputs'),
            ],
        )
    assert len(ds) == count
    assert tuple(ds.CLASSES) == tuple(sorted(SHAPE_CLASSES))
    labels = [ds.get_data_info(i)['gt_label'] for i in range(count)]
    assert np.bincount(labels).tolist() == [count // 6] * 6
    for i in range(count):
        info = ds.get_data_info(i)
        folder = osp.basename(osp.dirname(info['img_path']))
        assert ds.CLASSES[info['gt_label']] == folder
    sample = ds[0]
    assert tuple(sample['inputs'].shape) == (3, 112, 112)
    assert int(sample['data_samples'].gt_label) == labels[0]
