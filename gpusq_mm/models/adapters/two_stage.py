"""Soft-logit KD for mmdet two-stage detectors (Mask / Cascade R-CNN).

- RPN: the objectness maps of every FPN level, compared anchor by anchor
  (teacher and student must share the anchor generator and the input, so
  the maps have identical shapes; a mismatch is an error naming both).
- RoI heads: the teacher classifies the **student's** sampled proposals
  (the RoIs its box head saw during ``loss()``, captured from the box RoI
  extractor's input), so both class distributions describe the same
  boxes. Cascade stages are paired by index (the teacher's last stage
  serves any extra student stage).
- Mask heads (part ``mask``): the teacher's mask head runs on the
  **student's** positive RoIs (the input of the student's mask RoI
  extractor during ``loss()``); the binary KL between the two sigmoid
  masks is taken per pixel on the channel the student's mask loss trains
  (the ground-truth class of each RoI, captured from the input of its
  ``loss_mask``; channel 0 for class-agnostic heads). Zero when the two
  mask logits are equal.
"""

from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from gpusq_mm.distillation import kl_div_sigmoid, kl_div_softmax

from .base import TaskAdapter
from .detector_targets import DetectorTargetsMixin

__all__ = ['TwoStageAdapter']


def _num_stages(model: nn.Module) -> int:
    return getattr(model.roi_head, 'num_stages', 0)


def _uses_sigmoid(head: nn.Module) -> bool:
    loss_cls = getattr(head, 'loss_cls', None)
    return bool(getattr(loss_cls, 'use_sigmoid', False))


def _with_mask(model: nn.Module) -> bool:
    return bool(getattr(model.roi_head, 'with_mask', False))


def _mask_pixel_kl(s, t, labels, temperature) -> torch.Tensor:
    """Per-pixel binary KL of the mask logits on each RoI's channel."""
    idx = torch.arange(s.shape[0], device=s.device)
    labels = labels.to(s.device).long()
    s = s[idx, labels if s.shape[1] > 1 else 0]
    t = t[idx, labels if t.shape[1] > 1 else 0]
    if s.shape != t.shape:
        raise ValueError(
            'mask KD compares the masks pixel by pixel: student mask '
            f'{tuple(s.shape[1:])} vs teacher {tuple(t.shape[1:])}'
        )
    return kl_div_sigmoid(
        s.reshape(-1, 1), t.reshape(-1, 1), temperature, dim=-1
    )


class TwoStageAdapter(DetectorTargetsMixin, TaskAdapter):
    """RPN objectness KD + RoI class-logit KD + mask KD on shared RoIs."""

    SUPPORTED = 'mmdet TwoStageDetector (with rpn_head and roi_head)'
    PARTS = {'rpn': 1.0, 'roi': 1.0, 'mask': 1.0}

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
        self.mask_stages = []
        if self.user_parts.get('mask', 0) > 0 and not _with_mask(student):
            raise ValueError(
                'distill.logits.parts.mask is set but '
                f'{type(student).__name__} has no mask head'
            )
        if _with_mask(student) and self.parts['mask'] > 0:
            if getattr(student.roi_head, 'share_roi_extractor', False):
                raise ValueError(
                    "mask KD runs the teacher on the RoIs of the student's "
                    'mask RoI extractor; this roi_head shares the box '
                    'extractor (no mask_roi_extractor): set '
                    'distill.logits.parts=dict(mask=0)'
                )
            stages = [f'.{i}' for i in range(n)] if n else ['']
            self.mask_stages = [
                (
                    f'roi_head.mask_roi_extractor{i}',
                    f'roi_head.mask_head{i}',
                    f'roi_head.mask_head{i}.loss_mask',
                )
                for i in stages
            ]
            for triple in self.mask_stages:
                names += list(triple)
        return names

    def check_teacher(self, student, teacher) -> None:
        super().check_teacher(student, teacher)
        if self.parts['mask'] > 0 and _with_mask(student):
            if not _with_mask(teacher):
                raise TypeError(
                    f'the student {type(student).__name__} has a mask head '
                    'but the teacher has none: mask KD needs one (or set '
                    'distill.logits.parts=dict(mask=0))'
                )

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
        masks = []
        for i, (extractor, _, _) in enumerate(self.mask_stages):
            if not self.recorder.has(extractor):
                masks.append(None)
                continue
            rois = self.recorder.args(extractor)[1].detach()
            if rois.shape[0] == 0:  # no positive RoI
                masks.append(rois.new_zeros((0,)))
                continue
            if n_t:
                out = teacher.roi_head._mask_forward(min(i, n_t - 1), x, rois)
            else:
                out = teacher.roi_head._mask_forward(x, rois)
            masks.append(out.get('mask_preds', out.get('mask_pred')))
        return {'rpn': rpn_cls, 'roi': roi_cls, 'mask': masks}

    def mask_losses(
        self, teacher_out: dict, temperature: float
    ) -> List[torch.Tensor]:
        """Unweighted mask-KD loss of each student mask stage that ran."""
        losses = []
        stages = zip(self.mask_stages, teacher_out.get('mask', []))
        for (_, head, loss_mask), t_mask in stages:
            if t_mask is None or not self.recorder.has(head):
                continue
            s_mask = self.recorder.raw(head)
            if s_mask.shape[0] == 0:  # no positive RoI: loss_mask skipped
                losses.append(s_mask.sum() * 0.0)
                continue
            if not self.recorder.has(loss_mask):
                raise RuntimeError(
                    f'{loss_mask} did not run: the ground-truth channel of '
                    'each positive RoI is read from its input'
                )
            labels = self.recorder.args(loss_mask)[2]
            losses.append(
                _mask_pixel_kl(s_mask, t_mask.detach(), labels, temperature)
            )
        return losses

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
        mask = self.mask_losses(teacher_out, temperature)
        if mask:
            losses['mask'] = torch.stack(mask).mean()
        return losses
