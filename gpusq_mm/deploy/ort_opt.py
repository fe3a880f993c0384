"""An onnxruntime-only, pre-optimized copy of a QDQ export (CPU speed).

The QDQ export (TensorRT's format) keeps each quantized Linear's bias as
a separate ``Add`` after the MatMul: onnxruntime turns the MatMul and its
Q/DQ into ``MatMulIntegerToFloat`` but does not fold the ``Add`` into that
kernel's optional ``bias`` input, so each Linear pays an extra pass over
its output. :func:`save_ort_optimized` writes a copy for onnxruntime's CPU
provider that has it folded:

1. onnxruntime's own graph optimizations up to the ``EXTENDED`` level
   (QDQ fusion, LayerNorm / GELU fusion, constant folding; no
   hardware-specific layouts), saved with ``optimized_model_filepath``;
2. every ``MatMulIntegerToFloat`` whose only consumer is an ``Add`` of a
   constant bias over its last dimension takes that bias as input 6 and
   the ``Add`` is removed;
3. every ``Conv`` whose weight is a ``DequantizeLinear`` of constant
   integers (a quantized Conv: onnxruntime does not fuse it, its QDQ Conv
   fusion needs a QuantizeLinear on the output, which the fake-quant
   model does not have) is rewritten by :func:`rewrite_quantized_convs`,
   by default with its weight dequantized into a constant (and a following
   inference ``BatchNormalization`` folded in), so that onnxruntime
   prepacks it and fuses Conv + activation like an FP32 Conv.

The copy uses onnxruntime's contrib ops (``com.microsoft`` domain): it is
for onnxruntime only (keep the QDQ file for TensorRT), tied to the
onnxruntime version that wrote it.
"""

import os
import os.path as osp
import tempfile
from typing import Dict, Optional

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ['fold_matmul_bias', 'rewrite_quantized_convs', 'save_ort_optimized']

_KERNEL = 'MatMulIntegerToFloat'
_BIAS_INPUT = 6


def fold_matmul_bias(model: onnx.ModelProto) -> int:
    """Fold constant bias ``Add`` nodes into ``MatMulIntegerToFloat``.

    Args:
        model (onnx.ModelProto): an onnxruntime-optimized graph, changed in
            place.

    Returns:
        int: the number of folded ``Add`` nodes.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users: Dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    folded = []
    for node in graph.node:
        has_bias = len(node.input) > _BIAS_INPUT and node.input[_BIAS_INPUT]
        if node.op_type != _KERNEL or has_bias:
            continue
        if node.output[0] in outputs:
            continue
        nxt = users.get(node.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != 'Add':
            continue
        add = nxt[0]
        other = [i for i in add.input if i != node.output[0]]
        if len(other) != 1 or other[0] not in inits:
            continue
        bias = numpy_helper.to_array(inits[other[0]])
        if bias.ndim == 0 or bias.size != bias.shape[-1]:
            continue  # not a per-output-channel vector
        name = f'{other[0]}_bias1d'
        if name not in inits:
            tensor = numpy_helper.from_array(
                bias.reshape(-1).astype(np.float32), name
            )
            graph.initializer.append(tensor)
            inits[name] = tensor
        while len(node.input) < _BIAS_INPUT:
            node.input.append('')
        if len(node.input) == _BIAS_INPUT:
            node.input.append(name)
        else:
            node.input[_BIAS_INPUT] = name
        node.output[0] = add.output[0]
        folded.append(add)
    for add in folded:
        graph.node.remove(add)
    _drop_unused_initializers(graph)
    return len(folded)


CONV_MODES = ('float', 'integer', 'keep')
_INT_TYPES = (np.int8, np.uint8)


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _Graph:
    """Producers, consumers and constant initializers of a graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.users: Dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.users.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}

    def const(self, name: str) -> Optional[np.ndarray]:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        return None

    def dequantize_of(self, name: str) -> Optional[onnx.NodeProto]:
        """The ``DequantizeLinear`` producing ``name``, if any."""
        node = self.producer.get(name)
        if node is not None and node.op_type == 'DequantizeLinear':
            if node.domain in ('', 'ai.onnx'):
                return node
        return None

    def add_const(self, name: str, value: np.ndarray) -> str:
        tensor = numpy_helper.from_array(value, name)
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name


def _per_channel(scale: np.ndarray, channels: int) -> Optional[np.ndarray]:
    if scale.size == 1:
        return np.full(channels, scale.reshape(-1)[0], np.float64)
    if scale.ndim == 1 and scale.size == channels:
        return scale.astype(np.float64)
    return None


def _weight(g: _Graph, dq: onnx.NodeProto):
    """``(integers, zero points, scales)`` per output channel, or None."""
    if _attr(dq, 'block_size', 0) or dq.input[0] not in g.inits:
        return None
    wq = g.const(dq.input[0])
    scale = g.const(dq.input[1])
    if wq.dtype.type not in _INT_TYPES or scale is None or wq.ndim < 3:
        return None
    if scale.size > 1 and _attr(dq, 'axis', 1) != 0:
        return None  # not per output channel
    zp = np.zeros(1, wq.dtype)
    if len(dq.input) > 2 and dq.input[2]:
        zp = g.const(dq.input[2])
        if zp is None or zp.size not in (1, scale.size):
            return None
    channels = wq.shape[0]
    zp = _per_channel(zp.astype(np.float64), channels)
    scale = _per_channel(scale, channels)
    if zp is None or scale is None:
        return None  # not one value per output channel
    return wq, zp, scale


def _batch_norm_after(g: _Graph, conv: onnx.NodeProto):
    """``(node, multiplier, offset)`` of an inference BN after ``conv``."""
    out = conv.output[0]
    users = g.users.get(out, [])
    if out in g.outputs or len(users) != 1:
        return None
    bn = users[0]
    if bn.op_type != 'BatchNormalization' or bn.domain not in ('', 'ai.onnx'):
        return None
    if bn.input[0] != out:
        return None
    if _attr(bn, 'training_mode', 0) or len(bn.output) != 1:
        return None
    params = [g.const(i) for i in bn.input[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    mul = gamma / np.sqrt(var + _attr(bn, 'epsilon', 1e-5))
    return bn, mul, beta - mean * mul


def rewrite_quantized_convs(
    model: onnx.ModelProto, mode: str = 'float', fold_bn: bool = True
) -> Dict[str, int]:
    """Rewrite the Convs whose weight is a ``DequantizeLinear`` of integers.

    onnxruntime leaves such a Conv as an FP32 convolution that dequantizes
    its weight at every run and cannot be prepacked or fused with the
    following BatchNormalization / activation. Both rewrites compute what
    the fake-quant model computes, ``conv(dq(q(x)), dq(W_q)) + b``, up to
    floating-point rounding:

    - ``'float'``: the weight becomes a constant FP32 tensor
      ``(W_q - zp) * scale``; the activation keeps its QuantizeLinear /
      DequantizeLinear. onnxruntime then runs the Conv like an FP32 one
      (prepacked, NCHWc, fused with Relu). Fastest on onnxruntime 1.32 CPU
      (see bench/README.md).
    - ``'integer'``: ``ConvInteger(x_q, W_u8, x_zp, 128)`` (int8 weights
      shifted to uint8 with zero point 128: onnxruntime 1.32's int8-weight
      ConvInteger is several times slower) -> ``Cast`` -> ``Mul`` by
      ``x_scale * w_scale[c]`` -> ``Add`` of the bias. Needs uint8
      activations (``act_dtype='uint8'``) with constant scalar scale and
      zero point; others are kept.
    - ``'keep'``: nothing is changed (the Convs are only counted).

    With ``fold_bn``, an inference ``BatchNormalization`` that is the
    Conv's only consumer is folded into the weight / the ``Mul`` and bias.

    Args:
        model (onnx.ModelProto): an onnxruntime-optimized graph (or a QDQ
            export), changed in place.
        mode (str): ``'float'``, ``'integer'`` or ``'keep'``.
        fold_bn (bool): fold following BatchNormalization nodes.

    Returns:
        dict: ``conv_rewritten`` (count), ``conv_kept`` (Convs with a
        dequantized weight left as they were), ``bn_folded``.
    """
    if mode not in CONV_MODES:
        raise ValueError(
            f'rewrite_quantized_convs: mode must be one of {CONV_MODES}, '
            f'got {mode!r}'
        )
    g = _Graph(model.graph)
    replace: Dict[int, list] = {}
    dropped = set()
    touched = []
    kept = 0
    for index, conv in enumerate(model.graph.node):
        if conv.op_type != 'Conv' or conv.domain not in ('', 'ai.onnx'):
            continue
        wdq = g.dequantize_of(conv.input[1])
        if wdq is None:
            continue
        new = (
            None
            if mode == 'keep'
            else _rewrite_one(g, conv, wdq, index, mode, fold_bn)
        )
        if new is None:
            kept += 1
            continue
        nodes, bn = new
        replace[id(conv)] = nodes
        if bn is not None:
            dropped.add(id(bn))
        touched.append(wdq)
        if mode == 'integer':
            touched.append(g.dequantize_of(conv.input[0]))
    if replace:
        nodes = []
        for node in model.graph.node:
            if id(node) not in dropped:
                nodes.extend(replace.get(id(node), [node]))
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {i for n in model.graph.node for i in n.input} | g.outputs
        for dq in touched:  # the DequantizeLinear nodes nobody reads now
            if dq.output[0] not in used and dq in model.graph.node:
                model.graph.node.remove(dq)
        _drop_unused_initializers(model.graph)
    return dict(
        conv_rewritten=len(replace), conv_kept=kept, bn_folded=len(dropped)
    )


def _rewrite_one(g, conv, wdq, index, mode, fold_bn):
    """The nodes replacing ``conv`` (and its BN), or None to keep it."""
    weight = _weight(g, wdq)
    if weight is None:
        return None
    wq, wzp, wscale = weight
    channels = wq.shape[0]
    bias = np.zeros(channels, np.float64)
    if len(conv.input) > 2 and conv.input[2]:
        b = g.const(conv.input[2])
        if b is None or b.size != channels:
            return None
        bias = b.reshape(-1).astype(np.float64)
    mul = np.ones(channels, np.float64)
    bn = _batch_norm_after(g, conv) if fold_bn else None
    if bn is not None:
        bn, mul, offset = bn
        bias = bias * mul + offset
    out = bn.output[0] if bn is not None else conv.output[0]
    prefix = f'{conv.name or conv.output[0]}_q{index}'
    shape = (channels,) + (1,) * (wq.ndim - 1)
    if mode == 'float':
        w = (wq.astype(np.float64) - wzp.reshape(shape)) * (
            wscale * mul
        ).reshape(shape)
        node = onnx.helper.make_node(
            'Conv',
            [
                conv.input[0],
                g.add_const(f'{prefix}_w', w.astype(np.float32)),
                g.add_const(f'{prefix}_b', bias.astype(np.float32)),
            ],
            [out],
            name=conv.name,
        )
        node.attribute.extend(conv.attribute)
        return [node], bn
    xdq = g.dequantize_of(conv.input[0])
    if xdq is None or len(xdq.input) < 3 or not xdq.input[2]:
        return None
    xscale, xzp = g.const(xdq.input[1]), g.const(xdq.input[2])
    if xscale is None or xzp is None or xscale.size != 1:
        return None
    if xzp.dtype != np.uint8 or xzp.size != 1:
        return None  # onnxruntime's fast ConvInteger: uint8 activations
    if len(np.unique(wzp)) != 1:
        return None
    if wq.dtype == np.int8:
        if wzp[0] != 0:
            return None
        w_u8 = (wq.astype(np.int16) + 128).astype(np.uint8)
        w_zp = np.array(128, np.uint8)
    else:
        w_u8, w_zp = wq, np.array(int(wzp[0]), np.uint8)
    bshape = (1, channels) + (1,) * (wq.ndim - 2)
    factor = wscale * float(xscale.reshape(-1)[0]) * mul
    acc, flt, scaled = (f'{prefix}_{s}' for s in ('i32', 'f32', 'mul'))
    integer = onnx.helper.make_node(
        'ConvInteger',
        [
            xdq.input[0],
            g.add_const(f'{prefix}_wu8', w_u8),
            xdq.input[2],
            g.add_const(f'{prefix}_wzp', w_zp),
        ],
        [acc],
        name=f'{conv.name}_integer',
    )
    integer.attribute.extend(conv.attribute)
    nodes = [
        integer,
        onnx.helper.make_node('Cast', [acc], [flt], to=onnx.TensorProto.FLOAT),
        onnx.helper.make_node(
            'Mul',
            [
                flt,
                g.add_const(
                    f'{prefix}_s', factor.astype(np.float32).reshape(bshape)
                ),
            ],
            [scaled if np.any(bias) else out],
        ),
    ]
    if np.any(bias):
        nodes.append(
            onnx.helper.make_node(
                'Add',
                [
                    scaled,
                    g.add_const(
                        f'{prefix}_b', bias.astype(np.float32).reshape(bshape)
                    ),
                ],
                [out],
            )
        )
    return nodes, bn


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def save_ort_optimized(src: str, dst: str, conv: str = 'float') -> Dict:
    """Write onnxruntime's optimized graph of ``src``, biases folded.

    Args:
        src (str): a QDQ (or FP32) export.
        dst (str): the ``.onnx`` file to write (onnxruntime only).
        conv (str): how quantized Convs are rewritten (``'float'``,
            ``'integer'`` or ``'keep'``, see
            :func:`rewrite_quantized_convs`). Defaults to 'float'.

    Returns:
        dict: ``path``, ``folded_bias`` (count), ``conv_mode``,
        ``conv_rewritten``, ``conv_kept``, ``bn_folded``, ``file_bytes``.
    """
    import onnxruntime as ort

    if conv not in CONV_MODES:
        raise ValueError(
            f'save_ort_optimized: conv must be one of {CONV_MODES}, got '
            f'{conv!r}'
        )
    fd, tmp = tempfile.mkstemp(suffix='.onnx')
    os.close(fd)
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        )
        opts.optimized_model_filepath = tmp
        opts.log_severity_level = 3
        ort.InferenceSession(src, opts, providers=['CPUExecutionProvider'])
        model = onnx.load(tmp)
    finally:
        os.remove(tmp)
    count = fold_matmul_bias(model)
    convs = rewrite_quantized_convs(model, conv)
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    onnx.save(model, f'{dst}.tmp')
    os.replace(f'{dst}.tmp', dst)
    return dict(
        path=dst,
        folded_bias=count,
        conv_mode=conv,
        **convs,
        file_bytes=osp.getsize(dst),
    )
