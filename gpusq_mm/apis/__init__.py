"""Public API: turn any OpenMMLab config into a GPUSQ one."""

from .wrap_config import (
    DEFAULT_QAT_RATIO,
    is_gpusq_config,
    load_config,
    strip_teacher,
    wrap_config,
)

__all__ = [
    'DEFAULT_QAT_RATIO',
    'is_gpusq_config',
    'load_config',
    'strip_teacher',
    'wrap_config',
]
