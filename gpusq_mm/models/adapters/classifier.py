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
    """

    SUPPORTED = 'mmpretrain ImageClassifier'
    PARTS = {'cls': 1.0}

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

    def logit_losses(
        self, teacher_out: dict, data_samples: Sequence, temperature: float
    ) -> Dict[str, torch.Tensor]:
        student = self.recorder.raw('head')
        head = self.recorder._modules['head']
        multi_label = 'MultiLabel' in type(head).__name__
        fn = kl_div_sigmoid if multi_label else kl_div_softmax
        return {'cls': fn(student, teacher_out['cls'], temperature)}
