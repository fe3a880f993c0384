"""Rewrite an FP32 ONNX graph: integer weight initializers + DequantizeLinear.

The exporter (:mod:`gpusq_mm.deploy.export`) traces the student with every
quantized layer's weight replaced by its fake-quantized (masked) value and
with activation fake quantization emitted as QuantizeLinear /
DequantizeLinear. This module then swaps each quantized layer's FP32 weight
initializer for its integer values feeding a DequantizeLinear with the
per-output-channel scales (TensorRT's explicit-quantization format, the
QDQ format onnxruntime fuses into integer kernels):

- MatMul weights are stored ``[in, out]``: the output channel is axis 1;
- Conv weights ``[out, in, kh, kw]``: axis 0.

The FP32 initializer must equal ``integers * scale`` exactly (checked):
the rewrite never changes a single value of the graph, so a mismatch
(e.g. a layer the exporter folded into a neighbour) is an error naming the
layer, not a silent accuracy loss. The 2:4 zeros are zeros of the integer
tensor.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ['QuantWeight', 'dtype_for_bits', 'quantize_weight_initializers']

_CONSUMERS = {'MatMul': 1, 'Conv': 0}  # op -> output-channel axis


@dataclass
class QuantWeight:
    """The integer form of one layer's weight, as exported.

    Args:
        layer (str): module name (for messages).
        initializer (str): the FP32 initializer's name in the graph.
        values (np.ndarray): the integers, in the initializer's layout.
        scale (np.ndarray): one float32 scale per output channel.
        bits (int): 8 or 4.
    """

    layer: str
    initializer: str
    values: np.ndarray
    scale: np.ndarray
    bits: int


def dtype_for_bits(bits: int) -> int:
    """The ONNX element type of ``bits``-bit signed weights (8 or 4)."""
    types = {8: TensorProto.INT8, 4: TensorProto.INT4}
    if bits not in types:
        raise ValueError(
            f'{bits}-bit weights cannot be exported; supported: 8 '
            '(INT8, opset >= 13) and 4 (INT4, opset >= 21)'
        )
    return types[bits]


def _int_tensor(name: str, values: np.ndarray, bits: int) -> TensorProto:
    if bits == 8:
        return numpy_helper.from_array(values.astype(np.int8), name)
    # onnx packs INT4 values two per byte from a flat int list
    return helper.make_tensor(
        name,
        TensorProto.INT4,
        list(values.shape),
        values.astype(np.int8).flatten().tolist(),
    )


def quantize_weight_initializers(
    model: onnx.ModelProto,
    weights: List[QuantWeight],
    atol: float = 0.0,
) -> Dict[str, str]:
    """Replace FP32 weight initializers with integers + DequantizeLinear.

    Args:
        model (onnx.ModelProto): the traced FP32 graph, changed in place.
        weights (list[QuantWeight]): one entry per quantized layer.
        atol (float): tolerated ``|fp32 - integers * scale|``. Defaults to
            0 (bit-identical).

    Returns:
        dict[str, str]: layer name -> op type of the consuming node.

    Raises:
        ValueError: an initializer is missing, used by anything but one
            MatMul / Conv weight input, or does not equal its integers
            times its scales.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    done = {}
    new_nodes = []
    for w in weights:
        init = inits.get(w.initializer)
        if init is None:
            raise ValueError(
                f'layer {w.layer!r}: weight initializer {w.initializer!r} '
                'is not in the exported graph (folded by the exporter?)'
            )
        users = consumers.get(w.initializer, [])
        ops = [n.op_type for n in users]
        if len(users) != 1 or ops[0] not in _CONSUMERS:
            raise ValueError(
                f'layer {w.layer!r}: weight {w.initializer!r} feeds {ops}, '
                'expected exactly one MatMul or Conv'
            )
        node = users[0]
        if list(node.input).index(w.initializer) != 1:
            raise ValueError(
                f'layer {w.layer!r}: weight {w.initializer!r} is not the '
                f'second input of its {node.op_type}'
            )
        axis = _CONSUMERS[node.op_type]
        fp32 = numpy_helper.to_array(init)
        _check_values(w, fp32, axis, atol)
        int_name = f'{w.initializer}_quantized'
        scale_name = f'{w.initializer}_scale'
        zp_name = f'{w.initializer}_zero_point'
        out_name = f'{w.initializer}_dequantized'
        graph.initializer.remove(init)
        graph.initializer.extend(
            [
                _int_tensor(int_name, w.values, w.bits),
                numpy_helper.from_array(
                    w.scale.astype(np.float32).reshape(-1), scale_name
                ),
                _int_tensor(zp_name, np.zeros(w.scale.size, np.int8), w.bits),
            ]
        )
        new_nodes.append(
            helper.make_node(
                'DequantizeLinear',
                [int_name, scale_name, zp_name],
                [out_name],
                name=f'{w.initializer}_DequantizeLinear',
                axis=axis,
            )
        )
        node.input[1] = out_name
        done[w.layer] = node.op_type
    # DequantizeLinear nodes first: the graph stays topologically sorted
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return done


def _check_values(
    w: QuantWeight, fp32: np.ndarray, axis: int, atol: float
) -> None:
    if fp32.shape != w.values.shape:
        raise ValueError(
            f'layer {w.layer!r}: exported weight shape {fp32.shape} != '
            f'integer weight shape {w.values.shape}'
        )
    if w.scale.size != fp32.shape[axis]:
        raise ValueError(
            f'layer {w.layer!r}: {w.scale.size} scales for '
            f'{fp32.shape[axis]} output channels'
        )
    shape = [1] * fp32.ndim
    shape[axis] = -1
    deq = w.values.astype(np.float32) * w.scale.astype(np.float32).reshape(
        shape
    )
    err = float(np.abs(deq - fp32).max()) if fp32.size else 0.0
    if err > atol:
        raise ValueError(
            f'layer {w.layer!r}: exported FP32 weight differs from its '
            f'integers x scales by up to {err:.3g} (the exporter changed '
            'it, e.g. folded a normalization into it)'
        )


def count_ops(model: onnx.ModelProto) -> Dict[str, int]:
    """Node count per op type (``domain:op`` outside the default domain)."""
    counts: Dict[str, int] = {}
    for node in model.graph.node:
        key = f'{node.domain}:{node.op_type}' if node.domain else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts


def integer_initializers(
    model: onnx.ModelProto, bits: Optional[int] = None
) -> Dict[str, np.ndarray]:
    """The integer weights (INT8 / INT4) of ``model``, as int8 arrays.

    Zero points are left out: the weights are the first inputs of the
    DequantizeLinear nodes.

    Args:
        model (onnx.ModelProto): an exported graph.
        bits (int, optional): only this width. Defaults to None (both).
    """
    types = {TensorProto.INT8: 8, TensorProto.INT4: 4}
    weights = {
        n.input[0] for n in model.graph.node if n.op_type == 'DequantizeLinear'
    }
    out = {}
    for init in model.graph.initializer:
        width = types.get(init.data_type)
        if init.name not in weights:
            continue
        if width is None or (bits is not None and width != bits):
            continue
        out[init.name] = numpy_helper.to_array(init).astype(np.int8)
    return out
