"""ADE20K-format semantic segmentation data: regions told apart by texture.

Writes the layout that mmseg's ``ADE20KDataset`` reads unchanged::

    root/images/{training,validation}/*.jpg
    root/annotations/{training,validation}/*.png   # one channel, uint8

Label PNGs use the real ADE20K label space: ``0`` is unlabelled (ignored
with ``reduce_zero_label=True``) and each of :data:`TEXTURE_CLASSES` is
written with its ADE20K id (:data:`ADE_IDS`, e.g. ``sky`` = 3), so
``ADE20KDataset`` reads the files as is, with its 150 classes or, through
``metainfo=dict(classes=TEXTURE_CLASSES)``, remapped to ``0..5``. A scene
is a background region plus overlapping wobbly blobs; each region's class
is told by its texture pattern (:data:`TEXTURES`), drawn in random
colours, so colour is no cue. Some scenes hold an unlabelled blob.
"""

import os
import os.path as osp

import cv2
import numpy as np

from .shapes import finish_image, random_colour

#: Region classes: ADE20K class names, in ADE20K order.
TEXTURE_CLASSES = ('wall', 'sky', 'floor', 'grass', 'curtain', 'rug')
#: Their ADE20K ids (the pixel values in the label PNGs).
ADE_IDS = (1, 3, 4, 10, 19, 29)
#: The texture that tells each class apart.
TEXTURES = ('hstripes', 'smooth', 'checker', 'speckle', 'vstripes', 'dots')

SPLITS = {'training': 0, 'validation': 1}


def class_texture(
    rng: np.random.Generator,
    label: int,
    height: int,
    width: int,
    period: tuple = (6, 14),
    textures: tuple = TEXTURES,
    min_contrast: float = 120,
) -> np.ndarray:
    """Texture of class ``TEXTURE_CLASSES[label - 1]`` in random colours.

    Args:
        rng (np.random.Generator): Source of randomness.
        label (int): Class index from 1.
        height (int): Height in pixels.
        width (int): Width in pixels.
        period (tuple): Range of the pattern period in pixels (stripes,
            checks, dots). Defaults to ``(6, 14)``.
        textures (tuple): The pattern of each class, from ``'hstripes'``,
            ``'vstripes'``, ``'dstripes'`` (diagonal), ``'smooth'``,
            ``'checker'``, ``'dots'``, ``'speckle'``. Defaults to
            :data:`TEXTURES`.
        min_contrast (float): Least summed RGB distance between the
            pattern's two colours, so that it stays visible. Defaults
            to 120.

    Returns:
        np.ndarray: ``(height, width, 3)`` float image.
    """
    c0, c1 = random_colour(rng), random_colour(rng)
    # keep the two colours apart so the pattern is visible
    while np.abs(c0 - c1).sum() < min_contrast:
        c1 = random_colour(rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(*period)
    name = textures[label - 1]
    if name == 'smooth':
        a = rng.uniform(0, 2 * np.pi)
        w = np.cos(a) * xx + np.sin(a) * yy
        w = (w - w.min()) / max(float(np.ptp(w)), 1.0) * 0.6
    elif name == 'hstripes':
        w = (np.sin(2 * np.pi * yy / period + rng.uniform(0, 6)) > 0) * 1.0
    elif name == 'vstripes':
        w = (np.sin(2 * np.pi * xx / period + rng.uniform(0, 6)) > 0) * 1.0
    elif name == 'dstripes':
        d = (xx + yy) / np.sqrt(2)
        w = (np.sin(2 * np.pi * d / period + rng.uniform(0, 6)) > 0) * 1.0
    elif name == 'checker':
        w = ((xx // (period / 2) + yy // (period / 2)) % 2) * 1.0
    elif name == 'dots':
        cx = (xx + rng.uniform(0, period)) % period - period / 2
        cy = (yy + rng.uniform(0, period)) % period - period / 2
        w = (cx * cx + cy * cy < (period * 0.3) ** 2) * 1.0
    elif name == 'speckle':  # random salt-and-pepper at mid density
        w = (rng.uniform(0, 1, (height, width)) < 0.35) * 1.0
    else:
        raise ValueError(f'unknown texture {name!r}')
    w = w.astype(np.float32)[..., None]
    return c0 * (1 - w) + c1 * w


def _blob(rng, height, width) -> np.ndarray:
    """A wobbly closed region as a boolean mask."""
    n = 24
    r = rng.uniform(0.12, 0.35) * min(height, width)
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    wobble = 1 + 0.25 * np.sin(ang * rng.integers(2, 5) + rng.uniform(0, 6))
    rad = r * wobble * rng.uniform(0.8, 1.2, n)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def make_ade_image(seed: int, split: str, index: int):
    """Render one scene and its label map.

    Returns:
        tuple: ``(image uint8 HxWx3 RGB, label uint8 HxW)``; labels are
        ADE20K ids, 0 unlabelled.
    """
    rng = np.random.default_rng([seed, SPLITS[split], index, 2])
    height = int(rng.integers(14, 21)) * 16
    width = int(rng.integers(14, 21)) * 16
    k = len(TEXTURE_CLASSES)
    label = np.full((height, width), int(rng.integers(1, k + 1)), np.uint8)
    # split the background horizontally sometimes (a "horizon")
    if rng.uniform() < 0.5:
        y = int(rng.integers(height // 4, 3 * height // 4))
        label[y:] = int(rng.integers(1, k + 1))
    for _ in range(int(rng.integers(2, 6))):
        label[_blob(rng, height, width)] = int(rng.integers(1, k + 1))
    if rng.uniform() < 0.3:
        label[_blob(rng, height, width)] = 0
    img = np.zeros((height, width, 3), np.float32)
    for value in np.unique(label):
        region = label == value
        if value == 0:
            tex = rng.uniform(0, 255, (height, width, 3))
            tex = cv2.GaussianBlur(tex.astype(np.float32), (7, 7), 0)
        else:
            tex = class_texture(rng, int(value), height, width)
        img[region] = tex[region]
    ade = np.zeros(k + 1, np.uint8)
    ade[1:] = ADE_IDS
    return finish_image(rng, img), ade[label]


def generate_ade(
    root: str, num_train: int = 160, num_val: int = 40, seed: int = 0
) -> dict:
    """Write the ADE20K-format texture dataset under ``root``.

    Args:
        root (str): Output folder.
        num_train (int): Training images. Defaults to 160.
        num_val (int): Validation images. Defaults to 40.
        seed (int): Seed; the same seed gives the same files. Defaults to 0.

    Returns:
        dict: Image counts per split.
    """
    stats = {}
    for split, count in (('training', num_train), ('validation', num_val)):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for idx in range(count):
            img, label = make_ade_image(seed, split, idx)
            stem = f'gen_{split}_{idx:06d}'
            cv2.imwrite(
                osp.join(img_dir, stem + '.jpg'),
                img[..., ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, 92],
            )
            cv2.imwrite(osp.join(ann_dir, stem + '.png'), label)
        stats[split] = dict(images=count)
    return stats
