"""Build a TensorRT INT8 + 2:4 sparse engine from an exported ONNX file.

    python tools/deploy/build_trt.py model.onnx [--out model.engine] \
        [--baseline fp32.onnx]

Needs the ``tensorrt`` package and a CUDA GPU with sparse Tensor Cores
(Ampere or newer); elsewhere it prints one line saying what is missing and
exits with status 2. With them, it builds the INT8 engine with sparse
weights, prints TensorRT's lines about the layers that got sparse kernels
and its latency, and with ``--baseline`` (the FP32 export of the same
model, ``export_onnx.py --fp32``) the latency of its dense FP16 engine.
"""

import argparse
import os.path as osp
import sys
import warnings

# the no-GPU answer is one line: keep import-time deprecation notices of
# the stack out of it
warnings.simplefilter('ignore', FutureWarning)

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from gpusq_mm.deploy.trt import (  # noqa: E402
    build_engine,
    tensorrt_unavailable,
    time_engine,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('onnx', help='the exported .onnx file')
    parser.add_argument(
        '--out', help='engine file (default: the .onnx with .engine)'
    )
    parser.add_argument(
        '--baseline', help='FP32 export: its dense FP16 engine is timed too'
    )
    parser.add_argument('--runs', type=int, default=100, help='timed runs')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not osp.isfile(args.onnx):
        print(f'build_trt: no such file: {args.onnx}', file=sys.stderr)
        raise SystemExit(1)
    reason = tensorrt_unavailable()
    if reason is not None:
        print(f'build_trt: cannot build a TensorRT engine here: {reason}')
        raise SystemExit(2)
    out = args.out or osp.splitext(args.onnx)[0] + '.engine'
    sparse = build_engine(args.onnx, int8_sparse=True)
    with open(out, 'wb') as f:
        f.write(sparse['engine'])
    for line in sparse['sparse_log']:
        print(f'[sparse] {line}')
    sparse_ms = time_engine(sparse['engine'], args.runs)
    print(f'INT8 + 2:4 engine {out}: {sparse_ms:.3f} ms')
    result = dict(engine=out, int8_sparse_ms=sparse_ms, fp16_ms=None)
    if args.baseline:
        dense = build_engine(args.baseline, int8_sparse=False)
        dense_ms = time_engine(dense['engine'], args.runs)
        result['fp16_ms'] = dense_ms
        print(
            f'dense FP16 engine of {args.baseline}: {dense_ms:.3f} ms '
            f'({dense_ms / sparse_ms:.2f}x slower than INT8 + 2:4)'
        )
    return result


if __name__ == '__main__':
    main()
