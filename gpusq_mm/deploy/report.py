"""Compression report of a student: per layer, totals, measured files.

Per Linear / Conv2d layer: weight shape and parameters, whether it carries
a computed 2:4 mask and whether its values really are 2:4 (checked on the
weight, never taken from a flag), the share of ``|w|`` a magnitude 2:4
mask keeps, weight / activation bits, and its deployable size. The
deployable size is **computed**: 2:4 weights keep half the values plus 2
bits of index metadata per kept value (the cuSPARSELt / sparse Tensor Core
format GPUSQ-ViT's 6.4x counts), INT8 = 1 byte, INT4 = half a byte per
value (:mod:`gpusq_mm.utils.model_size`). Sizes of exported files are
**measured** (file size and the bytes of integer / float initializers).
The per-layer stage-1 feature-KD loss means and the QAT weight factors
are listed when a full training checkpoint holds them.
"""

import os.path as osp
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from gpusq_mm.sparsity import FLAG_NAME, is_2to4, kept_magnitude_ratio
from gpusq_mm.utils.model_size import (
    METADATA_BYTES_PER_ELEMENT,
    deploy_size_bytes,
)

__all__ = ['feature_kd_stats', 'layer_rows', 'onnx_sizes', 'summarize']


def _bits(module: nn.Module, attr: str) -> int:
    q = getattr(module, attr, None)
    if q is not None and getattr(q, 'enabled', False):
        return int(q.num_bits)
    return 32


def layer_rows(model: nn.Module) -> List[Dict]:
    """One row per Linear / Conv2d layer of ``model`` (see module doc)."""
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        weight = module.weight.detach()
        flag = module._buffers.get(FLAG_NAME)
        groups_ok = weight.dim() >= 2 and weight.shape[1] % 4 == 0
        sparse = bool(groups_ok and is_2to4(weight))
        w_bits = _bits(module, '_weight_quantizer')
        n = weight.numel()
        if sparse:
            deploy = n * (0.5 * w_bits / 8 + METADATA_BYTES_PER_ELEMENT)
        else:
            deploy = n * w_bits / 8
        rows.append(
            dict(
                name=name,
                type=type(module).__name__,
                shape=list(weight.shape),
                params=n,
                masked=bool(flag) if flag is not None else False,
                is_2to4=sparse,
                zeros=float((weight == 0).float().mean()),
                kept_magnitude=(
                    float(kept_magnitude_ratio(weight)) if groups_ok else None
                ),
                w_bits=w_bits,
                a_bits=_bits(module, '_input_quantizer'),
                fp32_bytes=4 * n,
                deploy_bytes=deploy,
                compression=4 * n / deploy if deploy else None,
            )
        )
    return rows


def feature_kd_stats(state: Dict[str, torch.Tensor]) -> List[Dict]:
    """Stage-1 feature-KD loss means and QAT factors from a checkpoint.

    Args:
        state (dict): the checkpoint's state dict (full training one).

    Returns:
        list[dict]: ``index``, ``stage1_loss``, ``count``, ``factor``
        (None before QAT), in the order of the feature-KD layers.
    """
    prefix = next(
        (k[: -len('stats.mean')] for k in state if k.endswith('stats.mean')),
        None,
    )
    if prefix is None:
        return []
    mean = state[prefix + 'stats.mean'].double().tolist()
    count = state.get(prefix + 'stats.count', torch.zeros(len(mean))).tolist()
    factors = state.get(prefix + 'stats.factors', torch.zeros(0)).tolist()
    return [
        dict(
            index=i,
            stage1_loss=m,
            count=int(count[i]) if i < len(count) else None,
            factor=factors[i] if i < len(factors) else None,
        )
        for i, m in enumerate(mean)
    ]


def onnx_sizes(path: str) -> Dict:
    """Measured sizes of an exported file: file, integer and float weights."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(path)
    weights = {
        n.input[0] for n in model.graph.node if n.op_type == 'DequantizeLinear'
    }
    ints = floats = 0
    n_int = 0
    for init in model.graph.initializer:
        nbytes = len(init.raw_data) if init.raw_data else None
        if nbytes is None:
            nbytes = onnx.numpy_helper.to_array(init).nbytes
        if init.data_type in (TensorProto.INT8, TensorProto.INT4):
            if init.name in weights:  # not the zero points
                ints += nbytes
                n_int += 1
        elif init.data_type == TensorProto.FLOAT:
            floats += nbytes
    return dict(
        path=path,
        file_bytes=osp.getsize(path),
        integer_initializer_bytes=ints,
        integer_initializers=n_int,
        float_initializer_bytes=floats,
    )


def flops(model: nn.Module, shape: Sequence[int], part: str) -> Optional[int]:
    """FLOPs of the exported part (``mmengine.analysis``), quantizers off."""
    import copy

    from mmengine.analysis import FlopAnalyzer

    from .parts import PartModule

    dup = copy.deepcopy(model)
    try:
        from gpusq_mm.quantization import disable_fake_quant

        disable_fake_quant(dup)
    except ImportError:
        pass
    module = PartModule(dup, part).eval()
    with torch.no_grad():
        analyzer = FlopAnalyzer(module, (torch.randn(*shape),))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return int(analyzer.total())


def summarize(
    model: nn.Module,
    state: Optional[Dict] = None,
    onnx_files: Sequence[str] = (),
    shape: Sequence[int] = (1, 3, 224, 224),
    part: str = 'full',
) -> Dict:
    """The whole report as a JSON-able dict.

    Args:
        model (nn.Module): the student (loaded).
        state (dict, optional): the checkpoint's raw state dict (for the
            feature-KD statistics). Defaults to None.
        onnx_files (Sequence[str]): exported files to measure.
        shape (Sequence[int]): input shape for FLOPs.
        part (str): the part FLOPs are counted on. Defaults to 'full'.
    """
    rows = layer_rows(model)
    size = deploy_size_bytes(model)
    params = sum(p.numel() for p in model.parameters())
    return dict(
        layers=rows,
        totals=dict(
            params=params,
            linear_conv_layers=len(rows),
            masked_layers=sum(r['masked'] for r in rows),
            sparse_2to4_layers=sum(r['is_2to4'] for r in rows),
            quantized_layers=sum(r['w_bits'] < 32 for r in rows),
            sparse_2to4_params=sum(r['params'] for r in rows if r['is_2to4']),
            flops=flops(model, shape, part),
            flops_input=list(shape),
            flops_part=part,
        ),
        computed_size=dict(
            note='computed: 2:4 = half the values + 2-bit indices per kept '
            'value; INT8 1 byte, INT4 0.5 byte per value',
            deploy_bytes=size['total'],
            fp32_bytes=size['fp32_total'],
            ratio=size['fp32_total'] / max(size['total'], 1.0),
        ),
        measured_files=[onnx_sizes(p) for p in onnx_files],
        feature_kd=feature_kd_stats(state or {}),
    )
