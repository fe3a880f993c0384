"""Optional fake quantization of the attention matmul inputs.

The Linear layers of a transformer are quantized by
:func:`~gpusq_mm.quantization.quantize_model`; the two matmuls inside the
attention (``q @ k^T`` and ``attn @ v``) have no module of their own. In
the window attention of Swin (``WindowMSA`` of mmdet, mmseg and mmpretrain)
their operands are nevertheless module outputs:

- ``q``, ``k`` and ``v`` are the three thirds of the ``qkv`` Linear's
  output (the last dimension is laid out ``(3, heads, head_dim)``);
- ``attn`` is the output of the ``softmax`` module (``nn.Softmax``).

So, instead of re-implementing each upstream forward, a forward hook on
those two modules fake-quantizes their outputs: one per-tensor quantizer
each for q, k and v (``_q_quantizer`` / ``_k_quantizer`` / ``_v_quantizer``
on the ``qkv`` layer) and one for the attention probabilities
(``_output_quantizer`` on the softmax). That is where TensorRT wants Q/DQ
nodes for INT8 attention. ``q`` is quantized before Swin multiplies it by
its scalar ``scale``, which only rescales its quantization step. The
quantizers are buffers-only modules like the layers' own: calibrated with
the other activation quantizers, saved in the state dict, off until the
QAT stage starts.

An attention module is any module with a ``qkv`` ``nn.Linear`` child and a
``softmax`` ``nn.Softmax`` child. Attention that calls a fused kernel
(``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``) has no such
module boundary and is left in floating point.
"""

from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn

from .config import QuantConfig
from .select import activation_quantizer, select_modules

__all__ = [
    'ATTENTION_QUANTIZERS',
    'quantize_attention',
    'select_attention',
]

#: Quantizer attribute names: on the ``qkv`` layer and on the softmax.
ATTENTION_QUANTIZERS = dict(
    qkv=('_q_quantizer', '_k_quantizer', '_v_quantizer'),
    softmax=('_output_quantizer',),
)


def _qkv_output_hook(module: nn.Module, args, output: torch.Tensor):
    """Fake-quantize q, k and v (the thirds of the last dim) separately."""
    quantizers = [module._modules[n] for n in ATTENTION_QUANTIZERS['qkv']]
    if all(q._disabled and not q._if_calib for q in quantizers):
        return None  # stage 1: leave the output as is, no split / copy
    parts = output.chunk(3, dim=-1)
    return torch.cat([q(p) for q, p in zip(quantizers, parts)], dim=-1)


def _softmax_output_hook(module: nn.Module, args, output: torch.Tensor):
    """Fake-quantize the attention probabilities (identity when off)."""
    return module._modules['_output_quantizer'](output)


def _is_attention(module: nn.Module) -> bool:
    qkv = module._modules.get('qkv')
    softmax = module._modules.get('softmax')
    return isinstance(qkv, nn.Linear) and isinstance(softmax, nn.Softmax)


def select_attention(
    model: nn.Module, cfg: Optional[Union[QuantConfig, dict]] = None
) -> List[str]:
    """Names of the attention modules :func:`quantize_attention` handles.

    The selection keys of the config (``include`` / ``exclude`` /
    ``exclude_types`` / ``filter_fn``) apply to the attention module's
    name and type (``'^teacher'`` is skipped by
    default, like for the layers).

    Args:
        model (nn.Module): the student.
        cfg (QuantConfig | dict, optional): settings. Defaults to None.

    Returns:
        list[str]: module names, in ``named_modules`` order.
    """
    return select_modules(model, QuantConfig.build(cfg), _is_attention)


def _add_quantizers(module, names, cfg, device) -> None:
    for name in names:
        module.add_module(name, activation_quantizer(cfg, device))


def quantize_attention(
    model: nn.Module,
    cfg: Optional[Union[QuantConfig, dict]] = None,
    names: Optional[List[str]] = None,
) -> Dict[str, nn.Module]:
    """Attach disabled quantizers to the attention matmul operands.

    Idempotent: modules already handled are left alone. Call it when the
    model is built, before checkpoints load (the quantizers' buffers must
    exist to be loaded).

    Args:
        model (nn.Module): the student.
        cfg (QuantConfig | dict, optional): settings (``a_bits``,
            ``narrow_range``, ``fast_fake_quant``, selection keys).
            Defaults to None.
        names (list[str], optional): explicit attention module names;
            default: :func:`select_attention`. Defaults to None.

    Returns:
        dict: the handled attention modules, by name.
    """
    cfg = QuantConfig.build(cfg)
    modules = dict(model.named_modules())
    if names is None:
        names = select_attention(model, cfg)
    done = {}
    for name in names:
        attn = modules[name]
        if not _is_attention(attn):
            raise TypeError(
                f'{name!r} ({type(attn).__name__}) has no qkv Linear and '
                'softmax children: not an attention module we can quantize'
            )
        qkv, softmax = attn.qkv, attn.softmax
        device = qkv.weight.device
        if '_q_quantizer' not in qkv._modules:
            _add_quantizers(qkv, ATTENTION_QUANTIZERS['qkv'], cfg, device)
            # a module-level function: deep copies (the QAT teacher
            # snapshot) call their own quantizers, not these
            qkv.register_forward_hook(_qkv_output_hook)
        if '_output_quantizer' not in softmax._modules:
            names_ = ATTENTION_QUANTIZERS['softmax']
            _add_quantizers(softmax, names_, cfg, device)
            softmax.register_forward_hook(_softmax_output_hook)
        done[name] = attn
    return done
