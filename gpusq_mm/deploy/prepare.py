"""Turn a fake-quantized student into a traceable copy plus integer weights.

The student's fake quantizers (:class:`~gpusq_mm.quantization.
GPUSQTensorQuantizer`, our ``FakeQuantSTE``) have no ONNX symbolic. For
export, :func:`prepare_export_copy` deep-copies the student and:

- computes each enabled weight quantizer's integers exactly as its
  forward does (``clamp(round(w / s), qmin, bound)``, times the 2:4 mask,
  ``s = amax / bound``) and stores ``integers * s`` as the layer's weight,
  so the traced FP32 graph holds the fake-quantized weight;
- gives Linear layers a ``MatMul`` forward on a pre-transposed ``[in,
  out]`` weight (the exporter would otherwise fold a Transpose into a new,
  anonymous initializer) and, with integer weights, a rank-3 bias (see
  :func:`_matmul_forward`);
  Conv layers keep their own forward;
- makes every enabled activation quantizer (layer inputs, and the
  attention operands when ``quantize_attention`` is on) a
  ``torch.fake_quantize_per_tensor_affine``, which the exporter emits as a
  QuantizeLinear / DequantizeLinear pair with the calibrated per-tensor
  scale;
- gives Swin ``PatchMerging`` layers a forward of stacked strided slices
  in place of ``nn.Unfold`` (same values, FP32 and quantized exports
  alike: :mod:`gpusq_mm.deploy.rewrite`).

The integers go to :func:`gpusq_mm.deploy.qdq.quantize_weight_initializers`
after tracing. The user's model is never modified.
"""

import copy
import types
from typing import List, Tuple

import numpy as np
import torch
import torch.nn as nn

from gpusq_mm.deploy.qdq import QuantWeight, dtype_for_bits
from gpusq_mm.quantization import quantized_layers, quantizers
from gpusq_mm.quantization.modules import _float_mask

from .attention import place_attention_qdq
from .rewrite import rewrite_patch_merging

__all__ = ['ACT_DTYPES', 'prepare_export_copy', 'quant_summary']

#: Activation integer types: ``int8`` (zero point 0, TensorRT's format) or
#: ``uint8`` (zero point 128: the same grid, onnxruntime's fast CPU path).
ACT_DTYPES = ('int8', 'uint8')


def _bounds(q) -> Tuple[int, int]:
    if q._unsigned:
        raise ValueError('unsigned quantizers cannot be exported')
    bound = 2 ** (q.num_bits - 1) - 1
    qmin = -bound if q._narrow_range else -bound - 1
    return qmin, bound


def quant_summary(model: nn.Module) -> dict:
    """Which quantizers of ``model`` are on, and their bit widths.

    Returns:
        dict: ``weights`` / ``activations`` (names of enabled quantizers),
        ``w_bits`` and ``a_bits`` (sets of widths in use).
    """
    weights, acts, w_bits, a_bits = [], [], set(), set()
    for name, q in quantizers(model).items():
        if not q.enabled:
            continue
        if name.endswith('_weight_quantizer'):
            weights.append(name)
            w_bits.add(int(q.num_bits))
        else:
            acts.append(name)
            a_bits.add(int(q.num_bits))
    return dict(
        weights=weights, activations=acts, w_bits=w_bits, a_bits=a_bits
    )


def weight_integers(module: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """The integers and per-output-channel scales of a layer's weight.

    Returns:
        tuple[Tensor, Tensor]: integers (float tensor, weight's shape) and
        float32 scales, one per output channel.
    """
    q = module._weight_quantizer
    qmin, bound = _bounds(q)
    weight = module.weight.detach().float()
    scale = (q._amax.detach().float() / bound).clamp_min(1e-12)
    ints = (weight * scale.reciprocal()).round_().clamp_(qmin, bound)
    mask = _float_mask(module, weight)
    if mask is not None:
        ints.mul_(mask)
    scale = scale.reshape(-1)
    if scale.numel() == 1:
        scale = scale.expand(weight.shape[0])
    if scale.numel() != weight.shape[0]:
        raise ValueError(
            f'weight quantizer of {type(module).__name__} has '
            f'{scale.numel()} ranges for {weight.shape[0]} output channels '
            '(only per-output-channel or per-tensor weights export)'
        )
    return ints, scale.contiguous()


def _matmul_forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self._input_quantizer(x)
    y = torch.matmul(x, self.weight)
    if self.bias is None:
        return y
    # integer weights get a rank-3+ bias: onnxruntime's MatMulAddFusion
    # would otherwise turn MatMul + Add into an FP32 Gemm before its QDQ
    # fusion can make the MatMul an integer MatMulIntegerToFloat (same
    # values either way); FP32 weights keep the plain bias, which that
    # fusion speeds up
    if y.dim() < 3 or not self.__dict__.get('_export_int', False):
        return y + self.bias
    return y + self.bias.view([1] * (y.dim() - 1) + [-1])


def _qdq_forward(self, x: torch.Tensor) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(
        x, self._export_scale, self._export_zp, *self._export_range
    )


def _set_act_export(q, act_dtype: str) -> None:
    if q.num_bits != 8:
        raise ValueError(
            f'{q.num_bits}-bit activations cannot be exported; supported: '
            '8-bit activations (QuantizeLinear int8 / uint8)'
        )
    qmin, bound = _bounds(q)
    if q._amax.numel() != 1:
        raise ValueError('only per-tensor activation ranges export')
    scale = (q._amax.detach().float() / bound).clamp_min(1e-12).reshape(())
    # narrow range ([-127, 127]) runs as [-128, 127]: an int8
    # QuantizeLinear saturates at -128 (it only differs below -127.5 s)
    if act_dtype == 'uint8':
        zp, rng = 128, (0, 255)
    else:
        zp, rng = 0, (-128, 127)
    q.__dict__['_export_scale'] = scale.clone()
    q.__dict__['_export_zp'] = torch.tensor(zp, dtype=torch.int32)
    q.__dict__['_export_range'] = rng
    q.forward = types.MethodType(_qdq_forward, q)


def prepare_export_copy(
    model: nn.Module, quantized: bool = True, act_dtype: str = 'int8'
) -> Tuple[nn.Module, List[QuantWeight]]:
    """A traceable copy of ``model`` and its quantized layers' integers.

    Args:
        model (nn.Module): the student (eval mode).
        quantized (bool): False exports the FP32 model (every quantizer
            off; 2:4 weights stay masked). Defaults to True.
        act_dtype (str): one of :data:`ACT_DTYPES`. Defaults to 'int8'.

    Returns:
        tuple: the copy, and one :class:`QuantWeight` per layer with an
        enabled weight quantizer (``initializer`` is the module name plus
        ``.weight``; the caller adds the wrapper's prefix).
    """
    if act_dtype not in ACT_DTYPES:
        raise ValueError(
            f'act_dtype must be one of {ACT_DTYPES}, got {act_dtype!r}'
        )
    dup = copy.deepcopy(model).eval()
    weights = []
    layers = quantized_layers(dup)
    with torch.no_grad():
        for name, module in layers.items():
            wq = module._weight_quantizer
            w = module.weight
            if quantized and wq.enabled:
                dtype_for_bits(int(wq.num_bits))  # 8 or 4, else an error
                ints, scale = weight_integers(module)
                value = ints * scale.reshape([-1] + [1] * (w.dim() - 1))
            else:
                ints = scale = None
                mask = _float_mask(module, w.detach())
                value = w.detach() * mask if mask is not None else w.detach()
            wq.disable()
            if isinstance(module, nn.Linear):
                ints = None if ints is None else ints.t()
                value = value.t()
                module.forward = types.MethodType(_matmul_forward, module)
                module.__dict__['_export_int'] = ints is not None
            module.weight = nn.Parameter(value.contiguous(), False)
            if ints is not None:
                weights.append(
                    QuantWeight(
                        layer=name,
                        initializer=f'{name}.weight',
                        values=ints.numpy().astype(np.int8),
                        scale=scale.numpy().astype(np.float32),
                        bits=int(wq.num_bits),
                    )
                )
    for name, q in quantizers(dup).items():
        if name.endswith('_weight_quantizer') or not q.enabled:
            continue
        if quantized:
            _set_act_export(q, act_dtype)
        else:
            q.disable()
    if quantized:
        place_attention_qdq(dup)
    rewrite_patch_merging(dup)
    return dup, weights
