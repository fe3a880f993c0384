"""COCO bbox mAP over any multiset of val images (paired bootstrap).

COCO mAP is not a sum over images: each category's precision / recall
curve is built from all images' detections sorted together. It still
decomposes: pycocotools' ``evaluate()`` matches each image's detections to
that image's ground truth independently (``evalImgs``), and only the
accumulation across images is global. So the per-image matches are kept
once, and the mAP of a resample (image ``i`` taken ``w_i`` times) is the
accumulation with every detection and ground-truth box of image ``i``
counted ``w_i`` times: the same curve as copying the image ``w_i`` times,
computed without the copies. With every ``w_i = 1`` it is pycocotools'
own ``stats[0]`` (IoU 0.50:0.95, all areas, 100 detections per image);
with one ``w_i = 0`` it is the mAP without that image.
"""

import contextlib
import io
import os.path as osp
import tempfile
from typing import Dict, List, Sequence

import numpy as np

__all__ = ['coco_per_image', 'coco_map', 'detections_of']

# pycocotools' stats[0]: detections per image for the headline mAP
MAX_DETS = 100


def coco_per_image(coco_gt, detections: List[dict], cat_ids, img_ids) -> Dict:
    """Match each image's detections with pycocotools and keep the matches.

    Args:
        coco_gt (COCO): the ground truth (pycocotools / mmdet ``COCO``).
        detections (list[dict]): COCO result dicts (``image_id``,
            ``category_id``, ``bbox`` xywh, ``score``).
        cat_ids (list[int]): the evaluated categories.
        img_ids (list[int]): the evaluated images.

    Returns:
        dict: ``img_ids`` (sorted, the image order of every per-image
        index), ``iou_thrs``, ``rec_thrs`` and, per category, the
        detections of all images in pycocotools' accumulation order:
        ``img`` (image index of each detection), ``tp`` / ``fp``
        ``(T, D)`` bool (matched / unmatched and not ignored at each IoU
        threshold) and ``n_gt`` ``(N,)`` (non-ignored ground truth per
        image).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        if detections:
            coco_dt = coco_gt.loadRes(detections)
        else:  # loadRes fails on an empty list: an empty result set
            coco_dt = COCO()
            coco_dt.dataset = dict(
                images=coco_gt.dataset['images'],
                categories=coco_gt.dataset['categories'],
                annotations=[],
            )
            coco_dt.createIndex()
    ev = COCOeval(coco_gt, coco_dt, 'bbox')
    ev.params.catIds = list(cat_ids)
    ev.params.imgIds = list(img_ids)
    ev.params.maxDets = [1, 10, MAX_DETS]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
    p = ev.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    area = p.areaRngLbl.index('all')
    cats = []
    for k in range(len(p.catIds)):
        base = k * n_area * n_img + area * n_img
        scores, img, matched, ignored = [], [], [], []
        n_gt = np.zeros(n_img)
        for i in range(n_img):
            e = ev.evalImgs[base + i]
            if e is None:
                continue
            d = len(e['dtScores'][:MAX_DETS])
            scores.append(np.asarray(e['dtScores'][:MAX_DETS], float))
            img.append(np.full(d, i))
            matched.append(np.asarray(e['dtMatches'])[:, :d])
            ignored.append(np.asarray(e['dtIgnore'])[:, :d])
            n_gt[i] = np.count_nonzero(np.asarray(e['gtIgnore']) == 0)
        n_t = len(p.iouThrs)
        if scores:
            order = np.argsort(-np.concatenate(scores), kind='mergesort')
            img_k = np.concatenate(img)[order]
            dtm = np.concatenate(matched, axis=1)[:, order].astype(bool)
            dtig = np.concatenate(ignored, axis=1)[:, order].astype(bool)
        else:
            img_k = np.zeros(0, int)
            dtm = dtig = np.zeros((n_t, 0), bool)
        cats.append(
            dict(img=img_k, tp=dtm & ~dtig, fp=~dtm & ~dtig, n_gt=n_gt)
        )
    return dict(
        img_ids=list(p.imgIds),
        iou_thrs=np.asarray(p.iouThrs),
        rec_thrs=np.asarray(p.recThrs),
        cats=cats,
    )


def coco_map(per_image: Dict, index: Sequence[int]) -> float:
    """bbox mAP (0-1, as mmdet reports it) over the images ``index``
    (positions in ``per_image['img_ids']``; repeats allowed)."""
    n = len(per_image['img_ids'])
    weight = np.bincount(np.asarray(index, int), minlength=n).astype(float)
    rec_thrs = per_image['rec_thrs']
    aps = []
    for cat in per_image['cats']:
        npig = float(weight @ cat['n_gt'])
        if npig == 0:  # no ground truth in this resample: not averaged
            continue
        w = weight[cat['img']]
        tp = np.cumsum(cat['tp'] * w, axis=1)
        fp = np.cumsum(cat['fp'] * w, axis=1)
        for t in range(tp.shape[0]):
            q = np.zeros(len(rec_thrs))
            if tp.shape[1]:
                rc = tp[t] / npig
                pr = tp[t] / (tp[t] + fp[t] + np.spacing(1))
                # precision envelope: the best precision at this recall or
                # beyond
                pr = np.maximum.accumulate(pr[::-1])[::-1]
                at = np.searchsorted(rc, rec_thrs, side='left')
                ok = at < len(pr)
                q[ok] = pr[at[ok]]
            aps.append(q.mean())
    return float(np.mean(aps)) if aps else -1.0


def detections_of(metric, preds: Sequence[dict]) -> List[dict]:
    """mmdet ``CocoMetric`` predictions as COCO bbox result dicts (the
    metric's own conversion, through a temporary file)."""
    from mmengine.fileio import load

    with tempfile.TemporaryDirectory() as tmp:
        files = metric.results2json(preds, osp.join(tmp, 'results'))
        return list(load(files['bbox']))
