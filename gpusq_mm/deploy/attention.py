"""Export-time Q/DQ placement for the quantized Swin window attention.

With ``quantize_attention=True`` the student fake-quantizes ``q``, ``k``,
``v`` (forward hook on the ``qkv`` Linear: the three thirds of its output)
and the attention probabilities (hook on the ``softmax``). Traced as is,
the Q/DQ of ``q`` / ``k`` / ``v`` sit before the Concat / Reshape /
Transpose / Gather that split them, and ``q`` is multiplied by Swin's
``scale`` between its DequantizeLinear and the MatMul, so onnxruntime
cannot fuse ``q @ k^T`` or ``attn @ v`` into integer kernels: they run in
FP32 between Q/DQ pairs.

Per-tensor fake quantization is elementwise, so it commutes with the
split, reshape and transpose. The export copy of each Swin ``WindowMSA``
(mmpretrain, mmdet and mmseg share its forward) therefore gets a forward
that emits the same quantizers right at the matmul inputs:

- ``k`` is quantized after its transpose (bit-identical values);
- ``q * scale`` is quantized with step ``q_step * scale`` (Swin's scalar
  moves before QuantizeLinear; only float rounding of the step differs);
- ``attn`` keeps the softmax's own quantizer (already next to its
  MatMul), ``v`` is quantized after the split.

Attention modules of another shape keep the hooks (exported correctly,
the matmuls in FP32).
"""

import types
from typing import List

import torch
import torch.nn as nn

from gpusq_mm.quantization.attention import ATTENTION_QUANTIZERS

__all__ = ['place_attention_qdq']

_SWIN_ATTRS = (
    'qkv',
    'softmax',
    'proj',
    'scale',
    'num_heads',
    'window_size',
    'relative_position_bias_table',
    'relative_position_index',
)


def _fq(q, x: torch.Tensor, scale_mul: float = 1.0) -> torch.Tensor:
    """The export Q/DQ of quantizer ``q`` (set up by prepare) on ``x``."""
    return torch.fake_quantize_per_tensor_affine(
        x, q._export_scale * scale_mul, q._export_zp, *q._export_range
    )


def _swin_forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
    qq, kq, vq = (self.qkv._modules[n] for n in ATTENTION_QUANTIZERS['qkv'])
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
    qkv = qkv.permute(2, 0, 3, 1, 4)
    q = _fq(qq, qkv[0] * self.scale, self.scale)
    k_t = _fq(kq, qkv[1].transpose(-2, -1))
    v = _fq(vq, qkv[2])
    attn = q @ k_t
    wh, ww = self.window_size
    bias = self.relative_position_bias_table[
        self.relative_position_index.view(-1)
    ].view(wh * ww, wh * ww, -1)
    attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = attn.view(b // nw, nw, self.num_heads, n, n)
        attn = attn + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, self.num_heads, n, n)
    attn = self.attn_drop(self.softmax(attn))
    out = (attn @ v).transpose(1, 2).reshape(b, n, c)
    return self.proj_drop(self.proj(out))


def _is_swin_attention(module: nn.Module) -> bool:
    if not all(hasattr(module, a) for a in _SWIN_ATTRS):
        return False
    names = ATTENTION_QUANTIZERS['qkv']
    qkv = module.qkv
    return (
        all(
            n in qkv._modules and '_export_scale' in qkv._modules[n].__dict__
            for n in names
        )
        and '_export_scale'
        in module.softmax._modules.get(
            '_output_quantizer', nn.Module()
        ).__dict__
    )


def place_attention_qdq(model: nn.Module) -> List[str]:
    """Move the attention Q/DQ of an export copy next to its matmuls.

    Call it on the copy of :func:`~gpusq_mm.deploy.prepare.
    prepare_export_copy` after its activation quantizers are set up for
    export. The ``qkv`` output hook is removed from each rewritten module
    (its quantizers are applied in the new forward instead).

    Args:
        model (nn.Module): the export copy, changed in place.

    Returns:
        list[str]: names of the rewritten attention modules.
    """
    done = []
    for name, module in model.named_modules():
        if not _is_swin_attention(module):
            continue
        hooks = module.qkv._forward_hooks
        for key in [
            k
            for k, h in hooks.items()
            if getattr(h, '__name__', '') == '_qkv_output_hook'
        ]:
            del hooks[key]
        module.forward = types.MethodType(_swin_forward, module)
        done.append(name)
    return done
