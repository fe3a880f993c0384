"""Soft-logit KD for mmdet two-stage detectors (Mask / Cascade R-CNN).

- RPN: the objectness maps of every FPN level, compared anchor by anchor
  (teacher and student must share the anchor generator and the input, so
  the maps have identical shapes; a mismatch is an error naming both).
- RoI heads: the teacher classifies the **student's** sampled proposals
  (the RoIs its box head saw during ``loss()``, captured from the box RoI
  extractor's input), so both class distributions describe the same
  boxes. Cascade stages are paired by index (the teacher's last stage
  serves any extra student stage).
"""

from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from gpusq_mm.distillation import kl_div_sigmoid, kl_div_softmax

from .base import TaskAdapter

__all__ = ['TwoStageAdapter']


def _num_stages(model: nn.Module) -> int:
    return getattr(model.roi_head, 'num_stages', 0)


def _uses_sigmoid(head: nn.Module) -> bool:
    loss_cls = getattr(head, 'loss_cls', None)
    return bool(getattr(loss_cls, 'use_sigmoid', False))


class TwoStageAdapter(TaskAdapter):
    """RPN objectness KD + RoI class-logit KD on shared RoIs."""

    SUPPORTED = 'mmdet TwoStageDetector (with rpn_head and roi_head)'
    PARTS = {'rpn': 1.0, 'roi': 1.0}

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        try:
            from mmdet.models.detectors import TwoStageDetector
        except ImportError:
            return False
        return (
            isinstance(model, TwoStageDetector)
            and model.with_rpn
            and model.with_roi_head
            and model.roi_head.with_bbox
        )

    def student_modules(self, student: nn.Module) -> List[str]:
        n = _num_stages(student)
        if n:
            self.stages = [
                (f'roi_head.bbox_roi_extractor.{i}', f'roi_head.bbox_head.{i}')
                for i in range(n)
            ]
        else:
            self.stages = [
                ('roi_head.bbox_roi_extractor', 'roi_head.bbox_head')
            ]
        self.rpn_sigmoid = bool(
            getattr(student.rpn_head, 'use_sigmoid_cls', True)
        )
        names = ['rpn_head']
        for extractor, head in self.stages:
            names += [extractor, head]
        return names

    def teacher_forward(self, teacher, inputs, data_samples) -> dict:
        x = teacher.extract_feat(inputs)
        rpn_cls = teacher.rpn_head(x)[0]
        roi_cls = []
        n_t = _num_stages(teacher)
        for i, (extractor, _) in enumerate(self.stages):
            if not self.recorder.has(extractor):
                roi_cls.append(None)
                continue
            rois = self.recorder.args(extractor)[1].detach()
            if n_t:
                out = teacher.roi_head._bbox_forward(min(i, n_t - 1), x, rois)
            else:
                out = teacher.roi_head._bbox_forward(x, rois)
            roi_cls.append(out['cls_score'])
        return {'rpn': rpn_cls, 'roi': roi_cls}

    def _rpn_loss(self, s_maps, t_maps, temperature) -> torch.Tensor:
        if len(s_maps) != len(t_maps):
            raise ValueError(
                f'RPN levels differ: student {len(s_maps)} vs teacher '
                f'{len(t_maps)}'
            )
        losses = []
        for s, t in zip(s_maps, t_maps):
            if s.shape != t.shape:
                raise ValueError(
                    'RPN maps are compared anchor by anchor: teacher and '
                    'student need the same anchor generator; got student '
                    f'{tuple(s.shape)} vs teacher {tuple(t.shape)}'
                )
            if self.rpn_sigmoid:
                losses.append(kl_div_sigmoid(s, t, temperature, dim=1))
            else:  # (B, A * 2, H, W): softmax over bg / fg per anchor
                b, c, h, w = s.shape
                s2 = s.reshape(b, c // 2, 2, h, w)
                t2 = t.reshape(b, c // 2, 2, h, w)
                losses.append(kl_div_softmax(s2, t2, temperature, dim=2))
        return torch.stack(losses).mean()

    def logit_losses(
        self, teacher_out: dict, data_samples: Sequence, temperature: float
    ) -> Dict[str, torch.Tensor]:
        s_rpn = self.recorder.raw('rpn_head')[0]
        losses = {
            'rpn': self._rpn_loss(s_rpn, teacher_out['rpn'], temperature)
        }
        roi = []
        modules = self.recorder._modules
        for (_, head), t_cls in zip(self.stages, teacher_out['roi']):
            if t_cls is None or not self.recorder.has(head):
                continue
            s_cls = self.recorder.raw(head)[0]
            fn = (
                kl_div_sigmoid
                if _uses_sigmoid(modules[head])
                else (kl_div_softmax)
            )
            roi.append(fn(s_cls, t_cls, temperature))
        if roi:
            losses['roi'] = torch.stack(roi).mean()
        return losses
