"""The interface between the GPUSQ algorithm and one task family.

An adapter knows, for one kind of OpenMMLab model, where the student's
logits appear while its own ``loss()`` runs (forward hooks on head modules,
so the task loss is computed once and unchanged), how to run the teacher
on the same inputs (and on the student's RoIs / matched queries), how
to turn both into soft-logit KD losses, and (label-free mode,
``distill.hard='teacher'``) how to turn the teacher's predictions into the
ground truth of the student's task loss.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from gpusq_mm.distillation import FeatureRecorder

__all__ = ['TaskAdapter']


class TaskAdapter:
    """Base class of the task adapters.

    Args:
        student (nn.Module): the upstream student model.
        teacher (nn.Module): the upstream teacher model.
        parts (dict, optional): weight of each logit-KD part, by part
            name (see ``PARTS`` of each adapter). Defaults to None.
    """

    #: human-readable names of the supported model types
    SUPPORTED: str = ''
    #: logit-KD parts and their default weights (log keys loss_kd_<part>)
    PARTS: Dict[str, float] = {}
    #: whether label-free mode (teacher predictions as targets) is
    #: implemented for this family
    LABEL_FREE: bool = False
    #: whether the detector score threshold of label-free mode applies
    USES_SCORE_THR: bool = False

    def __init__(
        self, student: nn.Module, teacher: nn.Module, parts: dict = None
    ) -> None:
        self.parts = dict(self.PARTS)
        #: the parts the user set explicitly (checked against the model)
        self.user_parts = dict(parts or {})
        for key, value in (parts or {}).items():
            if key not in self.PARTS:
                raise KeyError(
                    f'unknown logit-KD part {key!r} for '
                    f'{type(self).__name__}; known: {list(self.PARTS)}'
                )
            self.parts[key] = float(value)
        self.check_teacher(student, teacher)
        self.recorder = FeatureRecorder(student, self.student_modules(student))

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        """Whether this adapter handles ``model``."""
        raise NotImplementedError

    def check_teacher(self, student: nn.Module, teacher: nn.Module) -> None:
        """Fail at build time when the teacher cannot teach this student."""
        if not self.accepts(teacher):
            raise TypeError(
                f'teacher {type(teacher).__name__} is not a '
                f'{self.SUPPORTED} like the student {type(student).__name__}'
            )

    def student_modules(self, student: nn.Module) -> List[str]:
        """Student modules whose outputs (or inputs) carry logits / RoIs."""
        raise NotImplementedError

    @staticmethod
    def default_feature_modules(model: nn.Module) -> List[str]:
        """Feature-KD modules used when the config names none."""
        names = dict(model.named_children())
        return [n for n in ('backbone', 'neck') if n in names]

    def teacher_forward(
        self, teacher: nn.Module, inputs: torch.Tensor, data_samples: Sequence
    ) -> dict:
        """Run the teacher (no grad) on its inputs; return what
        :meth:`logit_losses` needs."""
        raise NotImplementedError

    def logit_losses(
        self, teacher_out: dict, data_samples: Sequence, temperature: float
    ) -> Dict[str, torch.Tensor]:
        """Unweighted soft-logit losses by part name."""
        raise NotImplementedError

    def check_label_free(self, score_thr: Optional[float]) -> None:
        """Fail at build time when label-free mode cannot be honoured.

        Args:
            score_thr (float, optional): ``distill.teacher_score_thr``.

        Raises:
            ValueError: the family has no label-free mode, or a score
                threshold is given to a family that has no scores.
        """
        if not self.LABEL_FREE:
            raise ValueError(
                "distill.hard='teacher' (label-free mode) is not "
                f'implemented for {self.SUPPORTED}'
            )
        if score_thr is not None and not self.USES_SCORE_THR:
            raise ValueError(
                'distill.teacher_score_thr applies to detectors only; '
                f"{self.SUPPORTED} takes the teacher's argmax"
            )

    def teacher_targets(
        self,
        teacher: nn.Module,
        inputs: torch.Tensor,
        data_samples: Sequence,
        score_thr: Optional[float] = None,
    ) -> Tuple[Optional[dict], List]:
        """The data samples with the teacher's predictions as ground truth.

        Args:
            teacher (nn.Module): the active teacher (eval mode).
            inputs (Tensor): the teacher's preprocessed batch.
            data_samples (Sequence): the batch's data samples (not
                modified; copies are returned).
            score_thr (float, optional): detectors' score threshold.

        Returns:
            tuple[dict | None, list]: :meth:`teacher_forward`'s output when
            it was computed on the way (reused for the KD losses), and the
            relabelled data samples.
        """
        raise NotImplementedError
