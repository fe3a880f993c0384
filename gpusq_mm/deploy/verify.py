"""Run an exported graph in onnxruntime: parity, fused ops, latency.

- :func:`parity`: max abs error and cosine similarity of each output
  against the PyTorch (fake-quant) forward;
- :func:`fused_ops`: the op counts of onnxruntime's optimized CPU graph
  (``SessionOptions.optimized_model_filepath``): QLinearMatMul,
  MatMulIntegerToFloat, QLinearConv ... show that the integer kernels run,
  rather than FP32 ops between Q/DQ pairs;
- :func:`ort_latency_ms`: median latency of ``session.run``;
- :func:`int8_kernels_saturate`: whether this CPU's onnxruntime integer
  kernels lose precision (x86 AVX2 without VNNI).

Two ways to run a QDQ file: unoptimized (``optimize=False``), every
QuantizeLinear / DequantizeLinear runs as written and the float ops between
them in FP32: the file's meaning, what TensorRT builds its INT8 engine
from; optimized (the default), onnxruntime fuses the Q/DQ pairs into its
integer kernels: what a user's onnxruntime deployment computes.
"""

import os
import os.path as osp
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    'FUSED_OPS',
    'fused_ops',
    'int8_kernels_saturate',
    'ort_latencies_ms',
    'ort_latency_ms',
    'ort_session',
    'ort_supports_int4',
    'parity',
    'run_onnx',
]

#: onnxruntime's integer kernels that a QDQ MatMul / Conv is fused into.
FUSED_OPS = (
    'QLinearMatMul',
    'QLinearConv',
    'MatMulInteger',
    'MatMulIntegerToFloat',
    'ConvInteger',
    'MatMulNBits',
    'QGemm',
)


def int8_kernels_saturate(cpuinfo: str = '/proc/cpuinfo') -> bool:
    """Whether onnxruntime's u8 x s8 integer kernels saturate here.

    On x86 CPUs with AVX2 but no VNNI (no AVX512-VNNI, AVX-VNNI or AMX),
    onnxruntime's integer matmul adds pairs of u8 x s8 products in 16-bit
    registers (``vpmaddubsw``), which saturate: the optimized session of a
    QDQ file then drifts from the file's meaning (measured on an AMD EPYC
    with AVX2 only: cosine 0.948 between the optimized and the
    unoptimized session of one INT8 classifier). False where the flags
    cannot be read or the CPU is not such an x86 one.
    """
    try:
        with open(cpuinfo) as f:
            flags = set()
            for line in f:
                if line.startswith('flags'):
                    flags.update(line.split(':', 1)[1].split())
    except OSError:
        return False
    if 'avx2' not in flags:
        return False
    return not flags & {'avx512_vnni', 'avx_vnni', 'amx_int8'}


def ort_session(
    path: str,
    threads: Optional[int] = None,
    optimized_path: str = None,
    spin: bool = True,
    optimize: bool = True,
):
    """An onnxruntime CPU session (all graph optimizations on).

    ``optimize=False``: no graph optimization at all, so the Q/DQ pairs of
    a quantized file are not fused into integer kernels (the file's own
    semantics, see the module docstring).

    ``spin=False``: the intra-op threads block instead of spin-waiting
    between runs. Use it when several sessions are timed in one process:
    each session has its own thread pool, and the idle sessions' spinning
    threads take the cores from the one being timed (measured: 2-3x the
    latency of small models with three sessions on 2 cores).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = (
        level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    )
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    opts.log_severity_level = 3
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])


def run_onnx(
    path: str, inputs: np.ndarray, threads: int = None, optimize: bool = True
):
    """Outputs of the graph at ``path`` on ``inputs`` (list of arrays);
    ``optimize``: see :func:`ort_session`."""
    sess = ort_session(path, threads, optimize=optimize)
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: inputs})


def parity(
    reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]
) -> List[Dict[str, float]]:
    """Per output: ``max_abs``, ``ref_max_abs`` and ``cosine``."""
    if len(reference) != len(outputs):
        raise ValueError(
            f'{len(outputs)} outputs for {len(reference)} reference ones'
        )
    rows = []
    for ref, out in zip(reference, outputs):
        ref = np.asarray(ref, np.float64).reshape(-1)
        out = np.asarray(out, np.float64).reshape(-1)
        if ref.shape != out.shape:
            raise ValueError(f'output of {out.size} values, {ref.size} ref')
        denom = np.linalg.norm(ref) * np.linalg.norm(out)
        cos = (
            float(ref @ out / denom)
            if denom > 0
            else float(np.array_equal(ref, out))
        )
        if not np.all(np.isfinite(out)):
            cos = float('nan')
        rows.append(
            dict(
                max_abs=float(np.abs(ref - out).max()),
                ref_max_abs=float(np.abs(ref).max()),
                cosine=cos,
            )
        )
    return rows


def fused_ops(path: str, threads: int = 1) -> Dict[str, int]:
    """Op counts of onnxruntime's optimized graph of ``path``."""
    import onnx

    from .qdq import count_ops

    with tempfile.TemporaryDirectory() as tmp:
        opt = osp.join(tmp, 'optimized.onnx')
        ort_session(path, threads, optimized_path=opt)
        counts = count_ops(onnx.load(opt, load_external_data=False))
    return {k.split(':')[-1]: v for k, v in counts.items()}


def ort_latency_ms(
    path: str,
    inputs: np.ndarray,
    threads: int = 2,
    warmup: int = 3,
    runs: int = 10,
) -> float:
    """Median wall time (ms) of one ``session.run`` on ``inputs``."""
    sess = ort_session(path, threads)
    feed = {sess.get_inputs()[0].name: inputs}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def ort_latencies_ms(
    paths: Sequence[str],
    inputs: np.ndarray,
    threads: int = 2,
    warmup: int = 3,
    runs: int = 10,
) -> List[float]:
    """Median wall time (ms) of one ``session.run`` of each file, timed in
    interleaved rounds (each round runs every file once), so that a noisy
    machine slows them alike and their ratios stay meaningful. The
    sessions do not spin-wait (``ort_session(spin=False)``): an idle
    session's spinning pool would slow the one being timed."""
    sessions = [ort_session(p, threads, spin=False) for p in paths]
    feeds = [{s.get_inputs()[0].name: inputs} for s in sessions]
    for _ in range(warmup):
        for sess, feed in zip(sessions, feeds):
            sess.run(None, feed)
    times: List[List[float]] = [[] for _ in paths]
    for _ in range(runs):
        for i, (sess, feed) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            sess.run(None, feed)
            times[i].append(time.perf_counter() - start)
    return [float(np.median(t) * 1e3) for t in times]


def op_profile(
    path: str, inputs: np.ndarray, threads: int = 2, runs: int = 5
) -> Dict[str, Tuple[float, int]]:
    """Kernel time per operator type of the optimized graph at ``path``.

    onnxruntime's profiler over ``runs`` runs after one warm-up run (left
    out of the numbers).

    Returns:
        dict: op type -> (milliseconds per run, nodes of that type), the
        most expensive first.
    """
    import json

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = osp.join(tmp, 'profile')
        sess = ort.InferenceSession(
            path, opts, providers=['CPUExecutionProvider']
        )
        feed = {sess.get_inputs()[0].name: inputs}
        for _ in range(runs + 1):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    model_runs = sorted(
        (e for e in events if e.get('name') == 'model_run'),
        key=lambda e: e['ts'],
    )
    if len(model_runs) != runs + 1:
        raise RuntimeError(
            f'onnxruntime profile of {path}: {len(model_runs)} runs '
            f'recorded, expected {runs + 1}'
        )
    warm_end = model_runs[0]['ts'] + model_runs[0]['dur']
    total: Dict[str, float] = {}
    nodes: Dict[str, set] = {}
    for e in events:
        if e.get('cat') != 'Node' or not e['name'].endswith('_kernel_time'):
            continue
        if e['ts'] < warm_end:
            continue
        op = e['args']['op_name']
        total[op] = total.get(op, 0.0) + e['dur'] / 1e3 / runs
        nodes.setdefault(op, set()).add(e['name'])
    return {
        op: (ms, len(nodes[op]))
        for op, ms in sorted(total.items(), key=lambda kv: -kv[1])
    }


def ort_supports_int4() -> Tuple[bool, str]:
    """Whether onnxruntime runs a per-axis INT4 DequantizeLinear + MatMul.

    Returns:
        tuple[bool, str]: the answer and, when False, why.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    w = helper.make_tensor('w', TensorProto.INT4, [4, 2], [1, -2, 3, -4] * 2)
    s = helper.make_tensor('s', TensorProto.FLOAT, [2], [0.5, 0.25])
    z = helper.make_tensor('z', TensorProto.INT4, [2], [0, 0])
    graph = helper.make_graph(
        [
            helper.make_node(
                'DequantizeLinear', ['w', 's', 'z'], ['wd'], axis=1
            ),
            helper.make_node('MatMul', ['x', 'wd'], ['y']),
        ],
        'int4_probe',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 2])],
        initializer=[w, s, z],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid('', 21)]
    )
    model.ir_version = min(model.ir_version, 10)
    fd, path = tempfile.mkstemp(suffix='.onnx')
    os.close(fd)
    try:
        onnx.save(model, path)
        out = run_onnx(path, np.ones((1, 4), np.float32))[0]
    except Exception as e:  # the runtime's own words
        return False, (
            f'onnxruntime {ort.__version__} cannot run INT4 '
            f'DequantizeLinear ({str(e).splitlines()[0][:160]})'
        )
    finally:
        os.remove(path)
    expect = np.array([[(1 + 3 + 1 + 3) * 0.5, (-2 - 4 - 2 - 4) * 0.25]])
    if not np.allclose(out, expect):
        return False, f'onnxruntime {ort.__version__} computes INT4 wrongly'
    return True, ''
