"""COCO bbox mAP of image resamples from per-image matches, checked against
pycocotools run on the resampled image sets themselves."""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from gpusq_mm.utils.coco_per_image import coco_map, coco_per_image

N_IMG, CATS = 10, (1, 2, 3)


def _dataset(seed=0):
    """Ground truth (one crowd box) and scored detections: jittered copies
    of most boxes, some duplicates and false positives."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for img in range(1, N_IMG + 1):
        images.append(dict(id=img, width=200, height=200))
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(8, 50, 2)
            cat = int(rng.choice(CATS[:2]))  # category 3: never in the gt
            anns.append(
                dict(
                    id=len(anns) + 1,
                    image_id=img,
                    category_id=cat,
                    bbox=[x, y, w, h],
                    area=w * h,
                    iscrowd=int(len(anns) == 3),
                )
            )
            for _ in range(rng.integers(0, 3)):  # 0-2 detections of it
                jit = rng.normal(0, 4, 4)
                dets.append(
                    dict(
                        image_id=img,
                        category_id=cat,
                        bbox=[x + jit[0], y + jit[1], w + jit[2], h + jit[3]],
                        score=float(rng.uniform(0.05, 1)),
                    )
                )
        for _ in range(rng.integers(0, 3)):  # false positives
            x, y = rng.uniform(0, 150, 2)
            dets.append(
                dict(
                    image_id=img,
                    category_id=int(rng.choice(CATS)),
                    bbox=[x, y, 20.0, 20.0],
                    score=float(rng.uniform(0.05, 1)),
                )
            )
    cats = [dict(id=c, name=f'c{c}') for c in CATS]
    return dict(images=images, annotations=anns, categories=cats), dets


def _coco(dataset):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(dataset)
        coco.createIndex()
    return coco


def _pycocotools_map(dataset, dets, img_ids):
    """stats[0] of pycocotools itself on the given images."""
    gt = _coco(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), 'bbox')
        ev.params.imgIds = list(img_ids)
        ev.params.catIds = list(CATS)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0]


def _with_copies(dataset, dets, copies):
    """The dataset with images ``copies`` (ids) added again under new ids,
    their ground truth and detections copied."""
    dataset = copy.deepcopy(dataset)
    dets = copy.deepcopy(dets)
    next_id = N_IMG + 1
    for img in copies:
        dataset['images'].append(dict(id=next_id, width=200, height=200))
        for a in [a for a in dataset['annotations'] if a['image_id'] == img]:
            a = dict(a, id=len(dataset['annotations']) + 1, image_id=next_id)
            dataset['annotations'].append(a)
        same = [d for d in dets if d['image_id'] == img]
        dets += [dict(d, image_id=next_id) for d in same]
        next_id += 1
    return dataset, dets


@pytest.mark.parametrize('seed', [0, 1])
def test_resampled_map_is_pycocotools_on_the_resampled_images(seed):
    dataset, dets = _dataset(seed)
    ids = list(range(1, N_IMG + 1))
    per_image = coco_per_image(_coco(dataset), dets, CATS, ids)
    assert per_image['img_ids'] == ids
    every = list(range(N_IMG))
    full = coco_map(per_image, every)
    assert 0.1 < full < 0.95  # a curve with hits, misses and crowd boxes
    assert full == pytest.approx(
        _pycocotools_map(dataset, dets, ids), abs=1e-12
    )
    # leave one image out = pycocotools without it
    for drop in (0, 4, N_IMG - 1):
        kept = [i for i in every if i != drop]
        want = _pycocotools_map(dataset, dets, [ids[i] for i in kept])
        assert coco_map(per_image, kept) == pytest.approx(want, abs=1e-12)
    # an image taken twice (a bootstrap resample) = the image copied
    resample = every + [0, 3, 3]
    big, big_dets = _with_copies(dataset, dets, [ids[0], ids[3], ids[3]])
    want = _pycocotools_map(big, big_dets, [im['id'] for im in big['images']])
    assert coco_map(per_image, resample) == pytest.approx(want, abs=1e-12)


def test_no_detections_and_categories_without_ground_truth():
    dataset, dets = _dataset(0)
    ids = list(range(1, N_IMG + 1))
    # no detections at all: every category with ground truth scores 0
    empty = coco_per_image(_coco(dataset), [], CATS, ids)
    assert coco_map(empty, range(N_IMG)) == 0.0
    # a resample of images without any ground truth: nothing to average
    per_image = coco_per_image(_coco(dataset), dets, CATS, ids)
    bare = [
        i
        for i in range(N_IMG)
        if not any(a['image_id'] == ids[i] for a in dataset['annotations'])
    ]
    if bare:
        assert coco_map(per_image, bare) == -1.0
