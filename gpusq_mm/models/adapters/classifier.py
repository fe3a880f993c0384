"""Soft-logit KD for mmpretrain image classifiers (``ImageClassifier``)."""

from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from gpusq_mm.distillation import kl_div_sigmoid, kl_div_softmax

from .base import TaskAdapter

__all__ = ['ClassifierAdapter']


class ClassifierAdapter(TaskAdapter):
    """Class-logit KL between the heads of two mmpretrain classifiers.

    The student's logits are the output of its ``head`` module during its
    own ``loss()`` (mix-up / cut-mix already applied to the batch, which the
    teacher sees too). Multi-label heads use the binary (sigmoid) KL.

    Label-free mode: each image's label becomes the teacher's argmax class
    (multi-label heads: the classes whose sigmoid score exceeds 0.5); a
    sample carrying a soft ``gt_score`` (mix-up / cut-mix) gets the one-hot
    (multi-hot) of the teacher's classes instead.
    """

    SUPPORTED = 'mmpretrain ImageClassifier'
    PARTS = {'cls': 1.0}
    LABEL_FREE = True

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        try:
            from mmpretrain.models.classifiers import ImageClassifier
        except ImportError:
            return False
        return isinstance(model, ImageClassifier) and model.with_head

    def student_modules(self, student: nn.Module) -> List[str]:
        return ['head']

    def teacher_forward(self, teacher, inputs, data_samples) -> dict:
        feats = teacher.extract_feat(inputs)
        return {'cls': teacher.head(feats)}

    def _multi_label(self) -> bool:
        return 'MultiLabel' in type(self.recorder._modules['head']).__name__

    def teacher_targets(self, teacher, inputs, data_samples, score_thr=None):
        out = self.teacher_forward(teacher, inputs, data_samples)
        logits = out['cls'].detach()
        relabelled = []
        for ds, row in zip(data_samples, logits):
            ds = ds.clone()
            if self._multi_label():
                hot = (row.sigmoid() > 0.5).to(row.dtype)
                ds.set_gt_label(hot.nonzero()[:, 0])
            else:
                hot = torch.zeros_like(row)
                hot[row.argmax()] = 1.0
                ds.set_gt_label(int(row.argmax()))
            if 'gt_score' in ds:
                ds.set_gt_score(hot)
            relabelled.append(ds)
        return out, relabelled

    def logit_losses(
        self, teacher_out: dict, data_samples: Sequence, temperature: float
    ) -> Dict[str, torch.Tensor]:
        student = self.recorder.raw('head')
        fn = kl_div_sigmoid if self._multi_label() else kl_div_softmax
        return {'cls': fn(student, teacher_out['cls'], temperature)}
