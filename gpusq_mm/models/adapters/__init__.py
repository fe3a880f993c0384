"""Task adapters: how GPUSQ distils each OpenMMLab model family."""

import torch.nn as nn

from .base import TaskAdapter
from .classifier import ClassifierAdapter
from .detr import DETRAdapter
from .segmentor import SegmentorAdapter
from .two_stage import TwoStageAdapter

__all__ = [
    'ADAPTERS',
    'ClassifierAdapter',
    'DETRAdapter',
    'SegmentorAdapter',
    'TaskAdapter',
    'TwoStageAdapter',
    'adapter_class_for',
]

#: every adapter, tried in order
ADAPTERS = (ClassifierAdapter, SegmentorAdapter, TwoStageAdapter, DETRAdapter)


def adapter_class_for(model: nn.Module) -> type:
    """The adapter class of ``model``; a clear error if none fits.

    Raises:
        TypeError: naming the model type and the supported ones.
    """
    for cls in ADAPTERS:
        if cls.accepts(model):
            return cls
    supported = '; '.join(cls.SUPPORTED for cls in ADAPTERS)
    raise TypeError(
        f'GPUSQ distillation does not support {type(model).__name__} '
        f'({type(model).__module__}); supported: {supported}'
    )
