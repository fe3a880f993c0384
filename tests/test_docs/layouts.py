"""Tiny datasets in the upstream configs' own data layouts (no download).

The real-dataset configs read ``data/coco/``, ``data/ade/
ADEChallengeData2016/`` and ``data/imagenet/`` relative to the working
directory. These writers put a few generated images there, in the exact
layout and label sets the upstream datasets expect:

- COCO: ``annotations/instances_{train,val}2017.json`` with the 80 COCO
  categories, ``train2017/``, ``val2017/``; boxes with polygon masks;
- ADE20K: ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png`` (ADE20K label ids 1..150,
  0 = other);
- ImageNet: ``train/``, ``val/`` and ``meta/{train,val}.txt`` (``file
  label`` lines, labels in 0..999).

Detection and segmentation images are strips (COCO 4200x32, ADE 2048x32):
the configs' own keep-ratio resizes (to fit 1333x800, 2048x512, or
DETR / DINO's random resize-crop-resize) keep them thin, at most ~0.1
megapixel (a normal COCO image becomes ~1 megapixel), so one CPU training
step of the real architectures stays short and within memory (Swin-L DINO)
without changing the configs' pipelines.
"""

import json
import os
import os.path as osp

import numpy as np

COCO_SIZE = (4200, 32)  # width, height
ADE_SIZE = (2048, 32)


def _image(rng, width: int, height: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_coco(root: str, num_train: int = 2, num_val: int = 1) -> str:
    """COCO 2017 layout under ``root`` (= ``data/coco``)."""
    import cv2
    from mmdet.datasets import CocoDataset

    rng = np.random.default_rng(0)
    names = CocoDataset.METAINFO['classes']
    width, height = COCO_SIZE
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    ann_id = 0
    for split, count in (('train2017', num_train), ('val2017', num_val)):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, anns = [], []
        for i in range(count):
            img = _image(rng, width, height)
            image_id = len(images) + 1
            for k in range(3):
                x, y, w, h = 200 + 1300 * k + 60 * i, 4, 700, 24
                img[y : y + h, x : x + w] = (60 * k, 200, 255 - 60 * k)
                ann_id += 1
                anns.append(
                    dict(
                        id=ann_id,
                        image_id=image_id,
                        category_id=1 + (7 * k + i) % len(names),
                        bbox=[x, y, w, h],
                        area=w * h,
                        segmentation=[
                            [x, y, x + w, y, x + w, y + h, x, y + h]
                        ],
                        iscrowd=0,
                    )
                )
            name = f'{split}_{i:03d}.jpg'
            cv2.imwrite(osp.join(root, split, name), img)
            images.append(
                dict(id=image_id, file_name=name, width=width, height=height)
            )
        cats = [
            dict(id=i + 1, name=n, supercategory='thing')
            for i, n in enumerate(names)
        ]
        path = osp.join(root, 'annotations', f'instances_{split}.json')
        with open(path, 'w') as f:
            json.dump(
                dict(images=images, annotations=anns, categories=cats), f
            )
    return root


def write_ade(root: str, num_train: int = 2, num_val: int = 1) -> str:
    """ADE20K layout under ``root`` (= ``data/ade/ADEChallengeData2016``)."""
    import cv2

    rng = np.random.default_rng(1)
    width, height = ADE_SIZE
    for split, count in (('training', num_train), ('validation', num_val)):
        for sub in ('images', 'annotations'):
            os.makedirs(osp.join(root, sub, split), exist_ok=True)
        for i in range(count):
            img = _image(rng, width, height)
            label = np.zeros((height, width), np.uint8)
            for k in range(4):
                x = 500 * k + 40 * i
                img[:, x : x + 400] = (50 * k, 180, 250 - 50 * k)
                label[:, x : x + 400] = 1 + 11 * k + i  # ADE20K ids 1..150
            name = f'ADE_{split}_{i:08d}'
            cv2.imwrite(osp.join(root, 'images', split, name + '.jpg'), img)
            cv2.imwrite(
                osp.join(root, 'annotations', split, name + '.png'), label
            )
    return root


def write_imagenet(root: str, num_train: int = 2, num_val: int = 1) -> str:
    """ImageNet layout under ``root`` (= ``data/imagenet``)."""
    import cv2

    rng = np.random.default_rng(2)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    for split, count in (('train', num_train), ('val', num_val)):
        os.makedirs(osp.join(root, split), exist_ok=True)
        lines = []
        for i in range(count):
            name = f'{split}_{i:04d}.JPEG'
            cv2.imwrite(osp.join(root, split, name), _image(rng, 64, 64))
            lines.append(f'{name} {(137 * i) % 1000}')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return root


def write_all(data_dir: str) -> str:
    """``data_dir/{coco,ade/ADEChallengeData2016,imagenet}``."""
    write_coco(osp.join(data_dir, 'coco'))
    write_ade(osp.join(data_dir, 'ade', 'ADEChallengeData2016'))
    write_imagenet(osp.join(data_dir, 'imagenet'))
    return data_dir
