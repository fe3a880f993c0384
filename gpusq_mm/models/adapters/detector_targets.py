"""Label-free mode for mmdet detectors: the teacher's detections as GT.

With ``distill.hard='teacher'`` the student's task loss is computed
against the teacher's own post-processed predictions (its ``predict()``
with its ``test_cfg``: NMS, top-k, mask binarisation) instead of the
dataset's annotations: boxes and labels scoring at least
``distill.teacher_score_thr`` (default :data:`DEFAULT_SCORE_THR`) and, for
models with a mask head, their binary masks, in the coordinates of the
network input (``rescale=False``), like the annotations the data pipeline
produces. Ignored (crowd) regions of the dataset are dropped, so the
annotations are never read.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ['DEFAULT_SCORE_THR', 'DetectorTargetsMixin']

#: default score threshold of the teacher's detections used as GT
DEFAULT_SCORE_THR = 0.5


def _as_box_type(boxes: torch.Tensor, like):
    """``boxes`` in the box type of the annotations (``HorizontalBoxes``)."""
    if like is None or isinstance(like, torch.Tensor):
        return boxes
    return type(like)(boxes)


def _pad_masks(masks: torch.Tensor, height: int, width: int):
    from mmdet.structures.mask import BitmapMasks

    out = np.zeros((masks.shape[0], height, width), dtype=np.uint8)
    h, w = min(height, masks.shape[1]), min(width, masks.shape[2])
    out[:, :h, :w] = masks[:, :h, :w].cpu().numpy().astype(np.uint8)
    return BitmapMasks(out, height, width)


class DetectorTargetsMixin:
    """``teacher_targets`` of the detector adapters (see module doc)."""

    LABEL_FREE = True
    USES_SCORE_THR = True

    def teacher_targets(
        self,
        teacher,
        inputs: torch.Tensor,
        data_samples: Sequence,
        score_thr: Optional[float] = None,
    ) -> Tuple[None, List]:
        from mmengine.structures import InstanceData

        thr = DEFAULT_SCORE_THR if score_thr is None else float(score_thr)
        samples = [ds.clone() for ds in data_samples]
        for ds in samples:
            for key in ('pred_instances', 'ignored_instances'):
                if key in ds:
                    delattr(ds, key)
        preds = teacher.predict(inputs, [ds.clone() for ds in samples], False)
        pad_h, pad_w = inputs.shape[-2:]
        for ds, pred in zip(samples, preds):
            res = pred.pred_instances
            keep = res.scores >= thr
            old = ds.gt_instances if 'gt_instances' in ds else None
            gt = InstanceData(metainfo=ds.metainfo)
            gt.bboxes = _as_box_type(
                res.bboxes[keep].detach().float(),
                getattr(old, 'bboxes', None),
            )
            gt.labels = res.labels[keep].detach().long()
            if 'masks' in res and (old is None or 'masks' in old):
                gt.masks = _pad_masks(res.masks[keep], pad_h, pad_w)
            ds.gt_instances = gt
        # the KD teacher pass needs the student's RoIs / queries: later
        return None, samples
