"""The onnxruntime-only optimized copy: biases folded, quantized Convs
rewritten, same outputs."""

import os.path as osp

import numpy as np
import onnx
import pytest

from gpusq_mm.deploy import export_and_verify, run_onnx
from gpusq_mm.deploy.ort_opt import (
    rewrite_quantized_convs,
    save_ort_optimized,
)
from gpusq_mm.quantization import quantized_layers

from .helpers import CONFIGS, PART, REPO_ROOT, SHAPES, make_student


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
    # Swin's patch embedding Conv is not quantized: no Conv to rewrite
    assert 'Conv' not in res['quantized_layers'].values()
    assert out['conv_rewritten'] == out['conv_kept'] == 0
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


# --- quantized Convs (the UPerNet decode head of the seg student) ---------


@pytest.fixture(scope='module')
def seg_exports(tmp_path_factory):
    """The tiny seg student (2:4 + INT8 QAT on), its QDQ exports with
    uint8 and int8 activations, the FP32-Conv copy and the PyTorch
    (fake-quant) outputs."""
    from gpusq_mm.deploy import export_onnx, make_input
    from gpusq_mm.deploy.api import reference_outputs

    tmp = tmp_path_factory.mktemp('seg')
    model = make_student('seg', str(tmp / 'seg.pth'), stage=2)
    x = make_input(model, SHAPES['seg'])
    quiet = lambda *a: None  # noqa: E731
    files = {}
    for act in ('uint8', 'int8'):
        res = export_onnx(
            model,
            x,
            str(tmp / f'{act}.onnx'),
            PART['seg'],
            act_dtype=act,
            log=quiet,
        )
        files[act] = res['path']
    convs = [n for n, op in res['quantized_layers'].items() if op == 'Conv']
    keep = str(tmp / 'keep.onnx')
    kept = save_ort_optimized(files['uint8'], keep, conv='keep')
    return dict(
        tmp=tmp,
        files=files,
        convs=convs,
        keep=keep,
        kept=kept,
        x=x.numpy(),
        ref=reference_outputs(model, x, PART['seg']),
    )


def _conv_on_dequantized_weight(model: onnx.ModelProto) -> list:
    producer = {o: n for n in model.graph.node for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == 'Conv'
        and n.input[1] in producer
        and producer[n.input[1]].op_type == 'DequantizeLinear'
    ]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_keep_counts_the_quantized_convs(seg_exports):
    n = len(seg_exports['convs'])
    assert n > 0  # UPerNet's lateral / fpn / psp / bottleneck convs
    kept = seg_exports['kept']
    assert kept['conv_kept'] == n and kept['conv_rewritten'] == 0
    assert kept['bn_folded'] == 0 and kept['conv_mode'] == 'keep'
    # what onnxruntime leaves without the rewrite: FP32 Convs that
    # dequantize their weight at every run, each followed by a BN
    graph = onnx.load(seg_exports['keep'])
    assert len(_conv_on_dequantized_weight(graph)) == n
    assert _ops(graph)['BatchNormalization'] == n


@pytest.mark.parametrize('mode', ['float', 'integer'])
def test_quantized_convs_rewritten(seg_exports, mode):
    """No FP32 Conv on a dequantized weight is left, attributes kept; the
    outputs are the QDQ file's in onnxruntime (cosine >= 0.99999 and at
    least 99 % of the values within 1e-4 * max |output|: the BN folding
    changes float roundings, which may flip a later QuantizeLinear by one
    step) and match PyTorch's fake-quant forward as well as the QDQ file
    does (cosine within 1e-5)."""
    from gpusq_mm.deploy import parity, run_onnx

    src = seg_exports['files']['uint8']
    n = len(seg_exports['convs'])
    dst = str(seg_exports['tmp'] / f'{mode}.onnx')
    out = save_ort_optimized(src, dst, conv=mode)
    assert out['conv_mode'] == mode
    assert out['conv_rewritten'] == n and out['conv_kept'] == 0
    assert out['bn_folded'] == n  # every ConvModule: conv -> BN -> ReLU
    assert out['folded_bias'] == seg_exports['kept']['folded_bias'] > 0
    graph = onnx.load(dst)
    ops = _ops(graph)
    assert _conv_on_dequantized_weight(graph) == []
    assert 'BatchNormalization' not in ops
    keep = onnx.load(seg_exports['keep'])
    quantized = set(_conv_on_dequantized_weight(keep))
    before = {
        n.name: _attrs(n) for n in keep.graph.node if n.name in quantized
    }
    if mode == 'integer':
        nodes = [n for n in graph.graph.node if n.op_type == 'ConvInteger']
        assert len(nodes) == n
        names = [n.name[: -len('_integer')] for n in nodes]
        # the activations stay integers: the input's DequantizeLinear goes
        assert ops.get('DequantizeLinear', 0) <= (
            _ops(onnx.load(seg_exports['keep']))['DequantizeLinear'] - 2 * n
        )
    else:
        nodes = [n for n in graph.graph.node if n.name in before]
        names = [n.name for n in nodes]
        assert all(n.op_type == 'Conv' for n in nodes)
    assert len(set(names)) == n and set(names) <= set(before)
    for node, name in zip(nodes, names):  # strides, pads, dilations, group
        assert _attrs(node) == before[name]
    x = seg_exports['x']
    a, b = run_onnx(src, x), run_onnx(dst, x)
    for qa, qb in zip(a, b):
        close = np.abs(qb - qa) <= 1e-4 * np.abs(qa).max()
        cos = min(r['cosine'] for r in parity([qa], [qb]))
        assert cos >= 0.99999 and close.mean() >= 0.99
    ref = seg_exports['ref']
    cos_qdq = min(r['cosine'] for r in parity(ref, a))
    cos_dst = min(r['cosine'] for r in parity(ref, b))
    assert cos_qdq >= 0.999 and cos_dst >= cos_qdq - 1e-5


def test_integer_convs_need_uint8_activations(seg_exports, tmp_path):
    """int8 activations (TensorRT's format): onnxruntime's fast
    ConvInteger takes uint8 only, so ``integer`` keeps (and counts) the
    Convs of the plain QDQ graph while ``float`` rewrites them all. The
    onnxruntime-optimized graph has its int8 Q/DQ pairs turned to uint8
    already, so ``save_ort_optimized`` rewrites all of them either way."""
    from gpusq_mm.deploy import parity, run_onnx

    src = seg_exports['files']['int8']
    n = len(seg_exports['convs'])
    model = onnx.load(src)
    res = rewrite_quantized_convs(model, 'integer')
    assert res == dict(conv_rewritten=0, conv_kept=n, bn_folded=0)
    assert len(_conv_on_dequantized_weight(model)) == n
    res = rewrite_quantized_convs(model, 'float')
    assert res['conv_rewritten'] == n and res['conv_kept'] == 0
    assert _conv_on_dequantized_weight(model) == []
    dst = str(tmp_path / 'i.onnx')
    out = save_ort_optimized(src, dst, conv='integer')
    assert out['conv_rewritten'] == n and out['conv_kept'] == 0
    x = seg_exports['x']
    rows = parity(run_onnx(src, x), run_onnx(dst, x))
    assert min(r['cosine'] for r in rows) >= 0.99999


def test_biased_convs_without_batch_norm(tmp_path):
    """The det student's FPN convs (bias, no BatchNorm): the bias moves
    into the rewritten Conv / the Add after ``ConvInteger``."""
    from gpusq_mm.deploy import export_onnx, make_input, parity

    model = make_student('det', str(tmp_path / 'det.pth'), stage=2)
    x = make_input(model, SHAPES['det'])
    res = export_onnx(
        model,
        x,
        str(tmp_path / 'det.onnx'),
        PART['det'],
        act_dtype='uint8',
        log=lambda *a: None,
    )
    n = sum(op == 'Conv' for op in res['quantized_layers'].values())
    assert n > 0
    feed = x.numpy()
    want = run_onnx(res['path'], feed)
    for mode in ('float', 'integer'):
        dst = str(tmp_path / f'{mode}.onnx')
        out = save_ort_optimized(res['path'], dst, conv=mode)
        assert out['conv_rewritten'] == n and out['conv_kept'] == 0
        assert out['bn_folded'] == 0
        assert _conv_on_dequantized_weight(onnx.load(dst)) == []
        rows = parity(want, run_onnx(dst, feed))
        assert min(r['cosine'] for r in rows) >= 0.99999


def test_export_tool_reports_the_rewritten_convs(seg_exports, capsys):
    from .test_report_trt import _tool

    n = len(seg_exports['convs'])
    dst = str(seg_exports['tmp'] / 'tool_ort.onnx')
    res = _tool('deploy', 'export_onnx.py')._ort_copy(
        seg_exports['files']['uint8'], dst, SHAPES['seg']
    )
    assert res['conv_mode'] == 'float' and res['conv_rewritten'] == n
    assert (
        f'{n} quantized Convs rewritten (float; {n} BatchNorms folded in, '
        '0 kept)' in capsys.readouterr().out
    )


def test_unknown_conv_mode_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="conv must be one of.*'fast'"):
        save_ort_optimized('missing.onnx', str(tmp_path / 'x'), conv='fast')
    assert not (tmp_path / 'x').exists()


BENCH_SECTION = 'Deploy: quantized Convs in the onnxruntime copy (seg)'


@pytest.mark.slow
def test_bench_seg_commands(seg_exports, tmp_path, monkeypatch):
    """The commands of bench/README.md's quantized-Conv section, run
    exactly as written (only the interpreter replaced) in a scratch folder
    holding ``work_dirs/demo/seg/gpusq.py`` (the demo seg config, dumped
    as the demo's Runner does) and ``student_final.pth`` (the tiny QAT
    student, no training)."""
    import importlib.util
    import re
    import sys

    from mmengine.config import Config
    from test_docs.commands import STARTS, _norm, _read, _section, argv_of

    section = _section(_read('bench/README.md'), BENCH_SECTION)
    spans = [_norm(span) for span in re.findall(r'`([^`]+)`', section)]
    commands = [span for span in spans if span.startswith(STARTS)]
    assert len(commands) == 2, commands
    work = tmp_path / 'work_dirs/demo/seg'
    (work / 'gpusq').mkdir(parents=True)
    Config.fromfile(CONFIGS['seg']).dump(str(work / 'gpusq.py'))
    make_student('seg', str(work / 'gpusq/student_final.pth'), stage=2)
    spec = importlib.util.spec_from_file_location(
        '_bench_deploy', osp.join(REPO_ROOT, 'bench', 'bench_deploy.py')
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.chdir(tmp_path)
    n = len(seg_exports['convs'])
    for command in commands:
        argv = argv_of(command)
        assert argv[:2] == [sys.executable, 'bench/bench_deploy.py']
        res = bench.main(argv[2:])
        assert set(res) == {
            'fp32',
            'qdq',
            'ort_keep',
            'ort_float',
            'ort_integer',
        }
        assert res['ort_keep']['counts']['conv_kept'] == n
        for key in ('ort_float', 'ort_integer'):
            assert res[key]['counts'] == dict(
                conv_rewritten=n, conv_kept=0, bn_folded=n
            )
        for row in res.values():
            assert row['ms'] > 0 and row['cosine'] >= 0.999
