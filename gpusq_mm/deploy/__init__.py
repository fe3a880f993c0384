"""Deployment: ONNX export with real Q/DQ and integer 2:4 weights.

GPUSQ-ViT (Yu et al., CVPR 2023, arXiv 2305.10727) deploys the compressed
student with explicit quantization (TensorRT's QDQ format): this package
exports it, checks it in onnxruntime and measures it.

- :func:`export_onnx`: model -> ``.onnx`` (QuantizeLinear /
  DequantizeLinear activations, INT8 / INT4 weight initializers with
  per-output-channel scales; FP32 for dense / 2:4-only students);
- :func:`export_and_verify`: config + checkpoint -> ``.onnx``, parity
  against the PyTorch fake-quant forward (``tools/deploy/export_onnx.py``);
- :func:`export_and_measure`: FP32 vs quantized file size and onnxruntime
  latency of one checkpoint (for the demo's results);
- :func:`~gpusq_mm.deploy.evaluate.evaluate_export`: the export's
  metric (classifier or segmentor) on the test set next to PyTorch's
  (``tools/deploy/eval_onnx.py``).
"""

from .api import ExportError, export_and_measure, export_and_verify
from .export import DEFAULT_OPSET, INT4_OPSET, export_onnx
from .loading import load_student
from .parts import PARTS, PartModule, make_input, model_family
from .verify import (
    FUSED_OPS,
    fused_ops,
    int8_kernels_saturate,
    ort_latencies_ms,
    ort_latency_ms,
    ort_supports_int4,
    parity,
    run_onnx,
)

__all__ = [
    'DEFAULT_OPSET',
    'ExportError',
    'FUSED_OPS',
    'INT4_OPSET',
    'PARTS',
    'PartModule',
    'export_and_measure',
    'export_and_verify',
    'export_onnx',
    'fused_ops',
    'int8_kernels_saturate',
    'load_student',
    'make_input',
    'model_family',
    'ort_latencies_ms',
    'ort_latency_ms',
    'ort_supports_int4',
    'parity',
    'run_onnx',
]
