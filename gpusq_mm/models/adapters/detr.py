"""Soft-logit KD for the mmdet DETR family (DETR, Deformable DETR, DINO).

Query correspondence (documented choice): per image and per decoder layer,
the student's queries are paired with the teacher's by a Hungarian matching
on that layer's predictions (class agreement + box L1 + GIoU, see
:func:`gpusq_mm.distillation.match_queries`), and the class-logit KL is
taken on the matched pairs. Every decoder layer is distilled, as DETR
trains every layer against the ground truth (its auxiliary losses): part
``query`` is the final layer, part ``query_aux`` the sum over the earlier
layers (each layer weighted like the final one, as mmdet weights the
``d{i}.loss_cls`` terms; ``parts=dict(query_aux=0)`` distils the final
layer only). With different decoder depths, layers are paired from the
last one backwards (the teacher's first layer serves any extra student
layer). DINO's denoising queries (training only, placed before the
matching queries) are left out: only the last ``num_queries`` outputs of
the student take part. Encoder KD comes from the feature modules (default
``backbone``, ``neck``, ``encoder``).
"""

import inspect
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from gpusq_mm.distillation import kl_div_sigmoid, kl_div_softmax, match_queries

from .base import TaskAdapter
from .detector_targets import DetectorTargetsMixin

__all__ = ['DETRAdapter']


def _uses_sigmoid(head: nn.Module) -> bool:
    return bool(getattr(getattr(head, 'loss_cls', None), 'use_sigmoid', False))


class DETRAdapter(DetectorTargetsMixin, TaskAdapter):
    """Matched-query class-logit KD on every decoder layer of
    ``DetectionTransformer`` models."""

    SUPPORTED = 'mmdet DetectionTransformer (DETR, Deformable DETR, DINO)'
    PARTS = {'query': 1.0, 'query_aux': 1.0}

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
        layers = getattr(getattr(student, 'decoder', None), 'num_layers', 2)
        if self.user_parts.get('query_aux', 0) > 0 and layers < 2:
            raise ValueError(
                'distill.logits.parts.query_aux (KD of the earlier decoder '
                f'layers) is set but the decoder has {layers} layer'
            )

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
        # (layers, batch, queries, ...): every decoder layer's predictions
        return {'cls': cls, 'boxes': boxes}

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        if self.sigmoid:
            return logits.float().sigmoid()
        return logits.float().softmax(-1)[..., :-1]  # drop "no object"

    def _matched_kl(self, s_cls, s_boxes, t_cls, t_boxes, temperature):
        """KL on the Hungarian-matched queries of one decoder layer."""
        s_list, t_list = [], []
        s_probs, t_probs = self._probs(s_cls), self._probs(t_cls)
        for b in range(s_cls.shape[0]):
            si, ti = match_queries(
                s_probs[b], s_boxes[b], t_probs[b], t_boxes[b]
            )
            s_list.append(s_cls[b, si])
            t_list.append(t_cls[b, ti])
        fn = kl_div_sigmoid if self.sigmoid else kl_div_softmax
        return fn(torch.cat(s_list), torch.cat(t_list), temperature)

    def layer_losses(
        self, teacher_out: dict, temperature: float, layers: int = None
    ) -> List[torch.Tensor]:
        """Unweighted KD loss of each student decoder layer, first to last.

        Args:
            teacher_out (dict): :meth:`teacher_forward`'s output.
            temperature (float): the KD temperature.
            layers (int, optional): only the last ``layers`` student
                layers. Defaults to None (all).
        """
        s_cls, s_boxes = self.recorder.raw('bbox_head')[:2]
        t_cls, t_boxes = teacher_out['cls'], teacher_out['boxes']
        if s_cls.shape[-1] != t_cls.shape[-1]:
            raise ValueError(
                f'class dimensions differ: student {s_cls.shape[-1]} vs '
                f'teacher {t_cls.shape[-1]}'
            )
        q = self.num_queries  # DINO: drop the leading denoising queries
        n_s, n_t = s_cls.shape[0], t_cls.shape[0]
        first = 0 if layers is None else max(0, n_s - layers)
        losses = []
        for layer in range(first, n_s):
            t_layer = max(0, n_t - n_s + layer)
            losses.append(
                self._matched_kl(
                    s_cls[layer][:, -q:],
                    s_boxes[layer][:, -q:],
                    t_cls[t_layer],
                    t_boxes[t_layer],
                    temperature,
                )
            )
        return losses

    def logit_losses(
        self, teacher_out: dict, data_samples: Sequence, temperature: float
    ) -> Dict[str, torch.Tensor]:
        aux = self.parts['query_aux'] > 0
        per_layer = self.layer_losses(
            teacher_out, temperature, layers=None if aux else 1
        )
        losses = {'query': per_layer[-1]}
        if aux and len(per_layer) > 1:
            losses['query_aux'] = torch.stack(per_layer[:-1]).sum()
        return losses
