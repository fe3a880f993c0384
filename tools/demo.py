"""Offline demo of the whole GPUSQ method on generated data.

    python tools/demo.py --work-dir work_dirs/demo [--quick] [--tasks det]

For each task (det: tiny Swin Mask R-CNN, seg: tiny Swin UperNet, cls: tiny
Swin classifier) it

1. trains the dense model (the teacher) on generated data (seg first: the
   detector's backbone starts from the dense seg model's, a stand-in for
   the ImageNet-pretrained backbone real detectors start from);
2. runs the GPUSQ pipeline in one ``tools/train.py`` call: prune to 2:4 ->
   sparse fine-tune with KD (stage 1) -> calibrate -> QAT with KD
   (stage 2); the validation at the end of stage 1 gives ``sparse24``, the
   final one ``sparse24_int8``;
3. runs the same 2:4 fine-tune without KD (``sparse24_nokd``, the
   ablation);

and writes ``results.json`` (one row per task and stage), ``results.png``
and prints the table. Every run is a plain ``tools/train.py`` subprocess
with its own work dir, log and checkpoints under ``--work-dir``.
"""

import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CFG = osp.join(ROOT, 'configs', 'gpusq', 'demo')

# task -> (dense config, gpusq config, main metric, data subfolder)
TASKS = {
    'det': dict(
        dense='swin_maskrcnn_tiny_dense.py',
        gpusq='swin_maskrcnn_tiny_gpusq.py',
        metric='coco/bbox_mAP',
        data='coco',
        # the dense detector's backbone starts from the dense seg model's
        # (the same tiny Swin): our stand-in for the ImageNet-pretrained
        # backbone every real Mask R-CNN starts from, which cannot be
        # downloaded here. From scratch, 400-600 CPU iterations leave the
        # detector at 0.001-0.014 bbox mAP (its loss stalls); from the seg
        # backbone it learns.
        backbone_from='seg',
    ),
    'seg': dict(
        dense='swin_upernet_tiny_dense.py',
        gpusq='swin_upernet_tiny_gpusq.py',
        metric='mIoU',
        data='ade',
    ),
    'cls': dict(
        dense='swin_cls_tiny_dense.py',
        gpusq='swin_cls_tiny_gpusq.py',
        metric='accuracy/top1',
        data='cls',
    ),
}
STAGES = ('dense', 'sparse24', 'sparse24_nokd', 'sparse24_int8')
# seg first: its dense model initialises the detector's backbone
RUN_ORDER = ('seg', 'det', 'cls')


def log(msg: str) -> None:
    print(f'[demo {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='fewer iterations and images, same stages (CI)',
    )
    parser.add_argument(
        '--tasks', nargs='+', default=list(TASKS), choices=list(TASKS)
    )
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def run(cmd: List[str], log_file: str) -> None:
    """Run a subprocess, streaming its output to the console and a log."""
    log(
        ' '.join(
            osp.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd
        )
    )
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    with open(log_file, 'w') as f:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for line in proc.stdout:
            f.write(line)
            if ' - mmengine - ' in line and (
                'Iter(' in line or 'Epoch(' in line or 'gpusq' in line.lower()
            ):
                sys.stdout.write('    ' + line.split(' - mmengine - ')[-1])
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(
            f'command failed ({proc.returncode}), see {log_file}:\n'
            + ' '.join(cmd)
        )


def read_val_metrics(work_dir: str) -> List[Dict[str, float]]:
    """Validation results, in order, from MMEngine's ``scalars.json``.

    (The logged ``step`` of a validation is the epoch, 0 in iteration-based
    runs, so the order is what identifies a stage.)
    """
    out: List[Dict[str, float]] = []
    for sub in sorted(os.listdir(work_dir)):
        path = osp.join(work_dir, sub, 'vis_data', 'scalars.json')
        if not osp.isfile(path):
            continue
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if 'lr' in row or 'loss' in row:
                    continue  # a training log line
                out.append(row)
    return out


def metric_at(
    metrics: List[Dict[str, float]], key: str, index: int = -1
) -> float:
    """``key`` of the ``index``-th validation (-1: the last one)."""
    if not metrics:
        raise RuntimeError('no validation results were logged')
    if not -len(metrics) <= index < len(metrics):
        raise RuntimeError(
            f'validation #{index} missing: only {len(metrics)} were logged'
        )
    row = metrics[index]
    if key not in row:
        if set(row) <= {'data_time', 'time', 'step'}:
            # the evaluator had nothing to score (e.g. CocoMetric with no
            # detection above the score threshold): that model scores 0
            log(f'no {key} logged (no predictions to score): counted as 0')
            return 0.0
        raise KeyError(f'metric {key!r} not in {sorted(row)}')
    return float(metrics[index][key])


def size_mb(config: str, checkpoint: str) -> float:
    """Deployment size of the model in ``checkpoint`` (see model_size)."""
    code = (
        'import sys, json; sys.path.insert(0, %r)\n'
        'from gpusq_mm.utils.model_io import load_model\n'
        'from gpusq_mm.utils.model_size import deploy_size_mb\n'
        'm = load_model(%r, %r, student=True)\n'
        'print(json.dumps(deploy_size_mb(m)))\n' % (ROOT, config, checkpoint)
    )
    out = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(f'size computation failed:\n{out.stderr[-3000:]}')
    return float(out.stdout.strip().splitlines()[-1])


def plot(rows: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r['task'] == t for r in rows)]
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False
    )
    colors = ['#4c72b0', '#55a868', '#c44e52', '#8172b2']
    for ax, task in zip(axes[0], tasks):
        by_stage = {r['stage']: r for r in rows if r['task'] == task}
        values = [
            by_stage[s]['value'] if s in by_stage else 0.0 for s in STAGES
        ]
        bars = ax.bar(range(len(STAGES)), values, color=colors)
        for bar, stage in zip(bars, STAGES):
            if stage in by_stage:
                r = by_stage[stage]
                ax.text(
                    bar.get_x() + bar.get_width() / 2,
                    bar.get_height(),
                    f'{r["value"]:.3f}\n{r["size_mb"]:.2f} MB',
                    ha='center',
                    va='bottom',
                    fontsize=8,
                )
        ax.set_xticks(range(len(STAGES)))
        ax.set_xticklabels(
            ['dense', '2:4+KD', '2:4 no KD', '2:4+INT8'], fontsize=9
        )
        metric = next(r['metric'] for r in rows if r['task'] == task)
        ax.set_title(f'{task}: {metric}')
        top = max(values) if max(values) > 0 else 1.0
        ax.set_ylim(0, top * 1.3)
    fig.suptitle('GPUSQ demo (generated data): metric and deploy size')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: List[dict]) -> str:
    lines = [
        f'{"task":5} {"stage":15} {"metric":15} {"value":>8} '
        f'{"size_mb":>8} {"vs dense":>9}'
    ]
    dense = {r['task']: r['value'] for r in rows if r['stage'] == 'dense'}
    for r in rows:
        ratio = (
            r['value'] / dense[r['task']]
            if dense.get(r['task'])
            else float('nan')
        )
        lines.append(
            f'{r["task"]:5} {r["stage"]:15} {r["metric"]:15} '
            f'{r["value"]:8.4f} {r["size_mb"]:8.3f} '
            f'{100 * ratio:8.1f}%'
        )
    return '\n'.join(lines)


# Lengths in the config's own unit (iterations for det/seg, epochs for cls)
# and data sizes, per mode (the full lengths are the demo configs' own
# defaults). The dense teachers get most of the time: GPUSQ assumes a
# trained dense model, and a teacher still far from converged makes the
# ablation meaningless (the student fine-tuned without KD simply keeps
# training past it). Stage 1 (2:4 + KD) is 1/8-1/6 of the dense schedule,
# QAT ~10 % of it (pytorch-quantization's guidance). Val sets are larger
# than the minimum so that stage-to-stage differences are not one or two
# images.
SCHEDULES = {
    'full': {
        'det': dict(dense=500, stage1=100, qat=50, data=(160, 80)),
        'seg': dict(dense=1000, stage1=100, qat=100, data=(160, 80)),
        'cls': dict(dense=30, stage1=5, qat=3, data=(600, 600)),
    },
    'quick': {
        'det': dict(dense=60, stage1=30, qat=10, data=(32, 8)),
        'seg': dict(dense=60, stage1=30, qat=10, data=(32, 8)),
        'cls': dict(dense=6, stage1=3, qat=1, data=(120, 30)),
    },
}


def _set_data_root(cfg, data_root: str) -> None:
    """Point every dataset (and the COCO evaluator) at ``data_root``."""
    old = None
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(split)
        if loader is None:
            continue
        ds = loader['dataset']
        while 'dataset' in ds and 'data_root' not in ds:  # wrappers
            ds = ds['dataset']
        old = ds.get('data_root', old)
        ds['data_root'] = data_root
    for key in ('val_evaluator', 'test_evaluator'):
        ev = cfg.get(key)
        evs = ev if isinstance(ev, list) else [ev]
        for e in evs:
            if e is not None and 'ann_file' in e and old:
                rel = osp.relpath(e['ann_file'], old)
                e['ann_file'] = osp.join(data_root, rel)


def _iter_based(cfg) -> bool:
    return cfg.train_cfg.get('type') == 'IterBasedTrainLoop' or (
        'max_iters' in cfg.train_cfg
    )


def _scale_dense(cfg, length: int) -> None:
    """Shorten/lengthen a dense config's schedule to ``length``."""
    key = 'max_iters' if _iter_based(cfg) else 'max_epochs'
    factor = length / cfg.train_cfg[key]
    cfg.train_cfg[key] = length
    cfg.train_cfg['val_interval'] = length
    for sch in cfg.param_scheduler:
        for k in ('begin', 'end'):
            if k in sch and sch[k] is not None:
                sch[k] = max(1, int(round(sch[k] * factor))) if sch[k] else 0
    cfg.default_hooks.checkpoint['interval'] = length


def _set_gpusq_schedule(cfg, stage1: int, qat: int, use_qat: bool) -> None:
    by_epoch = not _iter_based(cfg)
    total = stage1 + (qat if use_qat else 0)
    key = 'max_epochs' if by_epoch else 'max_iters'
    cfg.train_cfg[key] = total
    cfg.train_cfg['val_interval'] = stage1
    extra = dict(convert_to_iter_based=True) if by_epoch else {}
    cfg.param_scheduler = [
        dict(
            type='CosineAnnealingLR',
            eta_min_ratio=0.05,
            by_epoch=by_epoch,
            begin=0,
            end=stage1,
            **extra,
        )
    ]
    if use_qat:
        cfg.param_scheduler.append(
            dict(
                type='CosineAnnealingLR',
                eta_min_ratio=0.0,
                by_epoch=by_epoch,
                begin=stage1,
                end=total,
                **extra,
            )
        )
    cfg.default_hooks.checkpoint['interval'] = stage1
    for hook in cfg.custom_hooks:
        if hook['type'].endswith('GPUSQHook'):
            for key in ('qat_ratio', 'qat_begin_epoch', 'qat_begin_iter'):
                hook.pop(key, None)
            hook['qat_begin_epoch' if by_epoch else 'qat_begin_iter'] = stage1


def prepare_config(
    src: str,
    dst: str,
    data_root: str,
    seed: int,
    dense_len: Optional[int] = None,
    stages: Optional[dict] = None,
    teacher_ckpt: Optional[str] = None,
    kd: bool = True,
    backbone_ckpt: Optional[str] = None,
) -> str:
    """Load ``src``, adapt it to this demo run and dump it to ``dst``.

    ``backbone_ckpt``: a checkpoint whose ``backbone.*`` weights initialise
    the model's backbone (MMEngine ``Pretrained`` init).
    """
    from mmengine.config import Config

    cfg = Config.fromfile(src)
    _set_data_root(cfg, data_root)
    cfg.randomness = dict(seed=seed)
    if dense_len is not None:
        _scale_dense(cfg, dense_len)
    if backbone_ckpt is not None:
        cfg.model.backbone.init_cfg = dict(
            type='Pretrained', checkpoint=backbone_ckpt, prefix='backbone.'
        )
    if stages is not None:
        _set_gpusq_schedule(cfg, stages['stage1'], stages['qat'], use_qat=kd)
        cfg.load_from = teacher_ckpt
        if kd:
            cfg.model.teacher.checkpoint = teacher_ckpt
        else:
            # the ablation: the same 2:4 fine-tune, student alone
            cfg.model = cfg.model.architecture
            cfg.custom_hooks = [
                h
                for h in cfg.custom_hooks
                if not h['type'].endswith('GPUSQHook')
            ] + [dict(type='gpusq_mm.SparsityHook')]
    cfg.dump(dst)
    return dst


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    work_dir = osp.abspath(args.work_dir)
    os.makedirs(work_dir, exist_ok=True)
    py = sys.executable
    t_start = time.time()
    mode = 'quick' if args.quick else 'full'
    train = osp.join(ROOT, 'tools', 'train.py')

    from gpusq_mm.datasets.generate import generate_task

    # rows of tasks not run now are kept from an earlier run in work_dir
    rows: List[dict] = []
    previous = osp.join(work_dir, 'results.json')
    if osp.isfile(previous):
        with open(previous) as f:
            rows = [r for r in json.load(f) if r['task'] not in args.tasks]

    def data_root_of(task: str) -> str:
        sched = SCHEDULES[mode][task]
        log(
            f'[{task}] generating data ({mode}: {sched["data"][0]} train / '
            f'{sched["data"][1]} val images)'
        )
        root = generate_task(
            task,
            osp.join(work_dir, 'data'),
            sched['data'][0],
            sched['data'][1],
            args.seed,
        )
        return osp.abspath(root).rstrip('/') + '/'

    dense_ckpts: Dict[str, str] = {}

    def train_dense(task: str, data_root: str) -> tuple:
        """Train ``task``'s dense model; (config, work dir, checkpoint)."""
        spec, sched = TASKS[task], SCHEDULES[mode][task]
        tdir = osp.join(work_dir, task)
        os.makedirs(tdir, exist_ok=True)
        backbone = None
        if spec.get('backbone_from'):
            src = spec['backbone_from']
            backbone = dense_ckpts.get(src)
            if backbone is None:  # src not run now: an earlier run's, or new
                src_dir = osp.join(work_dir, src, 'dense')
                if osp.isfile(osp.join(src_dir, 'last_checkpoint')):
                    backbone = last_checkpoint(src_dir)
                else:
                    log(f'[{task}] needs the dense {src} model first')
                    backbone = train_dense(src, data_root_of(src))[2]
            log(f'[{task}] backbone initialised from {backbone}')
        dense_dir = osp.join(tdir, 'dense')
        dense_cfg = prepare_config(
            osp.join(DEMO_CFG, spec['dense']),
            osp.join(tdir, 'dense.py'),
            data_root,
            args.seed,
            dense_len=sched['dense'],
            backbone_ckpt=backbone,
        )
        log(
            f'[{task}] 1/3 dense training ({sched["dense"]} '
            f'{"iters" if task != "cls" else "epochs"})'
        )
        run(
            [py, train, dense_cfg, '--work-dir', dense_dir],
            osp.join(tdir, 'dense.log'),
        )
        dense_ckpts[task] = last_checkpoint(dense_dir)
        return dense_cfg, dense_dir, dense_ckpts[task]

    for task in [t for t in RUN_ORDER if t in args.tasks]:
        spec, sched = TASKS[task], SCHEDULES[mode][task]
        tdir = osp.join(work_dir, task)
        data_root = data_root_of(task)

        # 1. dense teacher
        dense_cfg, dense_dir, dense_ckpt = train_dense(task, data_root)

        # 2. GPUSQ: prune -> sparse KD (stage 1) -> calibrate -> QAT + KD
        gpusq_dir = osp.join(tdir, 'gpusq')
        gpusq_cfg = prepare_config(
            osp.join(DEMO_CFG, spec['gpusq']),
            osp.join(tdir, 'gpusq.py'),
            data_root,
            args.seed,
            stages=sched,
            teacher_ckpt=dense_ckpt,
        )
        log(
            f'[{task}] 2/3 GPUSQ: 2:4 + KD ({sched["stage1"]}), then '
            f'INT8 QAT + KD ({sched["qat"]})'
        )
        run(
            [py, train, gpusq_cfg, '--work-dir', gpusq_dir],
            osp.join(tdir, 'gpusq.log'),
        )

        # 3. ablation: the same 2:4 fine-tune without KD
        nokd_dir = osp.join(tdir, 'sparse24_nokd')
        nokd_cfg = prepare_config(
            osp.join(DEMO_CFG, spec['gpusq']),
            osp.join(tdir, 'nokd.py'),
            data_root,
            args.seed,
            stages=sched,
            teacher_ckpt=dense_ckpt,
            kd=False,
        )
        log(f'[{task}] 3/3 2:4 fine-tune without KD (ablation)')
        run(
            [py, train, nokd_cfg, '--work-dir', nokd_dir],
            osp.join(tdir, 'nokd.log'),
        )

        key = spec['metric']
        gpusq_val = read_val_metrics(gpusq_dir)
        if len(gpusq_val) != 2:  # end of stage 1, end of QAT
            raise RuntimeError(
                f'expected 2 validations in {gpusq_dir}, got {len(gpusq_val)}'
            )
        nokd_ckpt = last_checkpoint(nokd_dir)
        sparse_mb = size_mb(nokd_cfg, nokd_ckpt)
        results = [
            (
                'dense',
                metric_at(read_val_metrics(dense_dir), key),
                size_mb(dense_cfg, dense_ckpt),
            ),
            ('sparse24', metric_at(gpusq_val, key, 0), sparse_mb),
            (
                'sparse24_nokd',
                metric_at(read_val_metrics(nokd_dir), key),
                sparse_mb,
            ),
            (
                'sparse24_int8',
                metric_at(gpusq_val, key),
                size_mb(gpusq_cfg, last_checkpoint(gpusq_dir)),
            ),
        ]
        for stage, value, mb in results:
            rows.append(
                dict(
                    task=task,
                    stage=stage,
                    metric=key,
                    value=value,
                    size_mb=round(mb, 4),
                )
            )
        rows.sort(
            key=lambda r: (
                list(TASKS).index(r['task']),
                STAGES.index(r['stage']),
            )
        )
        log(
            f'[{task}] done:\n' + table([r for r in rows if r['task'] == task])
        )
        write_results(rows, work_dir)

    log(
        f'all done in {time.time() - t_start:.0f} s ({mode}); results in '
        f'{work_dir}/results.json and results.png\n' + table(rows)
    )
    return rows


def write_results(rows: List[dict], work_dir: str) -> None:
    from gpusq_mm.utils.checkpoint import _atomic_write_bytes

    _atomic_write_bytes(
        json.dumps(rows, indent=2).encode(),
        osp.join(work_dir, 'results.json'),
    )
    plot(rows, osp.join(work_dir, 'results.png'))


def last_checkpoint(work_dir: str) -> str:
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(path):
        raise FileNotFoundError(f'no checkpoint was written in {work_dir}')
    with open(path) as f:
        return f.read().strip()


if __name__ == '__main__':
    sys.path.insert(0, ROOT)
    main()
