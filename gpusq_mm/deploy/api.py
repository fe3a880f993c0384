"""One-call export: load -> trace -> verify (the tool's and demo's entry).

- :func:`export_and_verify`: what ``tools/deploy/export_onnx.py`` runs,
  with a progress line per phase and the onnxruntime command to run the
  file;
- :func:`export_and_measure`: the FP32 and the quantized export of one
  checkpoint side by side (file sizes, onnxruntime latency, parity), for
  the demo's results and the benchmark.
"""

import os.path as osp
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from .export import ExportError, export_onnx
from .loading import load_student
from .parts import PartModule, make_input
from .verify import (
    FUSED_OPS,
    fused_ops,
    int8_kernels_saturate,
    ort_latencies_ms,
    ort_latency_ms,
    parity,
    run_onnx,
)

__all__ = ['ExportError', 'export_and_measure', 'export_and_verify']


def _mb(num_bytes: float) -> float:
    return num_bytes / 2**20


def run_command(path: str, shape: Sequence[int]) -> str:
    """A one-line shell command that runs ``path`` in onnxruntime."""
    dims = ', '.join(str(int(s)) for s in shape)
    return (
        'python -c "import numpy as np, onnxruntime as ort; '
        f"s = ort.InferenceSession('{path}'); "
        "print([o.shape for o in s.run(None, {'input': "
        f'np.zeros(({dims}), np.float32)}})])"'
    )


def reference_outputs(model, inputs: torch.Tensor, part: str):
    """The PyTorch (fake-quant) outputs of the exported part."""
    with torch.no_grad():
        outs = PartModule(model, part).eval()(inputs)
    return [o.detach().float().numpy() for o in outs]


def export_and_verify(
    config: str,
    checkpoint: str,
    out: str,
    part: str = 'full',
    shape: Sequence[int] = (1, 3, 224, 224),
    opset: Optional[int] = None,
    quantized: bool = True,
    act_dtype: str = 'int8',
    tolerance: float = 0.999,
    seed: int = 0,
    cfg_options: Optional[dict] = None,
    log: Callable[[str], None] = print,
) -> Dict:
    """Load a checkpoint, export it and check it in onnxruntime.

    Two checks, each against the PyTorch (fake-quant) forward:

    - the file: ``parity``, the file run with no graph optimization (its
      Q/DQ ops as written: what TensorRT builds from). Below
      ``tolerance``, the export is wrong and the check fails;
    - onnxruntime's integer kernels: ``kernel_parity``, the file run with
      all optimizations (the fused integer kernels a user's onnxruntime
      runs). Below ``tolerance`` it fails too, except on a CPU whose
      integer kernels saturate (:func:`~gpusq_mm.deploy.verify.
      int8_kernels_saturate`: x86 AVX2 without VNNI), where the file is
      right and the runtime is not: then ``kernel_note`` says so and the
      log warns that onnxruntime on this CPU is not an accurate INT8
      runtime for it.

    Args:
        config (str): the config file.
        checkpoint (str): the checkpoint (any stage).
        out (str): the ``.onnx`` to write.
        part (str): see :data:`gpusq_mm.deploy.PARTS`. Defaults to 'full'.
        shape (Sequence[int]): input ``N, C, H, W``.
        opset (int, optional): ONNX opset (default 17, 21 for INT4).
        quantized (bool): False: FP32 export. Defaults to True.
        act_dtype (str): ``'int8'`` or ``'uint8'``. Defaults to 'int8'.
        tolerance (float): minimum cosine similarity of every output.
            Defaults to 0.999.
        seed (int): seed of the generated input. Defaults to 0.
        cfg_options (dict, optional): config overrides.
        log (Callable): progress printer. Defaults to print.

    Returns:
        dict: :func:`~gpusq_mm.deploy.export.export_onnx`'s result plus
        ``parity`` and ``kernel_parity`` (per output),
        ``noise_floor_cosine`` (the PyTorch model against itself on a 1e-6
        relatively nudged input: how sensitive its roundings are),
        ``kernels_saturate``, ``kernel_note`` (None or the warning),
        ``passed``, ``failure`` (message or None), ``fused_ops``,
        ``command``.
    """
    start = time.time()
    model, _ = load_student(config, checkpoint, cfg_options)
    log(
        f'[load] {type(model).__name__} from {checkpoint} '
        f'({time.time() - start:.1f} s)'
    )
    inputs = make_input(model, shape, seed)
    start = time.time()
    result = export_onnx(
        model, inputs, out, part, opset, quantized, act_dtype, log=log
    )
    n_int = len(result['quantized_layers'])
    log(
        f'[trace] {result["mode"]}: {n_int} layers with integer weights, '
        f'{_mb(result["file_bytes"]):.2f} MB written to {out} '
        f'({time.time() - start:.1f} s)'
    )
    start = time.time()
    ref = reference_outputs(model, inputs, part)
    feed = inputs.numpy()
    rows = parity(ref, run_onnx(out, feed, optimize=False))
    kernel_rows = parity(ref, run_onnx(out, feed))
    worst = min(r['cosine'] for r in rows)
    kernel_worst = min(r['cosine'] for r in kernel_rows)
    # the fake-quant model's own sensitivity: a 1e-6 relative change of
    # the input flips a few roundings; deep random-weight models move as
    # much from that as from any runtime difference
    nudged = reference_outputs(model, inputs * (1 + 1e-6), part)
    floor = min(r['cosine'] for r in parity(ref, nudged))
    max_abs = max(r['max_abs'] for r in rows)
    fused = fused_ops(out)
    saturate = int8_kernels_saturate()
    kernel_ok = bool(kernel_worst >= tolerance)  # NaN fails
    note = None
    if not kernel_ok and saturate and result['mode'] != 'fp32':
        note = (
            f'onnxruntime integer kernels on this CPU: cosine '
            f'{kernel_worst:.6f} < {tolerance}. The CPU has AVX2 without '
            f'VNNI, where onnxruntime sums u8 x s8 products in saturating '
            f'16-bit registers: the file is right (unoptimized run: cosine '
            f'{worst:.6f}), onnxruntime on this CPU is not an accurate '
            f'INT8 runtime for it (use a VNNI CPU, or TensorRT)'
        )
    result.update(
        parity=rows,
        kernel_parity=kernel_rows,
        noise_floor_cosine=floor,
        kernels_saturate=saturate,
        kernel_note=note,
        fused_ops=fused,
        command=run_command(out, shape),
    )
    passed = bool(worst >= tolerance) and (kernel_ok or note is not None)
    result['passed'] = passed
    if passed:
        failure = None
    elif not worst >= tolerance:
        failure = (
            f'onnxruntime parity below tolerance: cosine {worst:.6f} < '
            f'{tolerance} (max abs error {max_abs:.4g}) with no graph '
            f'optimization: the exported graph does not compute the '
            f'model; the file is kept at {out} for inspection'
        )
    else:
        failure = (
            f'onnxruntime parity below tolerance: cosine '
            f'{kernel_worst:.6f} < {tolerance} with its graph optimizations '
            f'(the fused kernels; the graph as written: cosine '
            f'{worst:.6f}); the file is kept at {out} for inspection'
        )
    result['failure'] = failure
    integer_ops = {k: v for k, v in fused.items() if k in FUSED_OPS}
    log(
        f'[verify] onnxruntime vs PyTorch on a generated {tuple(shape)} '
        f'input: max abs err {max_abs:.4g}, cosine {worst:.6f} as written, '
        f'{kernel_worst:.6f} optimized '
        f'(tolerance {tolerance}; PyTorch vs itself on a 1e-6 nudged '
        f'input: cosine {floor:.6f}): {"ok" if passed else "FAILED"}; '
        f'integer kernels after optimization: {integer_ops or "none"} '
        f'({time.time() - start:.1f} s)'
    )
    if note:
        log(f'[verify] warning: {note}')
    log(f'[run] {result["command"]}')
    return result


def export_and_measure(
    config: str,
    checkpoint: str,
    out_dir: str,
    part: str = 'full',
    shape: Sequence[int] = (1, 3, 224, 224),
    threads: int = 2,
    runs: int = 10,
    act_dtype: str = 'uint8',
    cfg_options: Optional[dict] = None,
    log: Callable[[str], None] = print,
) -> Dict:
    """FP32 and quantized export of one checkpoint, measured side by side.

    For the demo's ``results.json`` (the deployed student's size and
    latency). The quantized export is skipped (``None`` values) for a
    student whose quantizers are off.

    Args:
        config (str): the config file.
        checkpoint (str): the checkpoint (any stage).
        out_dir (str): where ``fp32.onnx`` / ``quant.onnx`` are written.
        part (str): exported part. Defaults to 'full'.
        shape (Sequence[int]): input shape. Defaults to 1x3x224x224.
        threads (int): onnxruntime intra-op threads. Defaults to 2.
        runs (int): timed runs (median). Defaults to 10.
        act_dtype (str): activations of the quantized export. Defaults to
            'uint8' (onnxruntime CPU's fast path).
        cfg_options (dict, optional): config overrides.
        log (Callable): progress printer. Defaults to print.

    Returns:
        dict: ``fp32_file_mb``, ``fp32_ort_latency_ms``, ``file_mb``,
        ``ort_latency_ms`` (the quantized QDQ file, TensorRT's format;
        None when not quantized), ``ort_opt_file_mb`` /
        ``ort_opt_latency_ms`` (its onnxruntime-only copy,
        ``ort_opt.onnx``: see :func:`gpusq_mm.deploy.ort_opt
        .save_ort_optimized`), ``size_ratio``, ``speedup`` (FP32 / QDQ),
        ``ort_opt_speedup`` (FP32 / copy), ``cosine`` (quantized vs
        fake-quant PyTorch, onnxruntime's integer kernels: the worse of
        the two files), ``graph_cosine`` (the QDQ file with no graph
        optimization: the file's own semantics), ``kernels_saturate``
        (see :func:`~gpusq_mm.deploy.verify.int8_kernels_saturate`),
        ``mode``, ``fused_ops``. With a quantized
        student the three files are timed in interleaved rounds.
    """
    model, _ = load_student(config, checkpoint, cfg_options)
    inputs = make_input(model, shape)
    feed = inputs.numpy()
    fp32 = export_onnx(
        model,
        inputs,
        osp.join(out_dir, 'fp32.onnx'),
        part,
        quantized=False,
        log=log,
    )
    res = dict(
        part=part,
        shape=list(shape),
        threads=threads,
        fp32_file_mb=_mb(fp32['file_bytes']),
        fp32_ort_latency_ms=None,
        mode='fp32',
        file_mb=None,
        ort_latency_ms=None,
        ort_opt_file_mb=None,
        ort_opt_latency_ms=None,
        ort_opt_speedup=None,
        size_ratio=None,
        speedup=None,
        cosine=None,
        graph_cosine=None,
        kernels_saturate=None,
        fused_ops={},
    )
    quant = export_onnx(
        model,
        inputs,
        osp.join(out_dir, 'quant.onnx'),
        part,
        act_dtype=act_dtype,
        log=log,
    )
    if quant['mode'] == 'fp32':
        res['fp32_ort_latency_ms'] = ort_latency_ms(
            fp32['path'], feed, threads, runs=runs
        )
        return res
    from .ort_opt import save_ort_optimized

    opt = save_ort_optimized(quant['path'], osp.join(out_dir, 'ort_opt.onnx'))
    t_fp32, lat, t_opt = ort_latencies_ms(
        [fp32['path'], quant['path'], opt['path']], feed, threads, runs=runs
    )
    ref = reference_outputs(model, inputs, part)
    rows = parity(ref, run_onnx(quant['path'], feed))
    rows_opt = parity(ref, run_onnx(opt['path'], feed))
    rows_graph = parity(ref, run_onnx(quant['path'], feed, optimize=False))
    res.update(
        mode=quant['mode'],
        fp32_ort_latency_ms=t_fp32,
        file_mb=_mb(quant['file_bytes']),
        ort_latency_ms=lat,
        ort_opt_file_mb=_mb(opt['file_bytes']),
        ort_opt_latency_ms=t_opt,
        size_ratio=quant['file_bytes'] / fp32['file_bytes'],
        speedup=t_fp32 / lat,
        ort_opt_speedup=t_fp32 / t_opt,
        cosine=float(
            np.min(
                [r['cosine'] for r in rows] + [r['cosine'] for r in rows_opt]
            )
        ),
        graph_cosine=float(min(r['cosine'] for r in rows_graph)),
        kernels_saturate=int8_kernels_saturate(),
        fused_ops=fused_ops(quant['path']),
    )
    log(
        f'[measure] FP32 {res["fp32_file_mb"]:.2f} MB {t_fp32:.2f} ms; '
        f'{res["mode"]} {res["file_mb"]:.2f} MB {lat:.2f} ms '
        f'({res["speedup"]:.2f}x faster, {res["size_ratio"]:.3f}x size); '
        f'onnxruntime copy {res["ort_opt_file_mb"]:.2f} MB {t_opt:.2f} ms '
        f'({res["ort_opt_speedup"]:.2f}x)'
    )
    return res
