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

__all__ = ['apply_compression', 'disable_quantizers', 'student_checkpoint']

#: sparsity keys that configure the SparsityHook, not the layer selection
_HOOK_KEYS = ('pattern', 'permute', 'mask_grad', 'names')


def _attach_sparsity(student: nn.Module, sparsity: dict) -> List[str]:
    from gpusq_mm.sparsity import SparsityConfig, attach_masks

    sparsity = dict(sparsity)
    pattern = sparsity.get('pattern', '2:4')
    if pattern != '2:4':
        raise ValueError(f"sparsity.pattern must be '2:4', got {pattern!r}")
    fields = {f.name for f in dataclasses.fields(SparsityConfig)}
    unknown = set(sparsity) - fields - set(_HOOK_KEYS)
    if unknown:
        raise KeyError(
            f'unknown sparsity keys {sorted(unknown)}; known: '
            f'{sorted(fields | set(_HOOK_KEYS))}'
        )
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
        sparsity (dict, optional): layer selection; None: dense.
        quantization (dict, optional): quantization settings; None: FP.

    Returns:
        tuple[list, list]: names of the masked and the quantized layers.
    """
    sparse, quant = [], []
    if sparsity is not None:
        sparse = _attach_sparsity(student, sparsity)
    if quantization is not None:
        from gpusq_mm.quantization import quantize_model

        quant = quantize_model(student, dict(quantization))
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
