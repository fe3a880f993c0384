"""Which layers a 2:4 model prunes, and why the others are skipped.

Candidates are ``nn.Linear`` and 2-d convolutions (``nn.Conv2d`` and every
subclass, as mmcv builds them, plus non-transposed ``_ConvNd`` layers with
4-d weights such as pytorch-quantization's ``QuantConv2d``).

Alignment rule (defaults ``in_align=16``, ``out_align=8``): a layer is
pruned only if the grouped (input-channel) size is a multiple of 16 and the
output size a multiple of 8. This is the shape check of NVIDIA ASP
(``apex.contrib.sparsity.ASP.init_model_for_pruning`` skips layers whose
weight has ``size(0) % 8`` or ``size(1) % 16``), i.e. what the FP16 sparse
Tensor Core kernels of cuSPARSELt / TensorRT accept without padding (the
sparse operand's dimensions must be multiples of 16 for 16-bit types). For
INT8 sparse kernels cuSPARSELt asks for multiples of 32: pass
``in_align=32, out_align=32`` to match an INT8 TensorRT deployment exactly.
TensorRT silently runs a non-conforming layer dense, so pruning it would
cost accuracy for no speed-up.

Skipped by default, as GPUSQ-ViT and ASP practice suggest: the final
prediction layers of task heads (class / box / mask / segmentation logits:
mmdet ``rpn_cls``, ``rpn_reg``, ``fc_cls``, ``fc_reg``, ``conv_logits``,
``conv_cls``, ``conv_reg``; DETR-family ``cls_branches.<i>`` and the last
layer of each ``reg_branches.<i>``; mmseg ``conv_seg``; mmpretrain
``head.fc`` and ``head.layers.head``; the list lives in
:mod:`gpusq_mm.selection`, shared with quantization), depth-wise and
grouped convolutions (no sparse GEMM), and everything under ``teacher``.
"""

import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple, Type, Union

import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

from gpusq_mm.selection import (
    PREDICTION_LAYERS,
    TEACHER,
    default_excluded,
    type_matches,
)

__all__ = [
    'DEFAULT_EXCLUDE',
    'LayerDecision',
    'SparsityConfig',
    'format_selection',
    'layer_kind',
    'select_layers',
]

#: Module-name regexes skipped by default (final prediction layers and the
#: teacher; the last layer of DETR-family ``reg_branches`` MLPs too, see
#: :func:`gpusq_mm.selection.default_excluded`).
DEFAULT_EXCLUDE: Tuple[str, ...] = PREDICTION_LAYERS + (TEACHER,)

TypeSpec = Union[Type[nn.Module], str]


@dataclass
class SparsityConfig:
    """Settings of the 2:4 layer selection.

    Args:
        include (Sequence[str]): regexes (``re.search``) on module names;
            when non-empty, only matching layers are candidates. Defaults to
            ``()`` (all).
        exclude (Sequence[str]): regexes on module names to skip, added to
            :data:`DEFAULT_EXCLUDE` unless ``use_default_exclude`` is False.
            Defaults to ``()``.
        include_types (Sequence): extra module types (classes or class
            names) to treat as candidates (their weight must have the
            input-channel axis at dim 1). Defaults to ``()``.
        exclude_types (Sequence): module types (classes or class names) to
            skip. Defaults to ``()``.
        use_default_exclude (bool): skip head prediction layers and the
            teacher. Defaults to True.
        in_align (int): the grouped size must be a multiple of this.
            Defaults to 16.
        out_align (int): the output size must be a multiple of this.
            Defaults to 8.
        pattern (str): the sparsity pattern; only ``'2:4'``. Defaults to
            ``'2:4'``.
        filter_fn (Callable, optional): ``filter_fn(module, name)``;
            returning False skips the layer. Defaults to None.
    """

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    include_types: Sequence[TypeSpec] = ()
    exclude_types: Sequence[TypeSpec] = ()
    use_default_exclude: bool = True
    in_align: int = 16
    out_align: int = 8
    pattern: str = '2:4'
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None

    def __post_init__(self) -> None:
        assert self.pattern == '2:4', (
            f"only the '2:4' pattern is supported, got {self.pattern!r}"
        )
        for name in ('include', 'exclude', 'include_types', 'exclude_types'):
            value = getattr(self, name)
            if isinstance(value, (str, type)):
                value = (value,)
            setattr(self, name, tuple(value))
        assert self.in_align > 0 and self.in_align % 4 == 0, (
            f'in_align must be a positive multiple of 4, got {self.in_align}'
        )
        assert self.out_align > 0, (
            f'out_align must be positive, got {self.out_align}'
        )
        for pattern in self.include + self.exclude:
            re.compile(pattern)  # fail early on a typo
        assert self.filter_fn is None or callable(self.filter_fn), (
            f'filter_fn must be callable(module, name), got {self.filter_fn!r}'
        )


@dataclass
class LayerDecision:
    """Whether one layer is pruned, and why.

    Args:
        name (str): module name.
        type_name (str): module class name.
        shape (tuple): weight shape.
        numel (int): number of weights.
        eligible (bool): the layer gets a 2:4 mask.
        reason (str): why (``'eligible'`` or the reason for skipping).
    """

    name: str
    type_name: str
    shape: Tuple[int, ...]
    numel: int
    eligible: bool
    reason: str = 'eligible'
    extra: dict = field(default_factory=dict)


def layer_kind(module: nn.Module) -> Optional[str]:
    """``'linear'``, ``'conv2d'`` or ``None`` for a module.

    Args:
        module (nn.Module): any module.

    Returns:
        str, optional: the candidate kind; ``None`` if the module is not a
        Linear or a non-transposed 2-d convolution with a weight.
    """
    weight = getattr(module, 'weight', None)
    if not isinstance(weight, nn.Parameter):
        return None
    if isinstance(module, nn.Linear) and weight.dim() == 2:
        return 'linear'
    if (
        isinstance(module, (nn.Conv2d, _ConvNd))
        and not getattr(module, 'transposed', False)
        and weight.dim() == 4
    ):
        return 'conv2d'
    return None


def _decide(
    name: str, module: nn.Module, cfg: SparsityConfig, defaults: dict
) -> Optional[LayerDecision]:
    kind = layer_kind(module)
    extra_type = (
        kind is None
        and isinstance(getattr(module, 'weight', None), nn.Parameter)
        and type_matches(module, cfg.include_types)
    )
    if kind is None and not extra_type:
        return None
    weight = module.weight
    shape = tuple(weight.shape)
    decision = LayerDecision(
        name, type(module).__name__, shape, weight.numel(), False
    )
    if extra_type and weight.dim() < 2:
        decision.reason = 'weight has no input-channel axis'
    elif type_matches(module, cfg.exclude_types):
        decision.reason = 'excluded by type'
    elif cfg.include and not any(re.search(p, name) for p in cfg.include):
        decision.reason = 'not matched by include'
    elif any(re.search(p, name) for p in cfg.exclude):
        pattern = next(p for p in cfg.exclude if re.search(p, name))
        decision.reason = f'excluded by name ({pattern})'
    elif name in defaults:
        decision.reason = defaults[name]
    elif cfg.filter_fn is not None and not cfg.filter_fn(module, name):
        decision.reason = 'excluded by filter_fn'
    elif getattr(module, 'groups', 1) != 1:
        groups = module.groups
        depthwise = groups == getattr(module, 'in_channels', -1)
        decision.reason = (
            'depth-wise conv' if depthwise else f'grouped conv ({groups})'
        )
    elif shape[1] % cfg.in_align:
        decision.reason = (
            f'input channels {shape[1]} not a multiple of {cfg.in_align}'
        )
    elif shape[0] % cfg.out_align:
        decision.reason = (
            f'output channels {shape[0]} not a multiple of {cfg.out_align}'
        )
    elif not weight.is_floating_point():
        decision.reason = f'weight dtype {weight.dtype} is not floating'
    else:
        decision.eligible = True
    return decision


def select_layers(
    model: nn.Module, cfg: Optional[Union[SparsityConfig, dict]] = None
) -> List[LayerDecision]:
    """Decide, for every candidate layer of ``model``, whether it is pruned.

    Args:
        model (nn.Module): the model (the student; pass
            ``model.architecture`` for a GPUSQ algorithm).
        cfg (SparsityConfig | dict, optional): selection settings. Defaults
            to None (the defaults of :class:`SparsityConfig`).

    Returns:
        list[LayerDecision]: one entry per Linear / Conv2d layer (and extra
        included types), in module order; shared modules appear once.
    """
    if cfg is None:
        cfg = SparsityConfig()
    elif isinstance(cfg, dict):
        cfg = SparsityConfig(**cfg)
    defaults = default_excluded(model) if cfg.use_default_exclude else {}
    decisions = []
    for name, module in model.named_modules():
        decision = _decide(name, module, cfg, defaults)
        if decision is not None:
            decisions.append(decision)
    return decisions


def format_selection(
    decisions: Sequence[LayerDecision], model: Optional[nn.Module] = None
) -> str:
    """A dry-run report: what is pruned, why the rest is skipped, coverage.

    Args:
        decisions (Sequence[LayerDecision]): from :func:`select_layers`.
        model (nn.Module, optional): if given, the share of all of the
            model's parameters covered is reported too. Defaults to None.

    Returns:
        str: a multi-line table and totals.
    """
    width = max([len(d.name) for d in decisions] + [5])
    lines = [f'{"layer":<{width}}  {"shape":<20} {"2:4":<4} reason']
    for d in decisions:
        flag = 'yes' if d.eligible else 'no'
        shape = 'x'.join(str(s) for s in d.shape)
        lines.append(f'{d.name:<{width}}  {shape:<20} {flag:<4} {d.reason}')
    pruned = sum(d.numel for d in decisions if d.eligible)
    total = sum(d.numel for d in decisions)
    count = sum(d.eligible for d in decisions)
    share = pruned / total if total else 0.0
    lines.append(
        f'2:4 layers: {count} / {len(decisions)}; weights covered: '
        f'{pruned} / {total} ({share:.2%}) of Linear/Conv weights'
    )
    if model is not None:
        params = sum(p.numel() for p in model.parameters())
        if params:
            lines.append(
                f'share of all {params} parameters covered: '
                f'{pruned / params:.2%}'
            )
    return '\n'.join(lines)
