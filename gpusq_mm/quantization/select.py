"""Which modules the quantization transforms pick, and activation quantizers.

Shared by the layer swap (:mod:`.modules`) and the attention quantizers
(:mod:`.attention`): the selection vocabulary of :mod:`gpusq_mm.selection`
(``include`` / ``exclude`` / ``exclude_types`` / ``filter_fn`` and the
default exclusions) applied to a candidate predicate.
"""

import re
from typing import Callable, List, Optional

import torch
import torch.nn as nn

from gpusq_mm.selection import default_excluded, type_matches

from .config import PATCH_EMBED, QuantConfig
from .quantizer import GPUSQTensorQuantizer

__all__ = ['activation_quantizer', 'select_modules']


def select_modules(
    model: nn.Module,
    cfg: QuantConfig,
    predicate: Callable[[nn.Module], bool],
) -> List[str]:
    """Names of the modules passing ``predicate`` and the config's filters.

    The filters (:mod:`gpusq_mm.selection`): ``include`` (when non-empty,
    names must match one), ``exclude`` regexes, ``exclude_types``, the
    default exclusions (patch embedding, final prediction layers, teacher)
    and ``filter_fn(module, name)``.
    """
    exclude = [re.compile(p) for p in cfg.exclude]
    include = [re.compile(p) for p in cfg.include]
    defaults = (
        default_excluded(model, PATCH_EMBED) if cfg.use_default_exclude else {}
    )
    names = []
    for name, module in model.named_modules():
        if not name or not predicate(module):
            continue
        if include and not any(p.search(name) for p in include):
            continue
        if name in defaults or any(p.search(name) for p in exclude):
            continue
        if type_matches(module, cfg.exclude_types):
            continue
        if cfg.filter_fn is not None and not cfg.filter_fn(module, name):
            continue
        names.append(name)
    return names


def activation_quantizer(
    cfg: QuantConfig, device: Optional[torch.device] = None
) -> GPUSQTensorQuantizer:
    """A disabled per-tensor quantizer for activations (``cfg.a_bits``)."""
    return GPUSQTensorQuantizer(
        cfg.a_bits,
        narrow_range=cfg.narrow_range,
        fast=cfg.fast_fake_quant,
        device=device,
    )
