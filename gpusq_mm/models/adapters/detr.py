"""Soft-logit KD for the mmdet DETR family (DETR, Deformable DETR, DINO).

Query correspondence (documented choice): per image, the student's
final-layer queries are paired with the teacher's by a Hungarian matching
on their predictions (class agreement + box L1 + GIoU, see
:func:`gpusq_mm.distillation.match_queries`); the class-logit KL is taken on
the matched pairs of the final decoder layer. DINO's denoising queries
(training only, placed before the matching queries) are left out: only the
last ``num_queries`` outputs of the student take part. Encoder KD comes from
the feature modules (default ``backbone``, ``neck``, ``encoder``).
"""

import inspect
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from gpusq_mm.distillation import kl_div_sigmoid, kl_div_softmax, match_queries

from .base import TaskAdapter

__all__ = ['DETRAdapter']


def _uses_sigmoid(head: nn.Module) -> bool:
    return bool(getattr(getattr(head, 'loss_cls', None), 'use_sigmoid', False))


class DETRAdapter(TaskAdapter):
    """Matched-query class-logit KD for ``DetectionTransformer`` models."""

    SUPPORTED = 'mmdet DetectionTransformer (DETR, Deformable DETR, DINO)'
    PARTS = {'query': 1.0}

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        try:
            from mmdet.models.detectors import DetectionTransformer
        except ImportError:
            return False
        return isinstance(model, DetectionTransformer)

    def check_teacher(self, student, teacher) -> None:
        super().check_teacher(student, teacher)
        if _uses_sigmoid(student.bbox_head) != _uses_sigmoid(
            teacher.bbox_head
        ):
            raise TypeError(
                'teacher and student DETR heads must both use sigmoid or '
                'both softmax class scores'
            )
        self.sigmoid = _uses_sigmoid(student.bbox_head)
        self.num_queries = student.num_queries

    def student_modules(self, student: nn.Module) -> List[str]:
        return ['bbox_head']

    @staticmethod
    def default_feature_modules(model: nn.Module) -> List[str]:
        names = dict(model.named_children())
        return [n for n in ('backbone', 'neck', 'encoder') if n in names]

    def teacher_forward(self, teacher, inputs, data_samples) -> dict:
        feats = teacher.extract_feat(inputs)
        head_inputs = teacher.forward_transformer(feats, data_samples)
        params = inspect.signature(teacher.bbox_head.forward).parameters
        kwargs = {k: v for k, v in head_inputs.items() if k in params}
        cls, boxes = teacher.bbox_head(**kwargs)[:2]
        return {'cls': cls[-1], 'boxes': boxes[-1]}

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        if self.sigmoid:
            return logits.float().sigmoid()
        return logits.float().softmax(-1)[..., :-1]  # drop "no object"

    def logit_losses(
        self, teacher_out: dict, data_samples: Sequence, temperature: float
    ) -> Dict[str, torch.Tensor]:
        s_cls, s_boxes = self.recorder.raw('bbox_head')[:2]
        q = self.num_queries
        s_cls, s_boxes = s_cls[-1][:, -q:], s_boxes[-1][:, -q:]
        t_cls, t_boxes = teacher_out['cls'], teacher_out['boxes']
        if s_cls.shape[-1] != t_cls.shape[-1]:
            raise ValueError(
                f'class dimensions differ: student {s_cls.shape[-1]} vs '
                f'teacher {t_cls.shape[-1]}'
            )
        s_list, t_list = [], []
        s_probs, t_probs = self._probs(s_cls), self._probs(t_cls)
        for b in range(s_cls.shape[0]):
            si, ti = match_queries(
                s_probs[b], s_boxes[b], t_probs[b], t_boxes[b]
            )
            s_list.append(s_cls[b, si])
            t_list.append(t_cls[b, ti])
        fn = kl_div_sigmoid if self.sigmoid else kl_div_softmax
        loss = fn(torch.cat(s_list), torch.cat(t_list), temperature)
        return {'query': loss}
