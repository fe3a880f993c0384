"""Score an exported classifier / segmentor on its test set next to PyTorch.

    python tools/deploy/eval_onnx.py CONFIG CHECKPOINT MODEL.onnx \
        [--max-drop 0.5] [--cfg-options key=value ...]

Runs the test set through the PyTorch (fake-quant) student and the ONNX
graph in onnxruntime, prints both metrics and how many predictions agree,
and exits with status 1 when a metric of the export is more than
``--max-drop`` percent (relative) below PyTorch's. Classifiers and
segmentors (top-1, mIoU, ... : the config's test evaluator).
"""

import argparse
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from gpusq_mm.deploy.evaluate import evaluate_export  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('onnx')
    parser.add_argument(
        '--max-drop',
        type=float,
        default=0.5,
        help='largest relative drop (%%) of a metric (default 0.5)',
    )
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='key=value'
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        res = evaluate_export(
            args.config, args.checkpoint, args.onnx, args.cfg_options
        )
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f'eval_onnx: error: {e}', file=sys.stderr)
        raise SystemExit(1)
    worse = []
    for key, ref in res['torch'].items():
        got = res['onnx'][key]
        print(f'{key}: PyTorch {ref:.4f}, onnxruntime {got:.4f}')
        if got < ref * (1 - args.max_drop / 100):
            worse.append(key)
    print(f'{res["images"]} images, {res["agreement"]:.2%} same prediction')
    if worse:
        print(
            f'eval_onnx: error: {worse} more than {args.max_drop} % below '
            'PyTorch',
            file=sys.stderr,
        )
        raise SystemExit(1)
    return res


if __name__ == '__main__':
    main()
