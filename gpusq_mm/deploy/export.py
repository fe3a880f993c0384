"""Export a (2:4 sparse, fake-quantized) student to ONNX with real Q/DQ.

GPUSQ-ViT (Yu et al., CVPR 2023, arXiv 2305.10727) deploys the student
with TensorRT's explicit quantization: activations pass through
QuantizeLinear -> DequantizeLinear with their calibrated per-tensor
scales, weights are integer initializers feeding DequantizeLinear with
per-output-channel scales, and 2:4 zeros are exact zeros of the integer
weights. The route (robust for any mmdet / mmseg / mmpretrain layer):

1. :func:`~gpusq_mm.deploy.prepare.prepare_export_copy`: a traceable copy
   whose weights are the fake-quantized ones and whose activation
   quantizers are ``fake_quantize_per_tensor_affine`` (Q/DQ on export);
2. trace it with the TorchScript ONNX exporter (eval, no Conv-BN folding,
   so every quantized weight stays one named initializer);
3. :func:`~gpusq_mm.deploy.qdq.quantize_weight_initializers`: FP32 weight
   initializers -> integers + DequantizeLinear (values checked
   bit-identical);
4. INT4 weights: the model is converted to opset 21 (the first with INT4)
   after tracing; exported only where onnxruntime runs it.

A student whose quantizers are off (dense or 2:4 only) exports as FP32.
"""

import io
import os
import os.path as osp
import warnings
from typing import Dict, Optional

import onnx
import torch
import torch.nn as nn

from .parts import ENCODER_PART, PartModule, freeze_reference_points
from .prepare import prepare_export_copy, quant_summary
from .qdq import count_ops, quantize_weight_initializers
from .rewrite import skip_zero_pads

__all__ = ['DEFAULT_OPSET', 'INT4_OPSET', 'ExportError', 'export_onnx']


class ExportError(RuntimeError):
    """A model or setting that cannot be exported (the message says why)."""


DEFAULT_OPSET = 17
INT4_OPSET = 21
_TRACE_MAX_OPSET = 20  # the TorchScript exporter's newest
GRID_SAMPLE_OPSET = 16  # mmcv's PyTorch deformable attention: grid_sample


def _export(*args, **kwargs) -> None:
    try:
        torch.onnx.export(*args, **kwargs)
    except torch.onnx.errors.OnnxExporterError as e:
        first = str(e).strip().splitlines()[0]
        raise ExportError(
            f'the ONNX exporter cannot trace this model at input shape '
            f'{tuple(args[1][0].shape)}: {first[:300]} (another --shape '
            'or --part may work)'
        ) from e


def _trace(
    module: nn.Module, inputs: torch.Tensor, opset: int, num_outputs: int
) -> onnx.ModelProto:
    buf = io.BytesIO()
    names = (
        ['output']
        if num_outputs == 1
        else [f'output{i}' for i in range(num_outputs)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        _export(
            module,
            (inputs,),
            buf,
            dynamo=False,
            opset_version=min(opset, _TRACE_MAX_OPSET),
            input_names=['input'],
            output_names=names,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def _run_recording(wrapper: nn.Module, inputs: torch.Tensor, names):
    """Run ``wrapper`` and return its outputs and which ``names`` ran."""
    called = set()
    modules = dict(wrapper.model.named_modules())
    handles = [
        modules[n].register_forward_hook(
            lambda *args, name=n: called.add(name)
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            out = wrapper(inputs)
    finally:
        for h in handles:
            h.remove()
    return out, called


def _to_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = max(
        (o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')),
        default=opset,
    )
    if current == opset:
        return model
    from onnx import version_converter

    return version_converter.convert_version(model, opset)


def export_onnx(
    model: nn.Module,
    inputs: torch.Tensor,
    out: str,
    part: str = 'full',
    opset: Optional[int] = None,
    quantized: bool = True,
    act_dtype: str = 'int8',
    log=print,
) -> Dict:
    """Export ``model`` (a student, eval mode) to ``out``.

    Args:
        model (nn.Module): the upstream student (not modified).
        inputs (torch.Tensor): an example input (its shape is fixed).
        out (str): the ``.onnx`` file to write.
        part (str): ``'full'``, ``'backbone'``, ``'backbone+neck'`` or
            ``'backbone+neck+encoder'`` (DETR family; see
            :mod:`gpusq_mm.deploy.parts`). Defaults to 'full'.
        opset (int, optional): ONNX opset; default 17 (21 with INT4
            weights). INT8 needs >= 13, INT4 >= 21.
        quantized (bool): False: the FP32 export (quantizers off).
            Defaults to True.
        act_dtype (str): activation integer type, ``'int8'`` (TensorRT) or
            ``'uint8'`` (zero point 128, the same grid). Defaults to
            'int8'.
        log (Callable): progress printer. Defaults to print.

    Returns:
        dict: ``path``, ``mode`` (``'fp32'`` / ``'int8'`` / ``'int4'``),
        ``opset``, ``quantized_layers`` (name -> op), ``ops`` (op counts),
        ``file_bytes``, ``outputs`` (names), ``encoder_levels`` (the
        ``(h, w)`` of each level of the encoder memory, row-major in this
        order; empty unless the part has the encoder).
    """
    summary = quant_summary(model)
    quantized = quantized and bool(summary['weights'])
    w_bits = summary['w_bits'] if quantized else set()
    if len(w_bits) > 1:
        raise ValueError(f'mixed weight widths {sorted(w_bits)} in one model')
    bits = next(iter(w_bits)) if w_bits else None
    mode = {None: 'fp32', 8: 'int8', 4: 'int4'}.get(bits, f'int{bits}')
    need = {None: 7, 8: 13, 4: INT4_OPSET}.get(bits)
    if need is None:
        raise ValueError(
            f'{bits}-bit weights cannot be exported; supported: FP32, INT8 '
            'and INT4 weights'
        )
    if opset is None:
        opset = INT4_OPSET if bits == 4 else DEFAULT_OPSET
    if opset < need:
        raise ValueError(f'{mode} export needs opset >= {need}, got {opset}')
    deformable = [
        n
        for n, m in model.named_modules()
        if type(m).__name__ == 'MultiScaleDeformableAttention'
    ]
    if part == ENCODER_PART and deformable and opset < GRID_SAMPLE_OPSET:
        raise ValueError(
            f'the deformable attention of {type(model).__name__} '
            f'({deformable[0]}) exports as GridSample, which needs opset >= '
            f'{GRID_SAMPLE_OPSET}, got {opset}'
        )
    if bits == 4:
        from .verify import ort_supports_int4

        ok, why = ort_supports_int4()
        if not ok:
            raise ExportError(
                'INT4 weights cannot be exported for onnxruntime here: '
                f'{why}. Supported: FP32 and INT8 (W8A8) students'
            )
    dup, weights = prepare_export_copy(model, quantized, act_dtype)
    if part == ENCODER_PART:
        freeze_reference_points(dup)
    wrapper = PartModule(dup, part).eval()
    ref, called = _run_recording(wrapper, inputs, [w.layer for w in weights])
    # layers outside the exported part (e.g. an auxiliary head) are not in
    # the graph; every layer that ran must be found there
    weights = [w for w in weights if w.layer in called]
    levels = [list(hw) for hw in wrapper.encoder_levels]
    log(
        f'[trace] {part} of {type(model).__name__}, {mode}, opset {opset}'
        + (f'; encoder memory of levels (h, w) {levels}' if levels else '')
    )
    with skip_zero_pads():
        graph = _trace(wrapper, inputs, opset, len(ref))
    for w in weights:
        w.initializer = f'model.{w.initializer}'
    layers = quantize_weight_initializers(graph, weights)
    if bits == 4 or opset > _TRACE_MAX_OPSET:
        graph = _to_opset(graph, opset)
    onnx.checker.check_model(graph, full_check=True)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    tmp = f'{out}.tmp'
    onnx.save(graph, tmp)
    os.replace(tmp, out)
    return dict(
        path=out,
        mode=mode,
        opset=opset,
        part=part,
        quantized_layers=layers,
        ops=count_ops(graph),
        file_bytes=osp.getsize(out),
        outputs=[o.name for o in graph.graph.output],
        activation_dtype=act_dtype if quantized else None,
        encoder_levels=levels,
    )
