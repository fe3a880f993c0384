"""ONNX export: Q/DQ graph, integer 2:4 weights, onnxruntime parity.

Tiny students of the three demo configs (classifier, UperNet, Mask R-CNN
backbone + neck) are compressed without a Runner (``helpers``), saved as
``student_final.pth`` would be, exported through the tool's entry point
and run in onnxruntime.
"""

import os.path as osp

import numpy as np
import onnx
import pytest
import torch

from gpusq_mm.deploy import ExportError, export_and_verify, load_student
from gpusq_mm.deploy.qdq import integer_initializers
from gpusq_mm.deploy.verify import fused_ops, int8_kernels_saturate
from gpusq_mm.quantization import quantized_layers

from .helpers import CONFIGS, PART, SHAPE, SHAPES, make_student

TOOL = osp.join(
    osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
    'tools',
    'deploy',
    'export_onnx.py',
)


def _quiet(*args):
    pass


def _export(tmp_path, task, stage=2, **kwargs):
    ckpt = str(tmp_path / f'{task}_s{stage}.pth')
    model = make_student(task, ckpt, stage, kwargs.pop('cfg_options', None))
    out = str(tmp_path / f'{task}_s{stage}.onnx')
    res = export_and_verify(
        CONFIGS[task],
        ckpt,
        out,
        part=PART[task],
        shape=SHAPES[task],
        log=_quiet,
        cfg_options=kwargs.pop('load_options', None),
        **kwargs,
    )
    return model, res, onnx.load(out)


def _check_2to4(name: str, ints: np.ndarray, op: str) -> bool:
    # MatMul weights are [in, out] (groups of 4 along axis 0); Conv
    # weights [out, in, kh, kw] (groups along axis 1)
    w = ints if op == 'Conv' else ints.T
    w = np.moveaxis(w, 1, -1).reshape(-1, 4)
    return bool(((w != 0).sum(1) <= 2).all())


@pytest.mark.parametrize(
    'task',
    [
        'cls',
        pytest.param('seg', marks=pytest.mark.slow),
        pytest.param('det', marks=pytest.mark.slow),
    ],
)
def test_qat_student_exports_qdq_int8(tmp_path, task):
    model, res, graph = _export(tmp_path, task)
    assert res['mode'] == 'int8' and res['passed'], res['failure']
    for row in res['parity']:
        # not bit-exact: onnxruntime's QuantizeLinear divides by the scale
        # (PyTorch multiplies by its inverse) and its FP32 ops differ in
        # the last bits, so a few activations round to the neighbouring
        # integer; the error stays far below one quantization step per
        # output on average
        assert row['cosine'] > 0.999, row
        assert row['max_abs'] <= 0.05 * max(row['ref_max_abs'], 1e-6)
    # every quantized layer of the exported part has int8 weights, and
    # only those: no FP32 copy of a quantized weight is left
    prefix = {'full': '', 'backbone+neck': ('backbone.', 'neck.')}
    wanted = {
        n
        for n, m in quantized_layers(model).items()
        if m._weight_quantizer.enabled
        and (PART[task] == 'full' or n.startswith(prefix[PART[task]]))
        and not n.startswith('auxiliary_head.')  # training only
    }
    assert set(res['quantized_layers']) == wanted
    ints = integer_initializers(graph, bits=8)
    assert len(ints) == len(wanted)
    floats = {
        i.name
        for i in graph.graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT
    }
    assert not {f'model.{n}.weight' for n in wanted} & floats
    ops = res['quantized_layers']
    masked = [
        n
        for n in wanted
        if bool(model.get_submodule(n).sparsity_mask_computed)
    ]
    assert masked, 'the demo students have 2:4 layers'
    for name in wanted:
        values = ints[f'model.{name}.weight_quantized']
        if name in masked:
            assert _check_2to4(name, values, ops[name]), name
            assert (values == 0).mean() >= 0.5
    if task == 'cls':  # Swin: every quantized Linear runs as an integer
        # kernel after onnxruntime's graph optimization
        fused = res['fused_ops']
        n_int = fused.get('MatMulIntegerToFloat', 0) + fused.get(
            'QLinearMatMul', 0
        )
        linears = [n for n, op in ops.items() if op == 'MatMul']
        assert n_int == len(linears) > 0, fused
    # activations: QuantizeLinear -> DequantizeLinear pairs, int8
    q_nodes = [n for n in graph.graph.node if n.op_type == 'QuantizeLinear']
    assert q_nodes
    inits = {i.name: i for i in graph.graph.initializer}
    consts = {
        n.output[0]: n.attribute[0].t
        for n in graph.graph.node
        if n.op_type == 'Constant'
    }
    zp = q_nodes[0].input[2]
    tensor = inits.get(zp) or consts[zp]
    assert tensor.data_type == onnx.TensorProto.INT8


def test_sparse_student_exports_fp32(tmp_path):
    from onnx import numpy_helper

    model, res, graph = _export(tmp_path, 'cls', stage=1)
    assert res['mode'] == 'fp32' and res['passed']
    assert res['parity'][0]['cosine'] > 0.99999
    assert not integer_initializers(graph)
    assert not [n for n in graph.graph.node if 'Quantize' in n.op_type]
    # the 2:4 weights are FP32 initializers with their zeros
    inits = {i.name: i for i in graph.graph.initializer}
    masked = [
        n
        for n, m in model.named_modules()
        if bool(m._buffers.get('sparsity_mask_computed', False))
    ]
    assert masked
    for name in masked:
        w = numpy_helper.to_array(inits[f'model.{name}.weight'])
        assert w.dtype == np.float32 and (w == 0).mean() >= 0.5, name


def test_plain_dense_checkpoint_into_a_gpusq_config(
    tmp_path, dense_checkpoint
):
    # the dense teacher's own checkpoint (no mask / quantizer buffers)
    dense_cfg = CONFIGS['cls'].replace('_gpusq.py', '_dense.py')
    _, ckpt = dense_checkpoint(dense_cfg, str(tmp_path / 'dense.pth'))
    for config in (CONFIGS['cls'], dense_cfg):
        res = export_and_verify(
            config,
            ckpt,
            str(tmp_path / 'dense.onnx'),
            shape=SHAPE,
            log=_quiet,
        )
        assert res['mode'] == 'fp32' and res['passed']


def test_int4_student(tmp_path):
    from gpusq_mm.deploy import ort_supports_int4

    opts = {'model.quantization.w_bits': 4}
    ok, why = ort_supports_int4()
    if not ok:
        with pytest.raises(ExportError, match='INT4 weights cannot'):
            _export(tmp_path, 'cls', cfg_options=opts, load_options=opts)
        return
    _, res, graph = _export(
        tmp_path, 'cls', cfg_options=opts, load_options=opts
    )
    assert res['mode'] == 'int4' and res['opset'] >= 21 and res['passed']
    ints = integer_initializers(graph, bits=4)
    assert ints and not integer_initializers(graph, bits=8)
    assert all(v.min() >= -8 and v.max() <= 7 for v in ints.values())
    with pytest.raises(ValueError, match='opset >= 21'):
        export_and_verify(
            CONFIGS['cls'],
            str(tmp_path / 'cls_s2.pth'),
            str(tmp_path / 'x.onnx'),
            shape=SHAPE,
            opset=17,
            cfg_options=opts,
            log=_quiet,
        )


def test_errors_name_the_problem(tmp_path):
    ckpt = str(tmp_path / 'det.pth')
    make_student('det', ckpt, stage=0)
    with pytest.raises(ValueError, match='full export of detectors'):
        export_and_verify(
            CONFIGS['det'],
            ckpt,
            str(tmp_path / 'd.onnx'),
            'full',
            SHAPE,
            log=_quiet,
        )
    # a checkpoint of another model
    with pytest.raises(KeyError, match='does not match'):
        load_student(CONFIGS['cls'], ckpt)
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        load_student(CONFIGS['cls'], str(tmp_path / 'missing.pth'))


@pytest.mark.slow
def test_tool_exit_status_and_progress(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location('_export_tool', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ckpt = str(tmp_path / 'cls.pth')
    make_student('cls', ckpt, stage=2)
    out = str(tmp_path / 'cls.onnx')
    args = [CONFIGS['cls'], ckpt, '--out', out, '--shape', '1x3x64x64']
    res = tool.main(args)
    text = capsys.readouterr().out
    for phase in ('[load]', '[trace]', '[verify]', '[run]'):
        assert phase in text, text
    assert f'{res["file_bytes"] / 2**20:.2f} MB' in text
    # an impossible tolerance: exit status 1 and a one-line reason
    with pytest.raises(SystemExit) as exc:
        tool.main(args + ['--tolerance', '1.5'])
    assert exc.value.code == 1
    assert 'parity below tolerance' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(args[:-1] + ['1x3x64'])
    # the printed onnxruntime command runs the file
    import subprocess
    import sys

    cmd = res['command'].replace('python -c ', '', 1)
    assert cmd.startswith('"') and cmd.endswith('"')
    proc = subprocess.run(
        [sys.executable, '-c', cmd[1:-1]], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert '(1, 6)' in proc.stdout


def test_activation_bits_other_than_8_are_refused(tmp_path):
    opts = {'model.quantization.a_bits': 6}
    with pytest.raises(ValueError, match='6-bit activations cannot'):
        _export(tmp_path, 'cls', cfg_options=opts, load_options=opts)
    assert torch.__version__  # torch imported for the helpers


def test_export_and_measure_for_the_demo(tmp_path):
    from gpusq_mm.deploy import export_and_measure

    ckpt = str(tmp_path / 'cls.pth')
    make_student('cls', ckpt, stage=2)
    res = export_and_measure(
        CONFIGS['cls'], ckpt, str(tmp_path), shape=SHAPE, runs=2, log=_quiet
    )
    # the file as written computes the model; onnxruntime's fused
    # integer kernels do too, where they do not saturate
    assert res['mode'] == 'int8' and res['graph_cosine'] > 0.999
    assert res['kernels_saturate'] == int8_kernels_saturate()
    assert res['kernels_saturate'] or res['cosine'] > 0.999
    assert res['fp32_file_mb'] == pytest.approx(
        osp.getsize(tmp_path / 'fp32.onnx') / 2**20
    )
    assert res['file_mb'] == pytest.approx(
        osp.getsize(tmp_path / 'quant.onnx') / 2**20
    )
    assert res['size_ratio'] < 0.4  # int8 weights, FP32 norms / embedding
    assert res['ort_latency_ms'] > 0 and res['fp32_ort_latency_ms'] > 0
    # the onnxruntime-only copy, timed in the same interleaved rounds
    assert res['ort_opt_file_mb'] == pytest.approx(
        osp.getsize(tmp_path / 'ort_opt.onnx') / 2**20
    )
    assert res['ort_opt_latency_ms'] > 0
    assert res['ort_opt_speedup'] == pytest.approx(
        res['fp32_ort_latency_ms'] / res['ort_opt_latency_ms']
    )
    assert res['fused_ops'].get('MatMulIntegerToFloat', 0) > 0
    # its default activation type: uint8, zero point 128 (the int8 grid)
    from onnx import numpy_helper

    graph = onnx.load(str(tmp_path / 'quant.onnx')).graph
    values = {i.name: i for i in graph.initializer}
    values.update(
        {
            n.output[0]: n.attribute[0].t
            for n in graph.node
            if n.op_type == 'Constant'
        }
    )
    zps = [
        numpy_helper.to_array(values[n.input[2]])
        for n in graph.node
        if n.op_type == 'QuantizeLinear'
    ]
    assert zps and all(z.dtype == np.uint8 and z == 128 for z in zps)


def test_attention_quantizers_export_as_qdq(tmp_path):
    opts = {'model.quantization.quantize_attention': True}
    model, res, graph = _export(
        tmp_path, 'cls', cfg_options=opts, load_options=opts
    )
    assert res['passed'] and res['parity'][0]['cosine'] > 0.9999
    n_attn = sum(1 for n, _ in model.named_modules() if n.endswith('w_msa'))
    q_nodes = [n for n in graph.graph.node if n.op_type == 'QuantizeLinear']
    # one per quantized layer input, plus q, k, v and the softmax output
    # of every window attention
    assert len(q_nodes) == len(res['quantized_layers']) + 4 * n_attn
    assert n_attn > 0
    # the Q/DQ sit right at q @ k^T and attn @ v: onnxruntime runs both
    # as integer matmuls, no FP32 MatMul is left in the optimized graph
    ops = fused_ops(str(tmp_path / 'cls_s2.onnx'))
    linears = sum(op == 'MatMul' for op in res['quantized_layers'].values())
    integer = ops.get('QLinearMatMul', 0) + ops['MatMulIntegerToFloat']
    assert integer == linears + 2 * n_attn
    assert not {'MatMul', 'FusedMatMul'} & set(ops)


@pytest.mark.slow
def test_eval_onnx_on_the_generated_val_set(tmp_path, cls_cfg_options):
    from .test_report_trt import _tool

    ckpt = str(tmp_path / 'cls.pth')
    make_student('cls', ckpt, stage=2)
    out = str(tmp_path / 'cls.onnx')
    # the config's test pipeline resizes to its img_size (56)
    export_and_verify(
        CONFIGS['cls'], ckpt, out, shape=(1, 3, 56, 56), log=_quiet
    )
    tool = _tool('deploy', 'eval_onnx.py')
    res = tool.main(
        [CONFIGS['cls'], ckpt, out, '--cfg-options'] + cls_cfg_options
    )
    assert res['images'] == 12  # the generated val split
    assert res['agreement'] == 1.0
    assert res['onnx'] == res['torch']
    # a graph of another input shape is refused with the shape to use
    other = str(tmp_path / 'cls96.onnx')
    export_and_verify(
        CONFIGS['cls'], ckpt, other, shape=(1, 3, 96, 96), log=_quiet
    )
    with pytest.raises(SystemExit):
        tool.main(
            [CONFIGS['cls'], ckpt, other, '--cfg-options'] + cls_cfg_options
        )


@pytest.mark.slow
def test_eval_onnx_scores_a_segmentor(tmp_path, ade_cfg_options):
    from .test_report_trt import _tool

    ckpt = str(tmp_path / 'seg.pth')
    make_student('seg', ckpt, stage=2)
    out = str(tmp_path / 'seg.onnx')
    # UPerNet's pyramid pooling needs a side that is a multiple of 192;
    # the test images (<= 320 after the pipeline's resize) are padded
    export_and_verify(
        CONFIGS['seg'], ckpt, out, shape=(1, 3, 384, 384), log=_quiet
    )
    pad = ['model.architecture.data_preprocessor.test_cfg.size=384,384']
    tool = _tool('deploy', 'eval_onnx.py')
    args = [CONFIGS['seg'], ckpt, out, '--max-drop', '5', '--cfg-options']
    res = tool.main(args + ade_cfg_options + pad)
    # an untrained student's logits are near ties, so a few pixels flip
    # (the trained demo student scores the same mIoU in both)
    assert res['images'] > 0 and res['agreement'] > 0.97
    assert set(res['torch']) == {'aAcc', 'mIoU', 'mAcc'}
    for key, value in res['torch'].items():
        assert value > 0
        assert abs(res['onnx'][key] - value) <= 0.05 * value
    # without the padding the images reach the graph at their own size
    with pytest.raises(SystemExit):
        tool.main(
            [CONFIGS['seg'], ckpt, out, '--cfg-options'] + ade_cfg_options
        )


def test_int8_kernels_saturate_reads_the_cpu_flags(tmp_path):
    def cpu(flags):
        path = tmp_path / 'cpuinfo'
        path.write_text(f'processor\t: 0\nflags\t\t: {flags}\n\n')
        return str(path)

    assert int8_kernels_saturate(cpu('fpu sse2 avx avx2 fma'))
    assert not int8_kernels_saturate(cpu('avx2 avx512f avx512_vnni'))
    assert not int8_kernels_saturate(cpu('avx2 avx_vnni'))
    assert not int8_kernels_saturate(cpu('fp asimd'))  # not x86
    assert not int8_kernels_saturate(str(tmp_path / 'missing'))


@pytest.mark.parametrize('saturate', [True, False])
def test_kernel_drift_is_a_warning_only_where_kernels_saturate(
    tmp_path, monkeypatch, saturate
):
    """The as-written graph decides; an optimized run that drifts (as
    onnxruntime's integer kernels do on x86 AVX2 without VNNI) fails the
    check on other CPUs and is a named warning on those."""
    import gpusq_mm.deploy.api as api

    real = api.run_onnx

    def drifting(path, inputs, threads=None, optimize=True):
        outs = real(path, inputs, threads, optimize=optimize)
        if optimize:  # the fused kernels: a large error on every output
            rng = np.random.default_rng(0)
            outs = [o + rng.normal(0, 3 * o.std(), o.shape) for o in outs]
        return outs

    monkeypatch.setattr(api, 'run_onnx', drifting)
    monkeypatch.setattr(api, 'int8_kernels_saturate', lambda: saturate)
    ckpt = str(tmp_path / 'cls.pth')
    make_student('cls', ckpt, stage=2)
    lines = []
    res = export_and_verify(
        CONFIGS['cls'],
        ckpt,
        str(tmp_path / 'cls.onnx'),
        PART['cls'],
        SHAPE,
        log=lines.append,
    )
    assert min(r['cosine'] for r in res['parity']) > 0.999
    assert max(r['cosine'] for r in res['kernel_parity']) < 0.9
    assert res['kernels_saturate'] is saturate
    warnings = [x for x in lines if x.startswith('[verify] warning:')]
    if saturate:
        assert res['passed'] and res['failure'] is None
        assert 'AVX2 without VNNI' in res['kernel_note']
        assert len(warnings) == 1 and res['kernel_note'] in warnings[0]
    else:
        assert not res['passed'] and res['kernel_note'] is None
        assert 'with its graph optimizations' in res['failure']
        assert not warnings
