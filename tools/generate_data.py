"""Generate the small demo datasets (COCO / ADE20K / class-folder layout).

    python tools/generate_data.py --out data/gpusq_demo
    python tools/generate_data.py --out DIR --tasks det --num-train 40

Writes ``DIR/coco`` (det), ``DIR/ade`` (seg) and ``DIR/cls`` (cls). Runs
again with the same settings are no-ops (see ``gpusq_manifest.json``).
"""

import argparse
import time

from gpusq_mm.datasets.generate import TASKS, generate_task


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Generate demo datasets')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument(
        '--tasks',
        nargs='+',
        default=sorted(TASKS),
        choices=sorted(TASKS),
        help='which datasets to generate',
    )
    parser.add_argument(
        '--num-train', type=int, help='train images (default per task)'
    )
    parser.add_argument(
        '--num-val', type=int, help='val images (default per task)'
    )
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    roots = {}
    for task in args.tasks:
        start = time.time()
        roots[task] = generate_task(
            task, args.out, args.num_train, args.num_val, args.seed
        )
        print(f'{task}: {roots[task]} ({time.time() - start:.1f}s)')
    return roots


if __name__ == '__main__':
    main()
