"""The onnxruntime-only optimized copy: biases folded, same outputs."""

import numpy as np
import onnx

from gpusq_mm.deploy import export_and_verify, run_onnx
from gpusq_mm.deploy.ort_opt import save_ort_optimized
from gpusq_mm.quantization import quantized_layers

from .helpers import CONFIGS, PART, SHAPES, make_student


def _ops(model: onnx.ModelProto) -> dict:
    counts = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_ort_optimized_copy_folds_biases_and_keeps_outputs(tmp_path):
    ckpt = str(tmp_path / 'cls.pth')
    model = make_student('cls', ckpt, stage=2)
    src = str(tmp_path / 'cls.onnx')
    res = export_and_verify(
        CONFIGS['cls'],
        ckpt,
        src,
        part=PART['cls'],
        shape=SHAPES['cls'],
        act_dtype='uint8',
        log=lambda *a: None,
    )
    linears = sum(op == 'MatMul' for op in res['quantized_layers'].values())
    layers = quantized_layers(model)
    biased = sum(
        layers[n].bias is not None
        for n, op in res['quantized_layers'].items()
        if op == 'MatMul'
    )
    dst = str(tmp_path / 'cls_ort.onnx')
    out = save_ort_optimized(src, dst)
    graph = onnx.load(dst)
    kernels = [
        n for n in graph.graph.node if n.op_type == 'MatMulIntegerToFloat'
    ]
    # every quantized Linear is an integer kernel, its bias (if any) inside
    assert len(kernels) == linears
    assert 0 < biased == out['folded_bias'] < linears  # PatchMerging: none
    with_bias = [n for n in kernels if len(n.input) == 7 and n.input[6]]
    assert len(with_bias) == biased
    assert _ops(graph).get('Add', 0) <= _ops(onnx.load(src))['Add'] - biased
    x = np.random.RandomState(0).randn(*SHAPES['cls']).astype(np.float32)
    a, b = run_onnx(src, x)[0], run_onnx(dst, x)[0]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_export_tool_writes_the_ort_copy(tmp_path, capsys):
    from .test_report_trt import _tool

    ckpt = str(tmp_path / 'cls.pth')
    make_student('cls', ckpt, stage=2)
    out, ort_out = str(tmp_path / 'a.onnx'), str(tmp_path / 'a_ort.onnx')
    shape = 'x'.join(map(str, SHAPES['cls']))
    res = _tool('deploy', 'export_onnx.py').main(
        [CONFIGS['cls'], ckpt, '--out', out, '--shape', shape]
        + ['--act-dtype', 'uint8', '--ort-out', ort_out]
    )
    assert res['ort']['folded_bias'] > 0 and res['ort']['max_abs_diff'] < 1e-4
    assert 'biases folded' in capsys.readouterr().out
    assert onnx.load(ort_out).graph.node
