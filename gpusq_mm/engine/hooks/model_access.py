"""Find the algorithm, its student and averaged (EMA) copies in a Runner.

The one home of these look-ups for every gpusq_mm hook: a GPUSQ algorithm
(a model with an ``architecture`` attribute) is compressed in its student
``architecture``, never in its teacher; a DDP wrapper is unwrapped.
"""

from typing import Iterator

import torch.nn as nn
from mmengine.model import is_model_wrapper

__all__ = ['ema_models', 'get_student', 'unwrap']


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / FSDP wrapper (the model itself if none)."""
    return model.module if is_model_wrapper(model) else model


def get_student(model: nn.Module) -> nn.Module:
    """The module to compress: unwrapped, ``architecture`` of an algorithm."""
    model = unwrap(model)
    return getattr(model, 'architecture', model)


def ema_models(runner) -> Iterator[nn.Module]:
    """The averaged copies of the model held by hooks (EMAHook)."""
    for hook in getattr(runner, 'hooks', []):
        module = getattr(getattr(hook, 'ema_model', None), 'module', None)
        if isinstance(module, nn.Module):
            yield module
