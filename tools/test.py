"""Evaluate a checkpoint with the config's evaluator (mAP, mIoU, top-1).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE]
    python tools/test.py UPSTREAM_CONFIG student_final.pth --gpusq

For a gpusq config (or an upstream one with ``--gpusq``, as trained by
``tools/train.py UPSTREAM_CONFIG --gpusq DENSE.pth``), the student alone
is built and runs (sparse and, after QAT, fake-quantized), so the numbers
are those of the compressed model; no teacher is built or needed.
"""

import argparse
import numbers
import os
import os.path as osp

from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import gpusq_mm  # noqa: F401  (registries, safe checkpoint loading)
from gpusq_mm.apis import load_config, strip_teacher, wrap_config
from gpusq_mm.utils.annotations import annotation_errors_named
from gpusq_mm.utils.dist import setup_cpu_distributed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--out', help='dump the metrics to this json file')
    parser.add_argument(
        '--gpusq',
        action='store_true',
        help='the checkpoint is a GPUSQ student of this upstream config '
        '(trained with tools/train.py CONFIG --gpusq DENSE.pth)',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher',
    )
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(
            f'checkpoint file not found: {args.checkpoint}'
        )
    cfg = load_config(args.config)
    name = osp.splitext(osp.basename(args.config))[0]
    if args.gpusq:
        cfg = wrap_config(cfg, None)
        name += '_gpusq'
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    strip_teacher(cfg)  # the student alone is evaluated
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', name)
    setup_cpu_distributed(cfg, args.cfg_options)  # gloo without CUDA
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if 'runner_type' not in cfg:
        runner = Runner.from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)
    with annotation_errors_named(cfg):  # names a garbled ann_file
        metrics = runner.test()
    if args.out:
        import json

        from gpusq_mm.utils.checkpoint import _atomic_write_bytes

        _atomic_write_bytes(
            json.dumps(
                {
                    # numpy scalars too (mmseg's mIoU is a numpy float32)
                    k: float(v) if isinstance(v, numbers.Real) else v
                    for k, v in metrics.items()
                },
                indent=2,
            ).encode(),
            args.out,
        )
    return metrics


if __name__ == '__main__':
    main()
