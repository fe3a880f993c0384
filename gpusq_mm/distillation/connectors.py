"""Connectors that map a student feature to the teacher's shape.

When teacher and student differ in width (e.g. a Swin-B teacher for a
Swin-T student), a declared connector (1x1 convolution for ``NCHW`` maps,
linear layer on the last axis for token sequences ``(N, L, C)`` or vectors
``(N, C)``) maps the student's channels to the teacher's. Connectors belong
to the distillation setup, train with the student, and are not part of the
student-only checkpoint.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['FeatureConnector', 'align_spatial']


class FeatureConnector(nn.Module):
    """A 1x1 conv (``'conv'``) or linear (``'linear'``) channel bridge.

    Args:
        in_channels (int): student channels.
        out_channels (int): teacher channels.
        kind (str): ``'conv'`` for ``NCHW`` maps or ``'linear'`` for
            channels-last tensors. Defaults to ``'conv'``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kind: str = 'conv'
    ) -> None:
        super().__init__()
        assert kind in ('conv', 'linear'), (
            f"connector kind must be 'conv' or 'linear', got {kind!r}"
        )
        self.kind = kind
        if kind == 'conv':
            self.proj = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def align_spatial(student: torch.Tensor, teacher: torch.Tensor):
    """Resize a student ``NCHW`` map to the teacher's height and width."""
    if (
        student.dim() == 4
        and teacher.dim() == 4
        and student.shape[-2:] != teacher.shape[-2:]
    ):
        student = F.interpolate(
            student,
            size=teacher.shape[-2:],
            mode='bilinear',
            align_corners=False,
        )
    return student
