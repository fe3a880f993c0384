"""Compress the student at construction; write student-only checkpoints.

Sparsity and quantization are applied when the algorithm is built (the
Runner builds the optimizer before any hook runs, and checkpoints of any
stage must load into a freshly built model): 2:4 mask placeholders through
:func:`gpusq_mm.sparsity.attach_masks`, the fake-quant module swap through
:func:`gpusq_mm.quantization.quantize_model` (quantizers off until QAT).
Both are imported only when configured.
"""

import dataclasses
from typing import List, Optional, Tuple

import torch.nn as nn

from gpusq_mm.utils.checkpoint import atomic_torch_save

__all__ = [
    'SPARSITY_OPTIONS',
    'SPARSITY_PRESETS',
    'apply_compression',
    'disable_quantizers',
    'drop_pretrained',
    'resolve_quantization',
    'resolve_sparsity',
    'sparsity_options',
    'student_checkpoint',
]

#: Named sparsity recipes: the values are those of ``SparsityConfig``'s
#: defaults (the one place they live); a preset only names them.
SPARSITY_PRESETS = {'2:4': {}}
#: Keys of ``GPUSQ.sparsity`` that the GPUSQHook reads from the model
#: (how the masks are computed / kept), with their defaults.
SPARSITY_OPTIONS = dict(
    permute=False, permute_pairs=None, permute_search=None, mask_grad=False
)


def _preset(value, presets: dict, what: str) -> Optional[dict]:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in presets:
            raise ValueError(
                f'unknown {what} preset {value!r}; accepted: '
                f'{sorted(presets)} or a dict of settings, or None (off)'
            )
        return dict(presets[value])
    if isinstance(value, dict):
        return dict(value)
    raise TypeError(
        f'{what} must be a preset name {sorted(presets)}, a dict or None, '
        f'got {value!r}'
    )


def resolve_sparsity(sparsity) -> Optional[dict]:
    """``'2:4'`` / dict / None -> the sparsity settings (keys checked).

    Raises:
        KeyError: a key that is neither a ``SparsityConfig`` field, a
            hook option (:data:`SPARSITY_OPTIONS`) nor ``names``.
    """
    from gpusq_mm.sparsity import SparsityConfig

    out = _preset(sparsity, SPARSITY_PRESETS, 'sparsity')
    if out is None:
        return None
    fields = {f.name for f in dataclasses.fields(SparsityConfig)}
    known = fields | set(SPARSITY_OPTIONS) | {'names'}
    unknown = sorted(set(out) - known)
    if unknown:
        raise KeyError(
            f'unknown sparsity key(s) {unknown}; accepted: {sorted(known)}'
        )
    return out


def resolve_quantization(quantization) -> Optional[dict]:
    """``'int8'`` / ``'int4'`` / dict / None -> quantization settings
    (presets: :data:`gpusq_mm.quantization.PRESETS`)."""
    if quantization is None:
        return None
    from gpusq_mm.quantization import PRESETS

    return _preset(quantization, PRESETS, 'quantization')


def sparsity_options(sparsity: Optional[dict]) -> dict:
    """The hook options of resolved sparsity settings, defaults filled."""
    out = dict(SPARSITY_OPTIONS)
    for key in SPARSITY_OPTIONS:
        if sparsity and key in sparsity:
            out[key] = sparsity[key]
    assert isinstance(out['permute'], bool), (
        f'sparsity.permute must be a bool, got {out["permute"]!r}'
    )
    assert isinstance(out['mask_grad'], bool), (
        f'sparsity.mask_grad must be a bool, got {out["mask_grad"]!r}'
    )
    return out


def _attach_sparsity(student: nn.Module, sparsity: dict) -> List[str]:
    from gpusq_mm.sparsity import SparsityConfig, attach_masks

    fields = {f.name for f in dataclasses.fields(SparsityConfig)}
    cfg = SparsityConfig(**{k: v for k, v in sparsity.items() if k in fields})
    names = attach_masks(student, sparsity.get('names'), cfg)
    if not names:
        from gpusq_mm.sparsity import format_selection, select_layers

        raise ValueError(
            'model.sparsity selects no layer for 2:4, nothing to prune '
            f'({sparsity}); candidates are Linear / Conv2d layers with '
            'input % in_align == 0 and output % out_align == 0 that no '
            'exclude pattern matches. The selection:\n'
            + format_selection(select_layers(student, cfg), student)
        )
    return names


def apply_compression(
    student: nn.Module,
    sparsity: Optional[dict],
    quantization: Optional[dict],
) -> Tuple[List[str], List[str]]:
    """Attach 2:4 mask placeholders and swap in fake-quant modules.

    Args:
        student (nn.Module): the upstream model.
        sparsity (str | dict, optional): ``'2:4'`` or layer selection
            settings; None: dense.
        quantization (str | dict, optional): ``'int8'`` / ``'int4'`` or
            ``QuantConfig`` settings; None: floating point.

    Returns:
        tuple[list, list]: names of the masked and the quantized layers.
    """
    sparse, quant = [], []
    sparsity = resolve_sparsity(sparsity)
    quantization = resolve_quantization(quantization)
    if sparsity is not None:
        sparse = _attach_sparsity(student, sparsity)
    if quantization is not None:
        from gpusq_mm.quantization import quantize_model

        quant = quantize_model(student, quantization)
    return sparse, quant


def disable_quantizers(model: nn.Module) -> None:
    """Turn every fake quantizer of ``model`` off (an FP snapshot)."""
    try:
        from gpusq_mm.quantization import disable_fake_quant
    except ImportError:  # pytorch_quantization absent: nothing to disable
        return
    disable_fake_quant(model)


def student_checkpoint(
    student: nn.Module, filepath: str, meta: Optional[dict] = None
) -> None:
    """Save ``{'meta', 'state_dict'}`` of the student only, atomically.

    The keys are the upstream model's (plus mask / quantizer buffers), so
    the file loads into a plain gpusq config (upstream model + sparsity /
    quantization) or into ``GPUSQ`` for test and export.
    """
    from mmengine.runner.checkpoint import weights_to_cpu

    state = weights_to_cpu(student.state_dict())
    atomic_torch_save(
        {'meta': dict(meta or {}), 'state_dict': state}, filepath
    )


def _is_pretrained(init_cfg) -> bool:
    if isinstance(init_cfg, (list, tuple)):
        return any(_is_pretrained(c) for c in init_cfg)
    return isinstance(init_cfg, dict) and 'Pretrained' in str(
        init_cfg.get('type', '')
    )


def drop_pretrained(architecture: dict) -> None:
    """Skip the student's own pretrained init (the teacher's weights
    replace it): ``pretrained`` and Pretrained ``init_cfg`` of the model and
    its direct sub-configs (backbone, neck, heads)."""
    for node in [architecture] + [
        v for v in architecture.values() if isinstance(v, dict)
    ]:
        if node.get('pretrained') is not None:
            node['pretrained'] = None
        if _is_pretrained(node.get('init_cfg')):
            node['init_cfg'] = None
