"""Compression report of a checkpoint: markdown, JSON and a per-layer PNG.

    python tools/analysis/report.py CONFIG CHECKPOINT [--onnx FILE ...] \
        [--out DIR] [--shape 1x3xHxW] [--part full|backbone|backbone+neck]

Writes ``DIR/report.md``, ``DIR/report.json`` and ``DIR/report.png``
(per-layer compression and kept magnitude). Sizes of ``--onnx`` files are
measured; the deployable size (2:4 metadata counted) is computed and
labelled so. See :mod:`gpusq_mm.deploy.report`.
"""

import argparse
import json
import os
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from gpusq_mm.deploy import PARTS, load_student  # noqa: E402
from gpusq_mm.deploy.report import summarize  # noqa: E402


def _shape(text: str):
    shape = tuple(int(v) for v in text.lower().split('x'))
    if len(shape) != 4:
        raise argparse.ArgumentTypeError(f'--shape must be NxCxHxW: {text}')
    return shape


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--onnx', nargs='*', default=[], help='files')
    parser.add_argument('--out', default='work_dirs/report', help='folder')
    parser.add_argument('--shape', type=_shape, default=(1, 3, 224, 224))
    parser.add_argument('--part', choices=PARTS, default=None)
    return parser.parse_args(argv)


def _dims(shape) -> str:
    return 'x'.join(str(v) for v in shape)


def _mb(num: float) -> str:
    return f'{num / 2**20:.3f}'


def markdown(rep: dict, title: str) -> str:
    t = rep['totals']
    c = rep['computed_size']
    lines = [
        f'# Compression report: {title}',
        '',
        f'- parameters: {t["params"]:,}; Linear/Conv layers: '
        f'{t["linear_conv_layers"]}, masked: {t["masked_layers"]}, '
        f'2:4 (checked on the values): {t["sparse_2to4_layers"]}, '
        f'quantized: {t["quantized_layers"]}',
        f'- FLOPs ({t["flops_part"]}, input {_dims(t["flops_input"])}, '
        f'mmengine.analysis): {t["flops"]:,}',
        f'- deployable size (**computed**, {c["note"]}): '
        f'{_mb(c["deploy_bytes"])} MB vs {_mb(c["fp32_bytes"])} MB dense '
        f'FP32 ({c["ratio"]:.2f}x smaller)',
    ]
    for f in rep['measured_files']:
        lines.append(
            f'- **measured** `{f["path"]}`: file {_mb(f["file_bytes"])} MB; '
            f'{f["integer_initializers"]} integer initializers '
            f'{_mb(f["integer_initializer_bytes"])} MB, float initializers '
            f'{_mb(f["float_initializer_bytes"])} MB'
        )
    lines += [
        '',
        '| layer | type | shape | params | masked | 2:4 | kept |w| | '
        'W bits | A bits | computed bytes | compression |',
        '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ]
    for r in rep['layers']:
        kept = (
            '-'
            if r['kept_magnitude'] is None
            else f'{r["kept_magnitude"]:.4f}'
        )
        lines.append(
            f'| {r["name"]} | {r["type"]} | '
            f'{"x".join(map(str, r["shape"]))} | {r["params"]} | '
            f'{"yes" if r["masked"] else "no"} | '
            f'{"yes" if r["is_2to4"] else "no"} | {kept} | {r["w_bits"]} | '
            f'{r["a_bits"]} | {r["deploy_bytes"]:.0f} | '
            f'{r["compression"]:.2f}x |'
        )
    if rep['feature_kd']:
        lines += [
            '',
            'Feature KD (order of the distilled feature layers): stage-1 '
            'loss mean and the QAT weight factor',
            '',
            '| # | stage-1 loss | steps | QAT factor |',
            '| --- | --- | --- | --- |',
        ]
        for r in rep['feature_kd']:
            factor = '-' if r['factor'] is None else f'{r["factor"]:.4f}'
            lines.append(
                f'| {r["index"]} | {r["stage1_loss"]:.6g} | {r["count"]} | '
                f'{factor} |'
            )
    return '\n'.join(lines) + '\n'


def plot(rep: dict, path: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = rep['layers']
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * n), 4))
    colors = [
        'tab:green'
        if r['is_2to4'] and r['w_bits'] < 32
        else 'tab:blue'
        if r['is_2to4']
        else 'tab:orange'
        if r['w_bits'] < 32
        else 'tab:gray'
        for r in rows
    ]
    ax.bar(range(len(rows)), [r['compression'] for r in rows], color=colors)
    ax.set_ylabel('FP32 bytes / computed deploy bytes')
    ax.set_xlabel('Linear / Conv layer (model order)')
    ax.set_title(
        'per-layer compression (green 2:4+int, blue 2:4, orange int, '
        'gray dense)',
        fontsize=9,
    )
    kept = [r['kept_magnitude'] for r in rows]
    ax2 = ax.twinx()
    ax2.plot(
        range(len(rows)),
        [k if k is not None else float('nan') for k in kept],
        'k.',
        ms=3,
    )
    ax2.set_ylabel('kept |w| of a magnitude 2:4 mask')
    ax2.set_ylim(0, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from mmengine.runner.checkpoint import _load_checkpoint

    try:
        model, _ = load_student(args.config, args.checkpoint)
    except (FileNotFoundError, KeyError) as e:
        print(f'report: error: {e}', file=sys.stderr)
        raise SystemExit(1)
    for f in args.onnx:
        if not osp.isfile(f):
            print(f'report: error: no such ONNX file: {f}', file=sys.stderr)
            raise SystemExit(1)
    ckpt = _load_checkpoint(args.checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt)
    from gpusq_mm.deploy import model_family

    part = args.part or (
        'backbone+neck' if model_family(model) == 'detector' else 'full'
    )
    rep = summarize(model, state, args.onnx, args.shape, part)
    os.makedirs(args.out, exist_ok=True)
    paths = {k: osp.join(args.out, f'report.{k}') for k in ('md', 'json')}
    with open(paths['json'], 'w') as f:
        json.dump(rep, f, indent=1)
    with open(paths['md'], 'w') as f:
        f.write(markdown(rep, f'{args.config} / {args.checkpoint}'))
    plot(rep, osp.join(args.out, 'report.png'))
    t, c = rep['totals'], rep['computed_size']
    print(
        f'{t["linear_conv_layers"]} layers, {t["sparse_2to4_layers"]} 2:4, '
        f'{t["quantized_layers"]} quantized; computed deploy size '
        f'{_mb(c["deploy_bytes"])} MB ({c["ratio"]:.2f}x smaller than FP32)'
    )
    print(f'report written to {args.out}/report.md, .json, .png')
    return rep


if __name__ == '__main__':
    main()
