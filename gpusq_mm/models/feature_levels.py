"""Which outputs of a multi-output feature module feature KD compares.

GPUSQ-ViT (Yu et al., CVPR 2023, arXiv 2305.10727) puts the emphasis of
feature distillation on the **later-stage** feature maps. A backbone
returns one map per stage in ``out_indices`` and an FPN-like neck one per
level, so distilling "``backbone``, ``neck``" compares every stage,
stride-4 maps included; with raw MSE and the inverse QAT factors, the
shallow maps (small losses) can then take most of the stage-2 weight.

``levels='later'`` (the default) keeps, of a backbone's outputs, those of
its last :data:`LATER_STAGES` stages (strides 16 and 32 for the usual
4-stage Swin / ResNet), and of a neck's outputs the levels built from those
stages plus any extra, coarser levels (FPN's ``P6``, ChannelMapper's extra
convs). Outputs that are single tensors (a DETR encoder's memory, a
classifier's pooled feature) are always kept. ``levels='all'`` keeps every
output; a dict ``{module: [output indices]}`` chooses by hand (modules not
named keep every output).
"""

from typing import Dict, List, Optional, Sequence, Union

import torch.nn as nn

__all__ = ['LATER_STAGES', 'LEVEL_MODES', 'resolve_levels']

#: number of final backbone stages distilled by ``levels='later'``
LATER_STAGES = 2
LEVEL_MODES = ('later', 'all')


def _num_stages(backbone: nn.Module) -> Optional[int]:
    stages = getattr(backbone, 'stages', None)
    if isinstance(stages, (nn.ModuleList, nn.Sequential)):
        return len(stages)
    for attr in ('num_stages', 'num_layers'):
        value = getattr(backbone, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    res_layers = getattr(backbone, 'res_layers', None)
    if isinstance(res_layers, (list, tuple)) and res_layers:
        return len(res_layers)
    return None


def backbone_output_stages(backbone: nn.Module) -> Optional[List[int]]:
    """Stage index of each output of ``backbone`` (None: unknown).

    Swin / ResNet-style backbones return the stages in ``out_indices`` in
    stage order.
    """
    out = getattr(backbone, 'out_indices', None)
    n = _num_stages(backbone)
    if out is None or n is None:
        return None
    if isinstance(out, int):
        out = [out]
    return sorted(i % n for i in out)


def neck_output_inputs(
    neck: nn.Module, num_inputs: int
) -> Optional[List[Optional[int]]]:
    """Neck input each neck output is built from (None: extra level).

    FPN: output ``j`` comes from input ``start_level + j`` up to
    ``backbone_end_level``; further outputs are extra, coarser levels.
    ChannelMapper / pooling necks map output ``j`` to input ``j``.
    """
    in_channels = getattr(neck, 'in_channels', None)
    if isinstance(in_channels, (list, tuple)):
        num_inputs = len(in_channels)
    start = int(getattr(neck, 'start_level', 0))
    end = getattr(neck, 'backbone_end_level', None)
    end = num_inputs if end is None else int(end)
    num_outs = getattr(neck, 'num_outs', None)
    if num_outs is None:  # ChannelMapper: one output per input + extras
        num_outs = end - start + len(getattr(neck, 'extra_convs', None) or [])
    n_out = int(num_outs)
    return [start + j if start + j < end else None for j in range(n_out)]


def later_outputs(model: nn.Module, name: str) -> Optional[List[int]]:
    """Output indices of module ``name`` kept by ``levels='later'``.

    None when the module is not a known pyramid (every output kept).
    """
    modules = dict(model.named_modules())
    backbone = getattr(model, 'backbone', None)
    stages = backbone_output_stages(backbone) if backbone is not None else None
    if stages is None:
        return None
    n_stages = _num_stages(backbone)
    first = n_stages - LATER_STAGES
    if modules.get(name) is backbone:
        return [k for k, s in enumerate(stages) if s >= first]
    neck = getattr(model, 'neck', None)
    if neck is not None and modules.get(name) is neck:
        if isinstance(neck, (nn.ModuleList, nn.Sequential)):
            return None  # stacked necks: levels not traceable
        inputs = neck_output_inputs(neck, len(stages))
        if inputs is None:
            return None
        keep = []
        for j, i in enumerate(inputs):
            if i is None or (i < len(stages) and stages[i] >= first):
                keep.append(j)
        return keep
    return None


def resolve_levels(
    model: nn.Module,
    modules: Sequence[str],
    levels: Union[str, Dict[str, Sequence[int]]],
) -> Dict[str, List[int]]:
    """The kept output indices of each module (absent: keep all).

    Args:
        model (nn.Module): the student.
        modules (Sequence[str]): the distilled module names.
        levels (str | dict): ``'later'``, ``'all'`` or
            ``{module: [output indices]}``.

    Returns:
        dict[str, list[int]]: module name -> kept output indices.

    Raises:
        KeyError: a dict names a module that is not distilled.
        ValueError: an unknown mode or a non-integer index.
    """
    if isinstance(levels, str):
        if levels not in LEVEL_MODES:
            raise ValueError(
                f'distill.features.levels must be one of {LEVEL_MODES} or '
                f'a dict {{module: [output indices]}}, got {levels!r}'
            )
        if levels == 'all':
            return {}
        out = {}
        for name in modules:
            keep = later_outputs(model, name)
            if keep is not None:
                out[name] = keep
        return out
    if not isinstance(levels, dict):
        raise ValueError(
            'distill.features.levels must be a str or a dict, got '
            f'{type(levels).__name__}'
        )
    out = {}
    for name, idx in levels.items():
        if name not in modules:
            raise KeyError(
                f'distill.features.levels names {name!r}, which is not a '
                f'distilled module; features.modules = {list(modules)}'
            )
        if not all(isinstance(i, int) for i in idx):
            raise ValueError(
                f'distill.features.levels[{name!r}] must list integer '
                f'output indices, got {idx!r}'
            )
        out[name] = sorted(set(idx))
    return out
