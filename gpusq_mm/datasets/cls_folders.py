"""ImageNet-style class folders: one shape per image on a cluttered scene.

Writes the layout that mmpretrain's ``CustomDataset`` (and ``ImageNet``
without an annotation file) reads unchanged::

    root/{train,val}/<class name>/*.JPEG

Classes are :data:`SHAPE_CLASSES`, assigned round-robin so every class
holds the same number of images (up to one). Position, size, rotation,
colour and texture vary; distractor clutter is drawn under the shape.
"""

import os
import os.path as osp

import cv2
import numpy as np

from .shapes import (
    SHAPE_CLASSES,
    fill_mask,
    finish_image,
    noisy_background,
    shape_polygon,
    textured_patch,
)

SPLITS = {'train': 0, 'val': 1}


def make_cls_image(seed: int, split: str, index: int):
    """Render one image and its class index.

    Returns:
        tuple: ``(image uint8 HxWx3 RGB, class index from 0)``.
    """
    rng = np.random.default_rng([seed, SPLITS[split], index, 3])
    label = index % len(SHAPE_CLASSES)
    size = int(rng.integers(64, 97))
    img = noisy_background(rng, size, size)
    radius = rng.uniform(0.25, 0.42) * size
    center = rng.uniform(radius * 0.85, size - radius * 0.85, 2)
    poly = shape_polygon(SHAPE_CLASSES[label], rng, tuple(center), radius)
    mask = fill_mask(poly, size, size)
    shape = textured_patch(rng, size, size)
    # keep the shape visible: push its colour away from the background's
    diff = shape[mask].mean(0) - img[~mask].mean(0)
    if np.abs(diff).sum() < 150:
        shape += np.where(img[~mask].mean(0) > 127, -1.0, 1.0) * 80
    img[mask] = shape[mask]
    return finish_image(rng, img), label


def generate_cls(
    root: str, num_train: int = 600, num_val: int = 120, seed: int = 0
) -> dict:
    """Write the class-folder shapes dataset under ``root``.

    Args:
        root (str): Output folder.
        num_train (int): Train images over all classes. Defaults to 600.
        num_val (int): Val images over all classes. Defaults to 120.
        seed (int): Seed; the same seed gives the same files. Defaults to 0.

    Returns:
        dict: Image counts per split.
    """
    stats = {}
    for split, count in (('train', num_train), ('val', num_val)):
        for name in SHAPE_CLASSES:
            os.makedirs(osp.join(root, split, name), exist_ok=True)
        for idx in range(count):
            img, label = make_cls_image(seed, split, idx)
            path = osp.join(
                root, split, SHAPE_CLASSES[label], f'{idx:06d}.JPEG'
            )
            cv2.imwrite(path, img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        stats[split] = dict(images=count)
    return stats
