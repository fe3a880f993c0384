"""Is model B better than model A beyond the val set's noise? (paired)

    python tools/analysis/compare_runs.py CONFIG_A CKPT_A CKPT_B \
        [--config-b CONFIG_B] [--boot 1000] [--out FILE.json] \
        [--cfg-options KEY=VALUE ...]

Scores both checkpoints on CONFIG_A's test set (CONFIG_B's for B when
given; both must list the same images) image by image, then prints B - A
with a paired-bootstrap 95 % interval and the largest change one image
makes to each metric (leave one out). Segmentors (mIoU), classifiers
(top-1) and detectors (COCO bbox mAP, 0-1, accumulated from each image's
pycocotools matches). See :mod:`gpusq_mm.utils.paired_eval`.
"""

import argparse
import json
import os
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from mmengine.config import DictAction  # noqa: E402

from gpusq_mm.utils.paired_eval import (  # noqa: E402
    DIGITS,
    paired_compare,
    per_image_stats,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config of A (and of B by default)')
    parser.add_argument('checkpoint_a', help='the reference model')
    parser.add_argument('checkpoint_b', help='the model compared with it')
    parser.add_argument('--config-b', default=None, help="B's config")
    parser.add_argument('--boot', type=int, default=1000, help='resamples')
    parser.add_argument('--seed', type=int, default=0, help='resampling')
    parser.add_argument('--out', default=None, help='write the JSON here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        a = per_image_stats(args.config, args.checkpoint_a, args.cfg_options)
        b = per_image_stats(
            args.config_b or args.config, args.checkpoint_b, args.cfg_options
        )
        res = paired_compare(a, b, boot=args.boot, seed=args.seed)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f'compare_runs: error: {e}', file=sys.stderr)
        raise SystemExit(1)
    low, high = res['ci95']
    d = DIGITS[a['kind']]
    verdict = (
        'B above A'
        if low > 0
        else 'B below A'
        if high < 0
        else 'not separated by this val set'
    )
    print(
        f'{res["key"]} on {res["images"]} images: A {res["a"]:.{d}f}, '
        f'B {res["b"]:.{d}f}; B - A {res["diff"]:+.{d}f}, 95 % interval '
        f'[{low:+.{d}f}, {high:+.{d}f}] ({args.boot} paired resamples): '
        f'{verdict}'
    )
    print(
        'one image moves the metric by up to '
        f'{res["one_image_a"]:.{d + 1}f} (A), '
        f'{res["one_image_b"]:.{d + 1}f} (B)'
    )
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(f'{args.out}.tmp', 'w') as f:
            json.dump(res, f, indent=1)
        os.replace(f'{args.out}.tmp', args.out)
    return res


if __name__ == '__main__':
    main()
