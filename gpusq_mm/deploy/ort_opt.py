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
   the ``Add`` is removed.

The copy uses onnxruntime's contrib ops (``com.microsoft`` domain): it is
for onnxruntime only (keep the QDQ file for TensorRT), tied to the
onnxruntime version that wrote it.
"""

import os
import os.path as osp
import tempfile
from typing import Dict

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ['fold_matmul_bias', 'save_ort_optimized']

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
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return len(folded)


def save_ort_optimized(src: str, dst: str) -> Dict:
    """Write onnxruntime's optimized graph of ``src``, biases folded.

    Args:
        src (str): a QDQ (or FP32) export.
        dst (str): the ``.onnx`` file to write (onnxruntime only).

    Returns:
        dict: ``path``, ``folded_bias`` (count), ``file_bytes``.
    """
    import onnxruntime as ort

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
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    onnx.save(model, f'{dst}.tmp')
    os.replace(f'{dst}.tmp', dst)
    return dict(path=dst, folded_bias=count, file_bytes=osp.getsize(dst))
