"""Train (and compress) any OpenMMLab model with MMEngine's Runner.

    python tools/train.py configs/gpusq/swin_maskrcnn_coco.py
    python tools/train.py mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py \
        --gpusq dense.pth                 # any upstream config, compressed
    python tools/train.py CONFIG --resume            # latest in work_dir
    python tools/train.py CONFIG --resume PATH --cfg-options a.b=1

Works for mmdet, mmseg and mmpretrain configs alike (files or
``pkg::path``): the config's ``default_scope`` decides which library's
registries build it. ``--gpusq DENSE.pth`` wraps the config with
:func:`gpusq_mm.apis.wrap_config` (the paper's recipe; work_dir
``work_dirs/<config>_gpusq``).
"""

import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import gpusq_mm  # noqa: F401  (registries, safe checkpoint loading)
from gpusq_mm.apis import load_config, wrap_config
from gpusq_mm.utils.annotations import annotation_errors_named
from gpusq_mm.utils.dist import setup_cpu_distributed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--gpusq',
        metavar='DENSE.pth',
        help='compress the (upstream) config with the GPUSQ recipe: this '
        'trained dense checkpoint is the teacher and the student start',
    )
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from PATH; with no PATH, from the latest checkpoint '
        'in the work_dir',
    )
    parser.add_argument(
        '--amp', action='store_true', help='automatic mixed precision'
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value (xxx=[a,b] for lists)',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher',
    )
    # torch.distributed.launch passes --local-rank (newer) / --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args) -> Config:
    cfg = load_config(args.config)
    name = osp.splitext(osp.basename(args.config))[0]
    if args.gpusq is not None:
        if not osp.isfile(args.gpusq):
            raise FileNotFoundError(
                f'--gpusq dense checkpoint not found: {args.gpusq}'
            )
        cfg = wrap_config(cfg, args.gpusq)
        name += '_gpusq'
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', name)
    if args.amp:
        optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        assert optim_wrapper in ('OptimWrapper', 'AmpOptimWrapper'), (
            f'--amp needs optim_wrapper.type OptimWrapper or '
            f'AmpOptimWrapper, got {optim_wrapper!r}'
        )
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(
                f'--resume checkpoint not found: {args.resume}'
            )
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_cfg(args)
    setup_cpu_distributed(cfg, args.cfg_options)  # gloo without CUDA
    if 'runner_type' not in cfg:
        runner = Runner.from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)
    with annotation_errors_named(cfg):  # names a garbled ann_file
        runner.train()
    return runner


if __name__ == '__main__':
    main()
