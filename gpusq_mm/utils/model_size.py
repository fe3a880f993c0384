"""Deployment size of a (sparse, quantized) model, as GPU kernels store it.

Dense tensors take ``numel * bytes``. A 2:4 layer stores the 2 kept values
of every group of 4 plus 2 bits of index metadata per kept value (the
cuSPARSELt / sparse Tensor Core compressed format), i.e. per original
element ``0.5 * bytes + 0.125`` bytes. Quantized weights take 1 byte (INT8)
or half a byte (INT4) per value. With INT8 + 2:4 this gives the 6.4x size
reduction over FP32 reported by GPUSQ-ViT (``4 / (0.5 + 0.125)``).
"""

from typing import Dict

import torch
from torch import nn

METADATA_BYTES_PER_ELEMENT = 0.125  # 2 bits per kept value, 2 kept per 4


def _weight_bits(module: nn.Module) -> float:
    """Bits per stored weight value: the enabled weight quantizer's, or 32."""
    quantizer = getattr(module, '_weight_quantizer', None)
    if quantizer is not None and not getattr(quantizer, '_disabled', True):
        return float(getattr(quantizer, 'num_bits', 8))
    return 32.0


def deploy_size_bytes(model: nn.Module) -> Dict[str, float]:
    """Storage of ``model``'s parameters and buffers as deployed.

    A weight counts as 2:4 when it really is 2:4 along its input axis
    (checked on the values, not on a flag), so a report can never call a
    layer compressed that is not.

    Args:
        model (nn.Module): the student (unwrapped).

    Returns:
        dict: ``total``, ``sparse_weights`` (bytes of 2:4 weights),
        ``dense`` (bytes of everything else), and ``fp32_total`` (the same
        model stored dense in FP32) -- all in bytes.
    """
    from gpusq_mm.sparsity import is_2to4

    seen = set()
    total = sparse_bytes = fp32 = 0.0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            n = param.numel()
            fp32 += 4 * n
            bits = _weight_bits(module) if name == 'weight' else 32.0
            value_bytes = bits / 8
            if (
                name == 'weight'
                and param.dim() >= 2
                and param.shape[1] % 4 == 0
                and bool(torch.any(param == 0))
                and is_2to4(param.detach())
            ):
                size = n * (0.5 * value_bytes + METADATA_BYTES_PER_ELEMENT)
                sparse_bytes += size
            else:
                size = n * value_bytes
            total += size
    return dict(
        total=total,
        sparse_weights=sparse_bytes,
        dense=total - sparse_bytes,
        fp32_total=fp32,
    )


def deploy_size_mb(model: nn.Module) -> float:
    """:func:`deploy_size_bytes` ``total`` in MiB."""
    return deploy_size_bytes(model)['total'] / 2**20
