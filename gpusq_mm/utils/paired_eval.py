"""Paired comparison of two checkpoints on the same val images.

Is ``sparse24`` really below ``sparse24_nokd``, or is the gap one or two
images? Both checkpoints are scored image by image with the config's own
evaluator; the per-image statistics it accumulates (mmseg ``IoUMetric``:
intersection / union areas per class; mmpretrain ``Accuracy``: the
predicted and true class) are kept, and:

- the full-set metric is recomputed from them and checked against the
  evaluator's own number (so the statistics are the metric's);
- a **paired bootstrap** (the same resampled images for both models) gives
  the difference ``B - A`` with a 95 % interval: an interval that holds 0
  means this val set cannot separate the two;
- **one image**: the largest change of each model's metric when one image
  is left out, the "one image moves the metric by" figure.

Detectors (mmdet ``CocoMetric``): COCO bbox mAP is not a sum over images,
but pycocotools matches each image's detections on its own; those matches
are kept and the mAP of any resample is accumulated from them
(:mod:`gpusq_mm.utils.coco_per_image`), in mmdet's units (0-1). Masks are
not compared, so a detector's mask branch does not run while it is scored
(about a third of a tiny Mask R-CNN's CPU inference); its boxes are the
ones it predicts with masks, up to float rounding (mmdet rescales them
at another point of ``predict`` then).

:func:`score_many` scores several checkpoints side by side, in worker
processes with their own thread counts (on a small CPU, two one-thread
processes score faster than one two-thread process).
"""

import copy
import multiprocessing
import os.path as osp
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    'per_image_stats',
    'score_many',
    'drop_mask_branch',
    'paired_compare',
    'metric_of',
    'DIGITS',
]

# evaluator type -> the metric key it reports (CocoMetric: bbox only,
# under the metric's prefix)
SUPPORTED = {
    'IoUMetric': 'mIoU',
    'Accuracy': 'accuracy/top1',
    'CocoMetric': 'bbox_mAP',
}
# how far the recomputed full-set metric may sit from the evaluator's
# rounded one (mmseg / mmpretrain round to 0.01 %, mmdet to 0.001)
TOLERANCE = {'IoUMetric': 0.011, 'Accuracy': 0.011, 'CocoMetric': 0.0006}
# decimals the evaluator reports (% for mIoU / top-1, 0-1 for mAP)
DIGITS = {'IoUMetric': 2, 'Accuracy': 2, 'CocoMetric': 3}


def _metric_cfg(cfg) -> dict:
    ev = cfg.test_evaluator
    evs = ev if isinstance(ev, (list, tuple)) else [ev]
    kinds = [e.get('type') for e in evs]
    found = [e for e in evs if e.get('type') in SUPPORTED]
    if len(found) != 1:
        raise ValueError(
            f'test_evaluator types {kinds}: a paired comparison needs '
            f'exactly one of {sorted(SUPPORTED)}'
        )
    metric_cfg = copy.deepcopy(found[0])
    if metric_cfg['type'] == 'CocoMetric':
        wanted = metric_cfg.get('metric', 'bbox')
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        if 'bbox' not in wanted:
            raise ValueError(
                f'test_evaluator CocoMetric metric={wanted}: the paired '
                "comparison scores bbox mAP, add 'bbox'"
            )
        metric_cfg['metric'] = 'bbox'  # masks are not compared
    return metric_cfg


def drop_mask_branch(model: torch.nn.Module) -> int:
    """Switch off the mask prediction of every RoI head in ``model``
    (mmdet's ``with_mask`` is ``mask_head is not None``); returns how many
    heads had one. Only for scoring boxes: the model predicts no masks
    afterwards."""
    dropped = 0
    for module in list(model.modules()):
        if getattr(module, 'with_mask', False) and hasattr(
            module, 'mask_head'
        ):
            module.mask_head = None
            dropped += 1
    return dropped


def per_image_stats(
    config: str, checkpoint: str, cfg_options: Optional[dict] = None
) -> Dict:
    """Score ``checkpoint`` on the config's test set, image by image.

    Args:
        config (str): mmseg / mmpretrain or gpusq config file.
        checkpoint (str): any stage's checkpoint (the student is scored).
        cfg_options (dict, optional): config overrides.

    Returns:
        dict: ``kind`` (evaluator type), ``key`` (metric name), ``stats``
        (per-image arrays: ``intersect``/``union`` ``(N, C)`` for
        ``IoUMetric``, ``correct`` ``(N,)`` for ``Accuracy``; for
        ``CocoMetric`` ``images`` ``(N,)`` (the COCO image ids) and
        ``per_image``, see :func:`coco_per_image`), ``reported`` (the
        evaluator's own full-set value).
    """
    from mmengine.config import Config
    from mmengine.evaluator import Evaluator
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    from gpusq_mm.deploy.loading import load_student

    if not osp.isfile(config):
        raise FileNotFoundError(f'config file not found: {config}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    metric_cfg = _metric_cfg(cfg)  # before loading: refuse early
    model, cfg = load_student(config, checkpoint, cfg_options)
    kind = metric_cfg['type']
    if kind == 'CocoMetric':
        drop_mask_branch(model)  # bbox only: masks would be thrown away
    if kind == 'Accuracy':
        metric_cfg['topk'] = (1,)
    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        loader = Runner.build_dataloader(loader_cfg)
        evaluator = Evaluator(metric_cfg)
    evaluator.dataset_meta = loader.dataset.metainfo
    (metric,) = evaluator.metrics
    kept: List = []
    compute = metric.compute_metrics

    def keep_then_compute(results):
        kept.extend(results)
        return compute(results)

    metric.compute_metrics = keep_then_compute
    with torch.no_grad():
        for batch in loader:
            evaluator.process(model.test_step(batch), batch)
    reported = evaluator.evaluate(len(loader.dataset))
    key = SUPPORTED[kind]
    if kind == 'CocoMetric':
        key = f'{metric.prefix}/{key}'
        stats = _coco_stats(metric, kept)
    elif kind == 'IoUMetric':
        stats = dict(
            intersect=np.stack([r[0].numpy() for r in kept]).astype(float),
            union=np.stack([r[1].numpy() for r in kept]).astype(float),
        )
    else:
        correct = []
        for r in kept:
            if 'pred_score' in r:
                pred = int(torch.as_tensor(r['pred_score']).argmax())
            else:
                pred = int(torch.as_tensor(r['pred_label']).reshape(-1)[0])
            gt = int(torch.as_tensor(r['gt_label']).reshape(-1)[0])
            correct.append(pred == gt)
        stats = dict(correct=np.asarray(correct, dtype=float))
    out = dict(kind=kind, key=key, stats=stats, reported=reported[key])
    got = metric_of(out, np.arange(_count(out)))
    if abs(got - out['reported']) > TOLERANCE[kind]:
        raise RuntimeError(
            f'{checkpoint}: per-image statistics give {key} {got:.3f}, the '
            f'evaluator {out["reported"]:.3f}'
        )
    return out


def _score_with_threads(
    job: Tuple[str, str, Optional[dict]], threads: Optional[int]
) -> Dict:
    if threads:
        torch.set_num_threads(threads)
    return per_image_stats(*job)


def score_many(
    jobs: Sequence[Tuple[str, str, Optional[dict]]],
    workers: int = 1,
    threads: Optional[int] = None,
) -> List[Dict]:
    """:func:`per_image_stats` of each ``(config, checkpoint,
    cfg_options)`` in ``jobs``, in their order.

    Args:
        jobs (list): ``(config, checkpoint, cfg_options)`` per model.
        workers (int): processes scoring side by side (spawned: each
            builds its own model); 1: one after the other in this process.
            Defaults to 1.
        threads (int, optional): torch threads of each scoring (None:
            torch's default).

    Returns:
        list[dict]: :func:`per_image_stats` of each job.
    """
    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    jobs = [tuple(job) for job in jobs]
    workers = min(workers, len(jobs))
    if workers <= 1:
        before = torch.get_num_threads()
        try:
            return [_score_with_threads(job, threads) for job in jobs]
        finally:
            torch.set_num_threads(before)
    ctx = multiprocessing.get_context('spawn')
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [
            pool.submit(_score_with_threads, job, threads) for job in jobs
        ]
        return [f.result() for f in futures]


def _coco_stats(metric, kept: List) -> Dict:
    """Per-image matches of an mmdet ``CocoMetric``'s kept results."""
    from gpusq_mm.utils.coco_per_image import coco_per_image, detections_of

    _, preds = zip(*kept)
    per_image = coco_per_image(
        metric._coco_api,
        detections_of(metric, preds),
        metric.cat_ids,
        metric.img_ids,
    )
    return dict(images=np.asarray(per_image['img_ids']), per_image=per_image)


def _count(scored: Dict) -> int:
    return len(next(iter(scored['stats'].values())))


def metric_of(scored: Dict, index: Sequence[int]) -> float:
    """The metric (in the evaluator's units) over the images ``index``
    (repeats allowed)."""
    s = scored['stats']
    if scored['kind'] == 'CocoMetric':
        from gpusq_mm.utils.coco_per_image import coco_map

        return coco_map(s['per_image'], index)
    if scored['kind'] == 'IoUMetric':
        inter = s['intersect'][index].sum(0)
        union = s['union'][index].sum(0)
        with np.errstate(invalid='ignore', divide='ignore'):
            iou = inter / union
        return float(np.nanmean(iou) * 100)
    return float(s['correct'][index].mean() * 100)


def _one_image(scored: Dict) -> float:
    n = _count(scored)
    full = metric_of(scored, np.arange(n))
    every = np.arange(n)
    return max(
        abs(metric_of(scored, np.delete(every, i)) - full) for i in every
    )


def paired_compare(
    a: Dict, b: Dict, boot: int = 1000, seed: int = 0
) -> Dict[str, float]:
    """Paired bootstrap of ``B - A`` over the same val images.

    Args:
        a (dict): :func:`per_image_stats` of the reference model.
        b (dict): the same for the other model (same images, same order).
        boot (int): bootstrap resamples. Defaults to 1000.
        seed (int): resampling seed. Defaults to 0.

    Returns:
        dict: ``key``, ``images``, ``a``, ``b``, ``diff`` (B - A),
        ``ci95`` (``[low, high]`` of B - A), ``p_b_above`` (share of
        resamples with B > A), ``one_image_a`` / ``one_image_b`` (largest
        leave-one-image-out change).
    """
    if a['kind'] != b['kind']:
        raise ValueError(f'different metrics: {a["kind"]} vs {b["kind"]}')
    n = _count(a)
    if n != _count(b):
        raise ValueError('the two runs scored different numbers of images')
    if 'images' in a['stats'] and not np.array_equal(
        a['stats']['images'], b['stats']['images']
    ):
        raise ValueError('the two runs scored different images')
    if boot < 100:
        raise ValueError(f'boot={boot}: use at least 100 resamples')
    every = np.arange(n)
    va, vb = metric_of(a, every), metric_of(b, every)
    rng = np.random.default_rng(seed)
    diffs = np.empty(boot)
    for i in range(boot):
        idx = rng.integers(0, n, n)
        diffs[i] = metric_of(b, idx) - metric_of(a, idx)
    low, high = np.percentile(diffs, [2.5, 97.5])
    nd = DIGITS[a['kind']] + 1
    return dict(
        key=a['key'],
        images=n,
        a=round(va, nd),
        b=round(vb, nd),
        diff=round(vb - va, nd),
        ci95=[round(float(low), nd), round(float(high), nd)],
        p_b_above=round(float((diffs > 0).mean()), 3),
        one_image_a=round(_one_image(a), nd),
        one_image_b=round(_one_image(b), nd),
    )
