"""Sparse-aware quantization (the only package importing pytorch_quantization).

Stage 2 of GPUSQ-ViT (Yu et al., CVPR 2023, arXiv 2305.10727): the 2:4
student is fake-quantized (INT8, or INT4 weights) with pytorch-quantization
quantizers and fine-tuned with distillation while its masks stay enforced.

- :func:`quantize_model`: explicit in-place swap of Linear / Conv2d layers
  (mmcv-built ones and subclasses included) at model construction, same
  Parameter objects and mask buffers, quantizers off, state in buffers.
- :func:`calibrate`, :func:`enable_fake_quant`: calibration (max /
  percentile / entropy / MSE, CPU or GPU, amax all-reduced under DDP) and
  the switch to QAT.
- :func:`quantize_attention` (``quantize_attention=True``): optional
  quantizers on the attention matmul operands (q, k, v, softmax output).
"""

# first: a missing or placeholder (2.2.x) pytorch-quantization fails here,
# saying what to install
from .requirement import REQUIRED, check_pytorch_quantization

# isort: split
from .attention import (
    ATTENTION_QUANTIZERS,
    quantize_attention,
    select_attention,
)
from .calibration import (
    calibrate,
    calibrate_weights,
    disable_fake_quant,
    enable_fake_quant,
    is_calibrated,
    quant_state,
)
from .config import DEFAULT_SKIP, PRESETS, QuantConfig, normalize_calib
from .modules import (
    QuantConv2dMixin,
    QuantLinearMixin,
    is_quantized,
    quantize_model,
    quantized_layers,
    quantizers,
    select_quant_layers,
)
from .quantizer import CALIB_METHODS, GPUSQTensorQuantizer, mse_amax

__all__ = [
    'ATTENTION_QUANTIZERS',
    'CALIB_METHODS',
    'DEFAULT_SKIP',
    'PRESETS',
    'GPUSQTensorQuantizer',
    'QuantConfig',
    'QuantConv2dMixin',
    'REQUIRED',
    'QuantLinearMixin',
    'calibrate',
    'check_pytorch_quantization',
    'calibrate_weights',
    'disable_fake_quant',
    'enable_fake_quant',
    'is_calibrated',
    'is_quantized',
    'mse_amax',
    'normalize_calib',
    'quant_state',
    'quantize_attention',
    'quantize_model',
    'quantized_layers',
    'quantizers',
    'select_attention',
    'select_quant_layers',
]
