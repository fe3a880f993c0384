"""Per-pixel soft-logit KD for mmseg ``EncoderDecoder`` (UperNet etc.)."""

from typing import Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpusq_mm.distillation import kl_div_softmax

from .base import TaskAdapter

__all__ = ['SegmentorAdapter']


def _aux_names(model: nn.Module) -> List[str]:
    aux = getattr(model, 'auxiliary_head', None)
    if aux is None:
        return []
    if isinstance(aux, nn.ModuleList):
        return [f'auxiliary_head.{i}' for i in range(len(aux))]
    return ['auxiliary_head']


def _logits_module(name: str) -> str:
    # mmseg heads call ``self.forward`` directly in ``loss()``, so a hook
    # on the head never fires; its final classifier ``conv_seg`` is called
    # as a module and outputs the logits.
    return f'{name}.conv_seg'


class SegmentorAdapter(TaskAdapter):
    """KL of per-pixel class distributions, decode and auxiliary heads.

    The teacher's logits are resized (bilinear) to the student's logit size;
    pixels whose ground truth (nearest-resized) is ``ignore_index`` are left
    out. Auxiliary heads are paired by position; a teacher without them
    teaches the student's auxiliary heads from its decode head.

    Label-free mode: the ground truth becomes the teacher's per-pixel
    argmax (its decode-head logits resized to the batch's input size as
    mmseg resizes logits to the labels; single-channel heads: sigmoid >
    the head's threshold); padding outside each image's ``img_shape``
    stays ``ignore_index``.
    """

    SUPPORTED = 'mmseg EncoderDecoder'
    PARTS = {'seg': 1.0, 'seg_aux': 0.4}
    LABEL_FREE = True

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        try:
            from mmseg.models.segmentors import EncoderDecoder
        except ImportError:
            return False
        return isinstance(model, EncoderDecoder) and not isinstance(
            model.decode_head, nn.ModuleList
        )

    def student_modules(self, student: nn.Module) -> List[str]:
        self.aux = _aux_names(student)
        self.ignore_index = getattr(student.decode_head, 'ignore_index', 255)
        return [_logits_module(n) for n in ['decode_head'] + self.aux]

    def teacher_forward(self, teacher, inputs, data_samples) -> dict:
        x = teacher.extract_feat(inputs)
        out = {'decode_head': teacher.decode_head(x)}
        t_aux = dict(teacher.named_modules())
        for i, name in enumerate(_aux_names(teacher)):
            out[f'aux{i}'] = t_aux[name](x)
        return out

    def teacher_targets(self, teacher, inputs, data_samples, score_thr=None):
        from mmengine.structures import PixelData

        out = self.teacher_forward(teacher, inputs, data_samples)
        head = teacher.decode_head
        logits = F.interpolate(
            out['decode_head'].detach().float(),
            size=inputs.shape[-2:],
            mode='bilinear',
            align_corners=getattr(head, 'align_corners', False),
        )
        if logits.shape[1] == 1:
            thr = float(getattr(head, 'threshold', None) or 0.5)
            labels = (logits[:, 0].sigmoid() > thr).long()
        else:
            labels = logits.argmax(1)
        relabelled = []
        for ds, lab in zip(data_samples, labels):
            ds = ds.clone()
            h, w = ds.metainfo.get('img_shape', lab.shape)[:2]
            lab = lab.clone()
            lab[h:, :] = self.ignore_index
            lab[:, w:] = self.ignore_index
            ds.gt_sem_seg = PixelData(data=lab[None])
            relabelled.append(ds)
        return out, relabelled

    def _valid(self, data_samples, size) -> torch.Tensor:
        if not data_samples or not hasattr(data_samples[0], 'gt_sem_seg'):
            return None
        gt = torch.stack([d.gt_sem_seg.data for d in data_samples]).float()
        gt = F.interpolate(gt, size=size, mode='nearest')[:, 0]
        return gt != self.ignore_index

    def _pixel_kl(self, s, t, data_samples, temperature):
        if t.shape[-2:] != s.shape[-2:]:
            t = F.interpolate(
                t, size=s.shape[-2:], mode='bilinear', align_corners=False
            )
        mask = self._valid(data_samples, s.shape[-2:])
        return kl_div_softmax(s, t, temperature, dim=1, mask=mask)

    def logit_losses(
        self, teacher_out: dict, data_samples: Sequence, temperature: float
    ) -> Dict[str, torch.Tensor]:
        s = self.recorder.raw(_logits_module('decode_head'))
        losses = {
            'seg': self._pixel_kl(
                s, teacher_out['decode_head'], data_samples, temperature
            )
        }
        aux = []
        for i, name in enumerate(self.aux):
            name = _logits_module(name)
            if not self.recorder.has(name):
                continue
            t = teacher_out.get(f'aux{i}', teacher_out['decode_head'])
            aux.append(
                self._pixel_kl(
                    self.recorder.raw(name), t, data_samples, temperature
                )
            )
        if aux:
            losses['seg_aux'] = torch.stack(aux).mean()
        return losses
