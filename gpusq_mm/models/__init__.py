"""The GPUSQ algorithm and its task adapters (registered on import)."""

from .adapters import (
    ADAPTERS,
    ClassifierAdapter,
    DETRAdapter,
    SegmentorAdapter,
    TaskAdapter,
    TwoStageAdapter,
    adapter_class_for,
)
from .feature_kd import FeatureDistiller
from .gpusq import GPUSQ
from .teacher import InputAdapter, build_teacher, load_teacher_config

__all__ = [
    'ADAPTERS',
    'ClassifierAdapter',
    'DETRAdapter',
    'FeatureDistiller',
    'GPUSQ',
    'InputAdapter',
    'SegmentorAdapter',
    'TaskAdapter',
    'TwoStageAdapter',
    'adapter_class_for',
    'build_teacher',
    'load_teacher_config',
]
