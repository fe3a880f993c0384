"""COCO-format instance segmentation data: shapes on cluttered scenes.

Writes the standard layout that mmdet's ``CocoDataset`` reads unchanged::

    root/annotations/instances_{train,val}2017.json
    root/{train,val}2017/*.jpg

Each image holds 2-7 shapes of :data:`SHAPE_CLASSES` with random colours,
size, rotation and aspect, later shapes occluding earlier ones; a shape is
filled with its class's pattern (:data:`~.ade_textures.TEXTURES`, as in the
classification data), so outline and fill tell the class.
Annotations describe the *visible* part: polygons traced from the visible
mask (several polygons when an occluder splits a shape), its bbox and
area, ``iscrowd=0``. Placements that would hide more than half of an
earlier shape are rejected, so every labelled instance stays recognisable.
"""

import json
import os
import os.path as osp
from typing import List

import cv2
import numpy as np

from .ade_textures import class_texture
from .shapes import (
    SHAPE_CLASSES,
    finish_image,
    noisy_background,
    shape_polygon,
)

SPLITS = {'train': 0, 'val': 1}


def _place(rng, kinds_mask_list, height, width, kind):
    """Try to place a shape; None if it would occlude others too much."""
    for _ in range(10):
        # >= 14 px: the fill pattern (period 6-14 px) stays readable
        radius = rng.uniform(14, min(height, width) * 0.22)
        cx = rng.uniform(radius * 0.6, width - radius * 0.6)
        cy = rng.uniform(radius * 0.6, height - radius * 0.6)
        poly = shape_polygon(kind, rng, (cx, cy), radius)
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
        mask = mask.astype(bool)
        if mask.sum() < 64:
            continue
        ok = True
        for _, full, visible in kinds_mask_list:
            left = np.logical_and(visible, ~mask).sum()
            if left < 0.5 * full.sum() or left < 48:
                ok = False
                break
        if ok:
            return poly, mask
    return None


def _polygons(mask: np.ndarray) -> List[List[float]]:
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    polys = []
    for c in contours:
        c = cv2.approxPolyDP(c, 0.7, True).reshape(-1, 2)
        if len(c) >= 3 and cv2.contourArea(c.astype(np.float32)) >= 4:
            polys.append([float(v) for v in c.reshape(-1)])
    return polys


def make_coco_image(seed: int, split: str, index: int):
    """Render one image and its instance annotations.

    Args:
        seed (int): Dataset seed.
        split (str): ``'train'`` or ``'val'``.
        index (int): Image index within the split.

    Returns:
        tuple: ``(image uint8 HxWx3 RGB, list of (category_id, mask))``;
        masks are the visible parts, category ids start at 1.
    """
    rng = np.random.default_rng([seed, SPLITS[split], index, 1])
    height = int(rng.integers(14, 21)) * 16
    width = int(rng.integers(14, 21)) * 16
    img = noisy_background(rng, height, width)
    placed = []  # (category_id, full mask, visible mask)
    for _ in range(int(rng.integers(2, 8))):
        cat = int(rng.integers(0, len(SHAPE_CLASSES)))
        got = _place(rng, placed, height, width, SHAPE_CLASSES[cat])
        if got is None:
            continue
        poly, mask = got
        for _, _, visible in placed:
            visible &= ~mask
        placed.append((cat + 1, mask, mask.copy()))
        tex = class_texture(rng, cat + 1, height, width)
        img[mask] = tex[mask]
        if rng.uniform() < 0.5:  # outline in a random colour
            colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
            cv2.polylines(
                img,
                [np.round(poly).astype(np.int32)],
                True,
                colour,
                1,
            )
    return finish_image(rng, img), [(c, v) for c, _, v in placed]


def generate_coco(
    root: str, num_train: int = 160, num_val: int = 40, seed: int = 0
) -> dict:
    """Write the COCO-format shapes dataset under ``root``.

    Args:
        root (str): Output folder.
        num_train (int): Train images. Defaults to 160.
        num_val (int): Val images. Defaults to 40.
        seed (int): Seed; the same seed gives the same files. Defaults to 0.

    Returns:
        dict: Counts of images and instances per split.
    """
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    categories = [
        dict(id=i + 1, name=n, supercategory='shape')
        for i, n in enumerate(SHAPE_CLASSES)
    ]
    stats = {}
    for split, count in (('train', num_train), ('val', num_val)):
        img_dir = osp.join(root, f'{split}2017')
        os.makedirs(img_dir, exist_ok=True)
        images, anns = [], []
        for idx in range(count):
            img, insts = make_coco_image(seed, split, idx)
            name = f'{idx:06d}.jpg'
            cv2.imwrite(
                osp.join(img_dir, name),
                img[..., ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, 92],
            )
            image_id = idx + 1
            images.append(
                dict(
                    id=image_id,
                    file_name=name,
                    height=img.shape[0],
                    width=img.shape[1],
                )
            )
            for cat, mask in insts:
                polys = _polygons(mask)
                if not polys:
                    continue
                ys, xs = np.nonzero(mask)
                x0, y0 = int(xs.min()), int(ys.min())
                bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
                anns.append(
                    dict(
                        id=len(anns) + 1,
                        image_id=image_id,
                        category_id=cat,
                        segmentation=polys,
                        area=float(mask.sum()),
                        bbox=[float(v) for v in bbox],
                        iscrowd=0,
                    )
                )
        data = dict(
            info=dict(description='gpusq_mm generated shapes', seed=seed),
            licenses=[],
            images=images,
            annotations=anns,
            categories=categories,
        )
        ann_file = osp.join(root, 'annotations', f'instances_{split}2017.json')
        with open(ann_file, 'w') as f:
            json.dump(data, f)
        stats[split] = dict(images=len(images), instances=len(anns))
    return stats
