"""One layer-selection vocabulary for 2:4 sparsity and quantization.

Both transforms pick layers the same way (the verb + filter style of
torchao's ``sparsify_(model, config, filter_fn)``):

- ``include``: module-name regexes (``re.search``); when non-empty, only
  matching layers are candidates;
- ``exclude``: module-name regexes to skip, added to the defaults;
- ``exclude_types``: module classes or class names to skip;
- ``filter_fn(module, name) -> bool``: optional callable; False skips;
- ``use_default_exclude``: skip the final prediction layers of every
  supported task family (:func:`default_excluded`) and the teacher.

The final prediction layers (class / box / mask / segmentation logits) are
small and sensitive, and GPUSQ-ViT keeps them dense and in floating point.
The list covers mmdet two-stage / one-stage heads, the DETR family
(``fc_cls`` / ``fc_reg`` of DETR, ``cls_branches.<i>`` and the last layer
of each ``reg_branches.<i>`` MLP of Deformable DETR / DINO), mmseg's
``conv_seg`` and mmpretrain's classifier heads. Pure torch: no MMEngine.
"""

import re
from typing import Dict, Iterable, Optional, Tuple

import torch.nn as nn

__all__ = [
    'BRANCH_CONTAINERS',
    'PREDICTION_LAYERS',
    'TEACHER',
    'default_excluded',
    'type_matches',
]

#: Module-name regexes of final prediction layers (every family).
PREDICTION_LAYERS: Tuple[str, ...] = (
    r'(^|\.)(rpn_cls|rpn_reg|fc_cls|fc_reg|conv_logits)$',
    r'(^|\.)(conv_cls|conv_reg|conv_centerness|conv_seg)$',
    r'(^|\.)(retina_cls|retina_reg|atss_cls|atss_reg|atss_centerness)$',
    r'(^|\.)cls_branches\.\d+$',
    r'(^|\.)head\.fc$',
    r'(^|\.)head\.layers\.head$',
)
#: The teacher (never pruned nor quantized).
TEACHER = r'^teacher(\.|$)'
#: Per-decoder-layer prediction MLPs (DETR family): their LAST layer
#: with a weight is a prediction layer, the hidden ones are not.
BRANCH_CONTAINERS: Tuple[str, ...] = ('cls_branches', 'reg_branches')

_BRANCH = re.compile(r'(^|\.)(%s)\.\d+$' % '|'.join(BRANCH_CONTAINERS))


def type_matches(module: nn.Module, specs: Iterable) -> bool:
    """Whether ``module`` is an instance of one of ``specs``.

    Args:
        module (nn.Module): the module.
        specs (Iterable): classes or class names (any class in the MRO).
    """
    for spec in specs:
        if isinstance(spec, str):
            if any(c.__name__ == spec for c in type(module).__mro__):
                return True
        elif isinstance(module, spec):
            return True
    return False


def _last_weighted(name: str, module: nn.Module) -> Optional[str]:
    last = None
    for child_name, child in module.named_modules():
        if isinstance(getattr(child, 'weight', None), nn.Parameter):
            last = f'{name}.{child_name}' if child_name else name
    return last


def default_excluded(
    model: nn.Module, extra: Tuple[str, ...] = ()
) -> Dict[str, str]:
    """Names of the layers skipped by default, with the reason.

    Args:
        model (nn.Module): the model (the student).
        extra (tuple[str]): further default regexes of the caller (e.g.
            the patch embedding for quantization).

    Returns:
        dict[str, str]: module name -> reason.
    """
    patterns = [re.compile(p) for p in PREDICTION_LAYERS]
    others = [re.compile(p) for p in extra]
    teacher = re.compile(TEACHER)
    out = {}
    for name, module in model.named_modules():
        if not name:
            continue
        if teacher.search(name):
            out[name] = 'teacher (never compressed)'
        elif _BRANCH.search(name):
            last = _last_weighted(name, module)
            if last is not None:
                out[last] = 'final prediction layer (default exclude)'
        elif any(p.search(name) for p in patterns):
            out.setdefault(name, 'final prediction layer (default exclude)')
        elif any(p.search(name) for p in others):
            out.setdefault(name, 'default exclude')
    return out
