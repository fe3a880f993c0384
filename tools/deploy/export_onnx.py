"""Export a GPUSQ student (any stage) to ONNX and check it in onnxruntime.

    python tools/deploy/export_onnx.py CONFIG CHECKPOINT --out model.onnx \
        [--part full|backbone|backbone+neck|backbone+neck+encoder] \
        [--shape 1x3xHxW] [--opset N] [--tolerance 0.999] [--fp32] \
        [--act-dtype int8|uint8]

A QAT student exports with QuantizeLinear / DequantizeLinear activations
and integer (INT8, or INT4 where onnxruntime runs it) weight initializers
with per-output-channel scales, 2:4 zeros exact; a dense or 2:4-only
student (or ``--fp32``) exports as FP32. The graph then runs in
onnxruntime on a generated input, as written (no graph optimization) and
optimized (the fused integer kernels), and its outputs are compared with
the PyTorch (fake-quant) forward: the tool exits with status 1 when the
cosine similarity of any output is below ``--tolerance``. On x86 CPUs
with AVX2 but no VNNI, whose onnxruntime integer kernels saturate, only
the as-written run decides and the optimized one is a printed warning.

Parts: ``full`` (classifiers, segmentors), ``backbone``, ``backbone+neck``
(detectors: no proposals / RoIAlign / NMS) and ``backbone+neck+encoder``
(DETR-family detectors: the transformer encoder's memory, the input
unpadded; its levels' sizes are printed).
"""

import argparse
import os.path as osp
import sys
import time

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from gpusq_mm.deploy import (  # noqa: E402
    PARTS,
    ExportError,
    export_and_verify,
)


def parse_shape(text: str):
    """``'1x3x224x224'`` -> ``(1, 3, 224, 224)``."""
    try:
        shape = tuple(int(v) for v in text.lower().split('x'))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f'--shape must be NxCxHxW (e.g. 1x3x224x224), got {text!r}'
        )
    return shape


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the (gpusq) config file')
    parser.add_argument('checkpoint', help='student_final.pth or any ckpt')
    parser.add_argument('--out', required=True, help='the .onnx to write')
    parser.add_argument(
        '--part',
        choices=PARTS,
        default='full',
        help='exported part: full (classifiers, segmentors; default), '
        'backbone, backbone+neck (detectors) or backbone+neck+encoder '
        '(DETR / Deformable DETR / DINO: the encoder memory)',
    )
    parser.add_argument(
        '--shape',
        type=parse_shape,
        default=(1, 3, 224, 224),
        help='input shape NxCxHxW (fixed in the graph); default 1x3x224x224',
    )
    parser.add_argument(
        '--opset', type=int, help='ONNX opset (default 17; 21 for INT4)'
    )
    parser.add_argument(
        '--tolerance',
        type=float,
        default=0.999,
        help='minimum cosine similarity of every output with the PyTorch '
        'forward (default 0.999)',
    )
    parser.add_argument(
        '--fp32', action='store_true', help='export FP32 (quantizers off)'
    )
    parser.add_argument(
        '--act-dtype',
        choices=('int8', 'uint8'),
        default='int8',
        help='activation integers: int8 (TensorRT) or uint8 with zero '
        'point 128 (the same values; faster on onnxruntime CPU)',
    )
    parser.add_argument(
        '--ort-out',
        help='also write an onnxruntime-only copy: its optimized graph with '
        'the Linear biases folded into the integer kernels and the '
        'quantized Convs given constant (dequantized) weights (faster on '
        'onnxruntime CPU; keep --out for TensorRT)',
    )
    parser.add_argument('--seed', type=int, default=0, help='input seed')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='key=value'
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.time()
    try:
        result = export_and_verify(
            args.config,
            args.checkpoint,
            args.out,
            part=args.part,
            shape=args.shape,
            opset=args.opset,
            quantized=not args.fp32,
            act_dtype=args.act_dtype,
            tolerance=args.tolerance,
            seed=args.seed,
            cfg_options=args.cfg_options,
        )
    except (ExportError, FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f'export_onnx: error: {msg}', file=sys.stderr)
        raise SystemExit(1)
    if result['passed'] and args.ort_out:
        result['ort'] = _ort_copy(args.out, args.ort_out, args.shape)
    print(f'[done] {time.time() - start:.1f} s')
    if not result['passed']:
        print(f'export_onnx: error: {result["failure"]}', file=sys.stderr)
        raise SystemExit(1)
    return result


def _ort_copy(src: str, dst: str, shape) -> dict:
    import numpy as np

    from gpusq_mm.deploy import run_onnx
    from gpusq_mm.deploy.ort_opt import save_ort_optimized

    res = save_ort_optimized(src, dst)
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    diff = max(
        float(np.abs(a - b).max())
        for a, b in zip(run_onnx(src, x), run_onnx(dst, x))
    )
    convs = (
        f'{res["conv_rewritten"]} quantized Convs rewritten '
        f'({res["conv_mode"]}; {res["bn_folded"]} BatchNorms folded in, '
        f'{res["conv_kept"]} kept), '
        if res['conv_rewritten'] or res['conv_kept']
        else ''
    )
    print(
        f'[ort] {res["folded_bias"]} biases folded, {convs}'
        f'{res["file_bytes"] / 2**20:.2f} MB written to {dst} '
        f'(onnxruntime only; max abs diff to {src}: {diff:.2g})'
    )
    res['max_abs_diff'] = diff
    return res


if __name__ == '__main__':
    main()
