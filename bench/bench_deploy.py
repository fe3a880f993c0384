"""Deployed speed and size: FP32 vs our INT8 QDQ vs onnxruntime's own INT8.

    python bench/bench_deploy.py [--threads 2] [--runs 20] [--size 224]
    python bench/bench_deploy.py --no-gpu --seg CONFIG CHECKPOINT \
        [--seg-shape 1x3x192x192] [--threads 2] [--runs 20]

CPU part (always): a Swin-T backbone (mmpretrain, random weights, 2:4
masks from them, INT8 QAT quantizers calibrated on random images), batch
1, exported several ways and timed side by side in one process, two ways:

- steady state (``ms``, the headline): each file runs 5 times in a row
  and the last 3 are timed, as a deployed model serving alone runs
  (onnxruntime's default spin-waiting threads, warm caches); files
  alternate block by block, so a noisy machine slows them alike;
- interleaved (``ms_interleaved``): each round runs every file once; the
  sessions do not spin-wait (``ort_session(spin=False)``), else the idle
  sessions' threads take the cores from the one being timed.

The files:

- ``fp32``: the FP32 export (quantizers off);
- ``ours``: the QDQ export (INT8 2:4 weights, uint8 activations with zero
  point 128, onnxruntime's fast CPU path) and ``ours_s8`` (int8
  activations, TensorRT's format);
- ``ours_att``: ``ours`` with the window-attention matmuls quantized
  too (``quantize_attention=True``: q, k, v and the softmax output get
  calibrated per-tensor quantizers; onnxruntime fuses ``q @ k^T`` and
  ``attn @ v`` into ``QLinearMatMul``);
- ``ours_ort`` / ``ours_att_ort``: onnxruntime-only copies of those two
  (:func:`gpusq_mm.deploy.ort_opt.save_ort_optimized`: onnxruntime's
  optimized graph saved, the Linear biases folded into
  ``MatMulIntegerToFloat``);
- ``dynamic``: ``onnxruntime.quantization.quantize_dynamic`` of the FP32
  file (INT8 weights, activations quantized at run time).

Segmentor part (``--seg CONFIG CHECKPOINT``, instead of the Swin-T
part): a trained segmentor student (e.g. the demo's
``W/seg/gpusq.py W/seg/gpusq/student_final.pth``) exported FP32 and QDQ
(uint8 activations) at ``--seg-shape``, and the onnxruntime-only copies of
the QDQ file with its quantized Convs kept (``ort_keep``: dequantized
weight at every run, as before), weights dequantized into constants
(``ort_float``, the default of ``save_ort_optimized``) or rewritten to
``ConvInteger`` (``ort_integer``), timed the same way.

GPU part (only with CUDA): ``torch.sparse.to_sparse_semi_structured`` fp16
2:4 Linear vs dense at the Swin-T / Swin-B linear shapes (tokens of a 224²
image at batch 64), and a whole Swin-T backbone with 2:4 linears vs dense
fp16. Skipped with a one-line note without CUDA.
"""

import argparse
import os
import os.path as osp
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def swin_t_student(size: int, calib_batches: int = 2, attention: bool = False):
    """A calibrated, fake-quantized 2:4 Swin-T classifier (random weights).

    ``attention``: also quantize the window-attention matmul operands
    (``quantize_attention=True``).
    """
    from mmengine.registry import DefaultScope

    import gpusq_mm  # noqa: F401
    from gpusq_mm.quantization import calibrate, enable_fake_quant
    from gpusq_mm.registry import MODELS
    from gpusq_mm.sparsity import apply_masks, attach_masks, compute_masks

    torch.manual_seed(0)
    cfg = dict(
        type='ImageClassifier',
        backbone=dict(type='SwinTransformer', arch='tiny', img_size=size),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=1000, in_channels=768),
    )
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg)
    model.init_weights()
    model.eval()
    attach_masks(model)
    compute_masks(model)
    apply_masks(model)
    from gpusq_mm.quantization import quantize_model

    quantize_model(model, dict(quantize_attention=attention))
    batches = [torch.randn(1, 3, size, size) for _ in range(calib_batches)]
    calibrate(model, lambda b: model.backbone(b), batches)
    enable_fake_quant(model)
    return model


def cpu_part(args) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from gpusq_mm.deploy import export_onnx, make_input, parity, run_onnx
    from gpusq_mm.deploy.api import reference_outputs
    from gpusq_mm.deploy.ort_opt import save_ort_optimized
    from gpusq_mm.deploy.verify import fused_ops

    model = swin_t_student(args.size)
    attn_model = swin_t_student(args.size, attention=True)
    x = make_input(model, (1, 3, args.size, args.size))
    feed = x.numpy()
    tmp = tempfile.mkdtemp(prefix='bench_deploy_')
    files = {}
    quiet = lambda *a: None  # noqa: E731
    files['fp32'] = export_onnx(
        model,
        x,
        osp.join(tmp, 'fp32.onnx'),
        'backbone',
        quantized=False,
        log=quiet,
    )['path']
    files['ours'] = export_onnx(
        model,
        x,
        osp.join(tmp, 'ours.onnx'),
        'backbone',
        act_dtype='uint8',
        log=quiet,
    )['path']
    files['ours_s8'] = export_onnx(
        model,
        x,
        osp.join(tmp, 'ours_s8.onnx'),
        'backbone',
        act_dtype='int8',
        log=quiet,
    )['path']
    files['ours_att'] = export_onnx(
        attn_model,
        x,
        osp.join(tmp, 'ours_att.onnx'),
        'backbone',
        act_dtype='uint8',
        log=quiet,
    )['path']
    convs = {}
    for key in ('ours', 'ours_att'):  # onnxruntime-only copies
        ort_res = save_ort_optimized(
            files[key], osp.join(tmp, f'{key}_ort.onnx')
        )
        files[f'{key}_ort'] = ort_res['path']
        convs[f'{key}_ort'] = {
            k: ort_res[k] for k in ('conv_rewritten', 'conv_kept')
        }
    files['dynamic'] = osp.join(tmp, 'dynamic.onnx')
    quantize_dynamic(
        files['fp32'], files['dynamic'], weight_type=QuantType.QInt8
    )
    onnx.checker.check_model(files['dynamic'])
    ref = reference_outputs(model, x, 'backbone')
    ref_att = reference_outputs(attn_model, x, 'backbone')
    steady = time_steady(files, feed, args.threads, args.runs)
    times = time_interleaved(files, feed, args.threads, args.runs)
    if args.profile:
        print_profiles(files, feed, args.threads)
    res = {}
    for key, path in files.items():
        want = ref_att if key.startswith('ours_att') else ref
        cos = min(r['cosine'] for r in parity(want, run_onnx(path, feed)))
        res[key] = dict(
            ms=float(np.median(steady[key])),
            ms_interleaved=float(np.median(times[key])),
            mb=osp.getsize(path) / 2**20,
            cosine=cos,
            fused={
                k: v
                for k, v in fused_ops(path).items()
                if 'Integer' in k
                or k.startswith('Q')
                or 'Dynamic' in k
                or k in ('MatMul', 'FusedMatMul', 'Add')
            },
        )
        if key in convs:  # quantized Convs of the onnxruntime-only copy
            res[key]['fused'].update(convs[key])
    shutil.rmtree(tmp, ignore_errors=True)  # ~270 MB of .onnx files
    return res


def print_profiles(files: dict, feed, threads: int, top: int = 10) -> dict:
    """Print the onnxruntime profiler's kernel time per op type of each
    file (5 runs after a warm-up; the ``top`` most expensive types)."""
    from gpusq_mm.deploy.verify import op_profile

    profiles = {}
    for key, path in files.items():
        prof = op_profile(path, feed, threads, runs=5)
        profiles[key] = prof
        total = sum(ms for ms, _ in prof.values())
        ops = ', '.join(
            f'{op} {ms:.2f} ({n})' for op, (ms, n) in list(prof.items())[:top]
        )
        print(f'profile {key:12s} kernels {total:7.2f} ms: {ops}')
    return profiles


def time_interleaved(files: dict, feed, threads: int, runs: int) -> dict:
    """Per-run wall times (ms) of each file, one process, rounds
    interleaved (every file sees the same machine state), after 3 warm-up
    runs each."""
    from gpusq_mm.deploy.verify import ort_session

    sessions = {
        k: ort_session(p, threads, spin=False) for k, p in files.items()
    }
    for sess in sessions.values():  # warm up
        for _ in range(3):
            sess.run(None, {'input': feed})
    times = {k: [] for k in files}
    for _ in range(runs):  # interleaved: same machine state for all
        for key, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, {'input': feed})
            times[key].append((time.perf_counter() - start) * 1e3)
    return times


def time_steady(
    files: dict, feed, threads: int, runs: int, block: int = 5, timed: int = 3
) -> dict:
    """Per-run wall times (ms) of each file in steady state: ``block``
    runs in a row, the last ``timed`` of them timed (the file's weights
    and buffers warm in the caches, as when it serves alone); the files
    alternate block by block until each has ``runs`` timed runs."""
    from gpusq_mm.deploy.verify import ort_session

    sessions = {k: ort_session(p, threads) for k, p in files.items()}
    times = {k: [] for k in files}
    while min(len(t) for t in times.values()) < runs:
        for key, sess in sessions.items():
            for i in range(block):
                start = time.perf_counter()
                sess.run(None, {'input': feed})
                if i >= block - timed:
                    times[key].append((time.perf_counter() - start) * 1e3)
    return times


def seg_part(args) -> dict:
    """FP32 vs QDQ vs onnxruntime-only copies of a trained segmentor."""
    from gpusq_mm.deploy import (
        export_onnx,
        load_student,
        make_input,
        parity,
        run_onnx,
    )
    from gpusq_mm.deploy.api import reference_outputs
    from gpusq_mm.deploy.ort_opt import save_ort_optimized

    config, checkpoint = args.seg
    model, _ = load_student(config, checkpoint)
    x = make_input(model, args.seg_shape)
    feed = x.numpy()
    tmp = tempfile.mkdtemp(prefix='bench_deploy_seg_')
    quiet = lambda *a: None  # noqa: E731
    files = {}
    files['fp32'] = export_onnx(
        model,
        x,
        osp.join(tmp, 'fp32.onnx'),
        'full',
        quantized=False,
        log=quiet,
    )['path']
    qdq = export_onnx(
        model,
        x,
        osp.join(tmp, 'qdq.onnx'),
        'full',
        act_dtype='uint8',
        log=quiet,
    )
    if qdq['mode'] == 'fp32':
        raise SystemExit(
            f'bench_deploy: error: {checkpoint} has no quantizers on (not '
            'a QAT student): nothing to compare'
        )
    files['qdq'] = qdq['path']
    counts = {}
    for mode in ('keep', 'float', 'integer'):
        out = save_ort_optimized(
            files['qdq'], osp.join(tmp, f'ort_{mode}.onnx'), conv=mode
        )
        files[f'ort_{mode}'] = out['path']
        counts[f'ort_{mode}'] = {
            k: out[k] for k in ('conv_rewritten', 'conv_kept', 'bn_folded')
        }
    times = time_interleaved(files, feed, args.threads, args.runs)
    if args.profile:
        print_profiles(files, feed, args.threads)
    ref = reference_outputs(model, x, 'full')
    qdq_out = run_onnx(files['qdq'], feed)
    res = {}
    for key, path in files.items():
        outs = run_onnx(path, feed)
        res[key] = dict(
            ms=float(np.median(times[key])),
            mb=osp.getsize(path) / 2**20,
            cosine=min(r['cosine'] for r in parity(ref, outs)),
            vs_qdq=max(
                float(np.abs(a - b).max()) for a, b in zip(qdq_out, outs)
            ),
            counts=counts.get(key, {}),
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return res


def gpu_part() -> None:
    if not torch.cuda.is_available():
        print(
            'GPU part skipped: no CUDA device (to_sparse_semi_structured '
            'needs an Ampere or newer GPU)'
        )
        return
    from torch.sparse import to_sparse_semi_structured

    from gpusq_mm.sparsity import compute_2to4_mask

    def bench(fn, runs: int = 50) -> float:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / runs * 1e3

    # tokens of a 224² image at batch 64, per stage (56², 28², 14², 7²)
    shapes = {
        'swin-t': [(96, 56), (192, 28), (384, 14), (768, 7)],
        'swin-b': [(128, 56), (256, 28), (512, 14), (1024, 7)],
    }
    for arch, stages in shapes.items():
        for dim, side in stages:
            tokens = 64 * side * side
            for k, n in ((dim, 3 * dim), (dim, 4 * dim), (4 * dim, dim)):
                w = torch.randn(n, k, device='cuda', dtype=torch.half)
                w = w * compute_2to4_mask(w)
                x = torch.randn(tokens, k, device='cuda', dtype=torch.half)
                dense = bench(lambda: torch.nn.functional.linear(x, w))
                try:
                    ws = to_sparse_semi_structured(w)
                    sparse = bench(lambda: torch.nn.functional.linear(x, ws))
                except (RuntimeError, ValueError) as e:
                    print(f'{arch} linear {k} -> {n}: no 2:4 kernel ({e})')
                    continue
                print(
                    f'{arch} linear {tokens}x{k} -> {n}: dense '
                    f'{dense:.3f} ms, 2:4 {sparse:.3f} ms '
                    f'({dense / sparse:.2f}x)'
                )
    gpu_backbone(bench)


def gpu_backbone(bench, batch: int = 64) -> None:
    """Whole Swin-T backbone, fp16: 2:4 semi-structured Linears vs dense."""
    from mmengine.registry import DefaultScope
    from torch.sparse import to_sparse_semi_structured

    import gpusq_mm  # noqa: F401
    from gpusq_mm.registry import MODELS
    from gpusq_mm.sparsity import apply_masks, attach_masks, compute_masks

    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(type='SwinTransformer', arch='tiny'))
    attach_masks(model)
    compute_masks(model)
    apply_masks(model)
    model = model.half().cuda().eval()
    x = torch.randn(batch, 3, 224, 224, device='cuda', dtype=torch.half)
    with torch.no_grad():
        dense = bench(lambda: model(x), runs=20)
        done = skipped = 0
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            try:
                module.weight = torch.nn.Parameter(
                    to_sparse_semi_structured(module.weight), False
                )
                done += 1
            except (RuntimeError, ValueError):
                skipped += 1  # shapes the sparse kernels do not take
        sparse = bench(lambda: model(x), runs=20)
    print(
        f'swin-t backbone fp16 batch {batch}: dense {dense:.2f} ms, '
        f'{done} Linears 2:4 ({skipped} kept dense) {sparse:.2f} ms '
        f'({dense / sparse:.2f}x)'
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--runs', type=int, default=20)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--no-gpu', action='store_true')
    parser.add_argument(
        '--profile',
        action='store_true',
        help='also print the kernel time per op type of each file '
        "(onnxruntime's profiler, 5 runs)",
    )
    parser.add_argument(
        '--seg',
        nargs=2,
        metavar=('CONFIG', 'CHECKPOINT'),
        help='time this segmentor student instead of the Swin-T backbone',
    )
    parser.add_argument(
        '--seg-shape',
        default='1x3x192x192',
        help='input shape of --seg (default 1x3x192x192)',
    )
    args = parser.parse_args(argv)
    if args.seg:
        args.seg_shape = _shape(parser, args.seg_shape)
        if args.size != parser.get_default('size'):
            parser.error("--size is the Swin-T part's: use --seg-shape")
    elif args.seg_shape != parser.get_default('seg_shape'):
        parser.error('--seg-shape needs --seg')
    import onnxruntime

    if args.seg:
        res = seg_main(args, onnxruntime.__version__)
        if not args.no_gpu:
            gpu_part()
        return res

    print(
        f'{time.strftime("%Y-%m-%d %H:%M")} {platform.processor() or ""} '
        f'{platform.machine()}, onnxruntime {onnxruntime.__version__}, '
        f'torch {torch.__version__}, {args.threads} threads, '
        f'Swin-T backbone {args.size}², batch 1, {args.runs} runs each'
    )
    load = os.getloadavg()
    res = cpu_part(args)
    load = [max(a, b) for a, b in zip(load, os.getloadavg())]
    base = res['fp32']
    for key, row in res.items():
        print(
            f'{key:12s} {row["ms"]:8.2f} ms  {row["mb"]:7.2f} MB  '
            f'speed-up {base["ms"] / row["ms"]:.2f}x  size '
            f'{row["mb"] / base["mb"]:.3f}x  cosine vs fake-quant '
            f'{row["cosine"]:.5f}  {row["fused"]}'
        )
    print(
        'interleaved (no spin-wait): '
        + ', '.join(
            f'{key} {row["ms_interleaved"]:.1f} ms '
            f'{base["ms_interleaved"] / row["ms_interleaved"]:.2f}x'
            for key, row in res.items()
        )
    )
    cold = {key: row['ms_interleaved'] for key, row in res.items()}
    for key in ('ours', 'ours_att', 'ours_att_ort'):
        print(
            f'{key} vs dynamic: '
            f'{res["dynamic"]["ms"] / res[key]["ms"]:.2f}x faster '
            f'(interleaved: {cold["dynamic"] / cold[key]:.2f}x)'
        )
    print(
        'load average (1/5/15 min, max of start and end): '
        + ' '.join(f'{a:.2f}' for a in load)
    )
    if not args.no_gpu:
        gpu_part()
    return res


def _shape(parser, text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.lower().split('x'))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        parser.error(f'--seg-shape must be NxCxHxW, got {text!r}')
    return shape


def seg_main(args, ort_version: str) -> dict:
    print(
        f'{time.strftime("%Y-%m-%d %H:%M")} {platform.processor() or ""} '
        f'{platform.machine()}, onnxruntime {ort_version}, torch '
        f'{torch.__version__}, {args.threads} threads, segmentor '
        f'{args.seg[1]} at {"x".join(map(str, args.seg_shape))}, '
        f'{args.runs} runs each'
    )
    load = os.getloadavg()
    res = seg_part(args)
    load = [max(a, b) for a, b in zip(load, os.getloadavg())]
    base = res['fp32']
    for key, row in res.items():
        print(
            f'{key:12s} {row["ms"]:8.2f} ms  {row["mb"]:6.2f} MB  '
            f'speed-up {base["ms"] / row["ms"]:.2f}x  cosine vs fake-quant '
            f'{row["cosine"]:.6f}  max abs diff vs qdq {row["vs_qdq"]:.3g}  '
            f'{row["counts"]}'
        )
    print(
        'load average (1/5/15 min, max of start and end): '
        + ' '.join(f'{a:.2f}' for a in load)
    )
    return res


if __name__ == '__main__':
    main()
