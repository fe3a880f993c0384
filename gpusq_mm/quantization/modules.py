"""Explicit, in-place swap of Linear / Conv2d layers to quantized ones.

``pytorch_quantization.quant_modules.initialize()`` monkeypatches
``torch.nn.Linear`` / ``Conv2d``, which misses every layer built through
mmcv's registry (it captured the classes at import time) and every
subclass. GPUSQ-ViT's stage 2 (Yu et al., CVPR 2023, arXiv 2305.10727)
needs all of them, so :func:`quantize_model` changes the class of each
chosen module in place to a quantized subclass of both
pytorch-quantization's ``QuantLinear`` / ``QuantConv2d`` and the module's
own class. Nothing else changes: the same ``Parameter`` objects (optimizers
built earlier stay valid), the 2:4 mask buffers of ``gpusq_mm.sparsity``,
hooks and any extra attribute or buffer. The forward is the original
class's forward with the weight replaced by its fake-quantized, masked
version and the input fake-quantized, so subclass behaviour (mmcv's
wrappers, adaptive padding) is kept. Quantizers start disabled.
"""

from typing import Dict, List, Optional, Type, Union

import torch
import torch.nn as nn
from pytorch_quantization import nn as quant_nn

from .attention import quantize_attention
from .config import QuantConfig
from .quantizer import GPUSQTensorQuantizer
from .select import activation_quantizer, select_modules

__all__ = [
    'QuantConv2dMixin',
    'QuantLinearMixin',
    'is_quantized',
    'quantize_model',
    'quantized_layers',
    'quantizers',
    'select_quant_layers',
]

# The name of the 2:4 mask buffer that gpusq_mm.sparsity registers.
_MASK_NAME = 'sparsity_mask'


def _masked_weight(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The weight under its computed 2:4 mask (the weight itself if none).

    Args:
        module (nn.Module): the layer.
        weight (torch.Tensor): its weight parameter.

    Returns:
        torch.Tensor: ``weight * mask`` when a mask buffer exists.
    """
    mask = module._buffers.get(_MASK_NAME)
    # A placeholder (all-True, not computed) mask leaves the weight as is,
    # so no flag check (and no device synchronization) is needed.
    return weight if mask is None else weight * mask


def _float_mask(
    module: nn.Module, weight: torch.Tensor
) -> Optional[torch.Tensor]:
    """The layer's 2:4 mask in the weight's dtype, cached (or ``None``).

    The cache is keyed on the mask buffer's identity and version counter
    and the weight's dtype / device: replacing or writing the mask
    (``load_state_dict``, ``compute_masks``, ``.to``) refreshes it, without
    any device synchronization.
    """
    mask = module._buffers.get(_MASK_NAME)
    if mask is None:
        return None
    key = (id(mask), mask._version, weight.dtype, weight.device)
    cached = module.__dict__.get('_gpusq_float_mask')
    if cached is None or cached[0] != key:
        cached = (key, mask.to(weight.dtype))
        module.__dict__['_gpusq_float_mask'] = cached
    return cached[1]


class _QuantForwardMixin:
    """Forward of a swapped layer: original forward, quantized operands."""

    _gpusq_orig_cls: Type[nn.Module] = nn.Module

    def forward(self, input, *args, **kwargs):
        """Run the original forward on fake-quantized input and weight."""
        orig_forward = self._gpusq_orig_cls.forward
        wq = self._weight_quantizer
        if wq._disabled:
            return orig_forward(
                self, self._input_quantizer(input), *args, **kwargs
            )
        weight = self._parameters['weight']
        quant_weight = wq.fake_quant(weight, _float_mask(self, weight))
        # The original forward reads ``self.weight``; lend it the quantized
        # tensor for this call only (autograd still reaches ``weight``).
        self._parameters['weight'] = quant_weight
        try:
            return orig_forward(
                self, self._input_quantizer(input), *args, **kwargs
            )
        finally:
            self._parameters['weight'] = weight


class QuantLinearMixin(_QuantForwardMixin, quant_nn.QuantLinear):
    """Swapped Linear: a pytorch-quantization ``QuantLinear``."""

    _gpusq_orig_cls = nn.Linear


class QuantConv2dMixin(_QuantForwardMixin, quant_nn.QuantConv2d):
    """Swapped Conv2d: a pytorch-quantization ``QuantConv2d``."""

    _gpusq_orig_cls = nn.Conv2d


_CLASS_CACHE: Dict[type, type] = {}


def _quant_class(cls: type) -> type:
    """The quantized class for ``cls`` (created once, cached)."""
    if cls not in _CLASS_CACHE:
        base = (
            QuantLinearMixin
            if issubclass(cls, nn.Linear)
            else (QuantConv2dMixin)
        )
        _CLASS_CACHE[cls] = type(
            f'Quant{cls.__name__}',
            (base, cls),
            dict(_gpusq_orig_cls=cls, __module__=__name__),
        )
    return _CLASS_CACHE[cls]


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` was swapped by :func:`quantize_model`."""
    return isinstance(module, _QuantForwardMixin)


def quantized_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The swapped layers of ``model``, by name."""
    return {n: m for n, m in model.named_modules() if is_quantized(m)}


def quantizers(model: nn.Module) -> Dict[str, GPUSQTensorQuantizer]:
    """All :class:`GPUSQTensorQuantizer` of ``model``, by name."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, GPUSQTensorQuantizer)
    }


def _candidate(module: nn.Module) -> bool:
    if is_quantized(module):
        return False
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return False  # nn.MultiheadAttention reads its weight directly
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.weight.dim() == 4


def select_quant_layers(
    model: nn.Module, cfg: Optional[Union[QuantConfig, dict]] = None
) -> List[str]:
    """Names of the layers :func:`quantize_model` would swap.

    Args:
        model (nn.Module): the student.
        cfg (QuantConfig | dict, optional): settings. Defaults to None.

    Returns:
        list[str]: module names, in ``named_modules`` order.
    """
    return select_modules(model, QuantConfig.build(cfg), _candidate)


def quantize_model(
    model: nn.Module,
    cfg: Optional[Union[QuantConfig, dict]] = None,
    names: Optional[List[str]] = None,
) -> List[str]:
    """Swap Linear / Conv2d layers in place for fake-quantized ones.

    With ``cfg.quantize_attention`` the attention matmul operands get
    quantizers too (:func:`~gpusq_mm.quantization.quantize_attention`).
    Call it when the model is built (before checkpoints load): every
    quantizer holds placeholder ``_amax`` / ``_calibrated`` / ``_enabled``
    buffers, all disabled. The settings are kept as
    ``model.gpusq_quant_cfg`` for the calibration hook.

    Args:
        model (nn.Module): the student.
        cfg (QuantConfig | dict, optional): settings. Defaults to None.
        names (list[str], optional): explicit module names; default: the
            selection of :func:`select_quant_layers`. Defaults to None.

    Returns:
        list[str]: the names of the quantized layers (including layers
        already quantized by an earlier call).
    """
    cfg = QuantConfig.build(cfg)
    modules = dict(model.named_modules())
    if names is None:
        names = select_quant_layers(model, cfg)
    for name in names:
        module = modules[name]
        if is_quantized(module):
            continue
        if not _candidate(module):
            raise TypeError(
                f'{name!r} ({type(module).__name__}) cannot be quantized'
            )
        weight = module.weight
        axis = 0 if cfg.w_per_channel else None
        w_shape = [weight.shape[0]] + [1] * (weight.dim() - 1)
        module.__class__ = _quant_class(type(module))
        module._fake_quant = True
        module._weight_quantizer = GPUSQTensorQuantizer(
            cfg.w_bits,
            axis=axis,
            amax_shape=w_shape if axis is not None else (),
            narrow_range=cfg.narrow_range,
            fast=cfg.fast_fake_quant,
            device=weight.device,
        )
        module._input_quantizer = activation_quantizer(cfg, weight.device)
        module._input_quantizer.frozen_off = not cfg.quantize_inputs
    if cfg.quantize_attention:
        quantize_attention(model, cfg)
    model.gpusq_quant_cfg = cfg
    return list(quantized_layers(model))
