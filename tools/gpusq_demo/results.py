"""Metrics of the runs, size of the deployable model, the result files.

:func:`measure_model` is where a run's checkpoint is measured for the
table: the deployable weight size of every row and, for the final student
(``deploy=...``), its ONNX exports (FP32 vs 2:4+INT8: file size and
onnxruntime latency, with ``gpusq_mm.deploy.export_and_measure``).
"""

import json
import os
import os.path as osp
from typing import Dict, List, Optional

from .runs import log
from .schedules import STAGE_LABELS, STAGES, TASKS


def _scalar_rows(work_dir: str):
    """Every row MMEngine logged in ``work_dir``'s ``scalars.json`` files,
    runs (timestamped sub-folders) in order."""
    for sub in sorted(os.listdir(work_dir)):
        path = osp.join(work_dir, sub, 'vis_data', 'scalars.json')
        if not osp.isfile(path):
            continue
        with open(path) as f:
            for line in f:
                yield json.loads(line)


def read_val_metrics(work_dir: str) -> List[Dict[str, float]]:
    """Validation results, in order, from MMEngine's ``scalars.json``.

    (The logged ``step`` of a validation is the epoch, 0 in iteration-based
    runs, so the order is what identifies a stage.)
    """
    # a row with lr or loss is a training log line
    return [
        row
        for row in _scalar_rows(work_dir)
        if 'lr' not in row and 'loss' not in row
    ]


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


def seed_stats(values: List[float]) -> Dict[str, object]:
    """Mean and sample std over seeds: a row's ``value`` is the mean."""
    import statistics

    return dict(
        value=float(statistics.mean(values)),
        values=[float(v) for v in values],
        std=float(statistics.stdev(values)) if len(values) > 1 else 0.0,
    )


def train_losses(work_dir: str) -> List[tuple]:
    """``(iteration, loss)`` of every logged training step, in order."""
    return [
        (int(row.get('iter', row.get('step'))), float(row['loss']))
        for row in _scalar_rows(work_dir)
        if 'loss' in row and ('iter' in row or 'step' in row)
    ]


def dense_curve(
    work_dir: str, key: str, length: int, interval: int, unit: str
) -> Dict[str, object]:
    """The dense run's learning curve and whether it has levelled off.

    Returns:
        dict: ``curve``: ``[[step, metric], ...]`` at each validation
        (``unit`` steps: epochs or iterations); ``last_gain``: the metric
        gained over the last validation interval (the plateau check: near
        0 when the teacher has converged); ``val_loss``: ``[[step, loss],
        ...]``, the training loss on the val data at each validation
        (``gpusq_mm.ValLossHook``), when the run logged it.
    """
    vals = read_val_metrics(work_dir)
    steps = list(range(interval, length + 1, interval))
    if not steps or steps[-1] != length:
        steps.append(length)
    if len(vals) != len(steps):
        raise RuntimeError(
            f'{work_dir}: expected {len(steps)} validations (every '
            f'{interval} {unit} of {length}), got {len(vals)}'
        )
    curve = [[s, metric_at(vals, key, i)] for i, s in enumerate(steps)]
    gain = curve[-1][1] - curve[-2][1] if len(curve) > 1 else None
    out = dict(curve=curve, curve_unit=unit, last_gain=gain)
    losses = [row.get('val_loss') for row in vals]
    if any(loss is not None for loss in losses):
        if None in losses:
            raise RuntimeError(
                f'{work_dir}: val_loss logged at some validations only'
            )
        out['val_loss'] = [[s, float(v)] for s, v in zip(steps, losses)]
    return out


def plot_curve(
    work_dir: str, key: str, curve: dict, path: str, title: str
) -> None:
    """Train loss per iteration, the val loss (when logged) and the val
    metric at each validation."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    losses = train_losses(work_dir)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if losses:
        it, loss = zip(*losses)
        ax.plot(it, loss, color='tab:blue', lw=0.8, label='train loss')
    ax.set_xlabel('iteration')
    pts = curve['curve']
    if losses and curve['curve_unit'] == 'epochs':
        # epochs -> iterations (the loss axis): iterations per epoch
        per_epoch = max(it) / pts[-1][0]
        xs = [p[0] * per_epoch for p in pts]
    else:
        xs = [p[0] for p in pts]
    if curve.get('val_loss'):
        ax.plot(
            xs,
            [p[1] for p in curve['val_loss']],
            's--',
            color='tab:green',
            label='val loss',
        )
        ax.legend(loc='upper center', fontsize=8)
        ax.set_ylabel('train / val loss', color='tab:blue')
    else:
        ax.set_ylabel('train loss', color='tab:blue')
    ax2 = ax.twinx()
    ax2.plot(xs, [p[1] for p in pts], 'o-', color='tab:red', label=key)
    ax2.set_ylabel(f'val {key}', color='tab:red')
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# the ONNX numbers a row gains (the final student's), table headers
DEPLOY_KEYS = {
    'onnx_fp32_mb': 'fp32 MB',
    'onnx_int8_mb': 'int8 MB',
    'onnx_fp32_ms': 'fp32 ms',
    'onnx_int8_ms': 'int8 ms',
    # the onnxruntime-only copy of the INT8 file (export_onnx.py --ort-out)
    'onnx_int8_ort_mb': 'ort MB',
    'onnx_int8_ort_ms': 'ort ms',
}


def measure_model(
    config: str,
    checkpoint: str,
    deploy: Optional[dict] = None,
) -> Dict[str, float]:
    """What the demo reports about a run's model.

    Args:
        config (str): the run's config.
        checkpoint (str): its checkpoint.
        deploy (dict, optional): ``out_dir``, ``part``, ``shape``, ``runs``
            of :func:`gpusq_mm.deploy.export_and_measure`; when given, the
            FP32 and the quantized ONNX export are measured too.

    Returns:
        dict: ``size_mb`` (deployable weights) and, with ``deploy``, the
        :data:`DEPLOY_KEYS` (ONNX file sizes in MiB, onnxruntime median
        latencies in ms, 2 threads, the three files timed in interleaved
        rounds), ``onnx_cosine`` (the quantized export in onnxruntime's
        integer kernels vs the fake-quant PyTorch model) and
        ``onnx_graph_cosine`` (the same file run unoptimized: its Q/DQ as
        written, the file's own semantics).
    """
    from gpusq_mm.utils.model_io import load_model
    from gpusq_mm.utils.model_size import deploy_size_mb

    model = load_model(config, checkpoint, student=True)
    out = dict(size_mb=float(deploy_size_mb(model)))
    if deploy is not None:
        from gpusq_mm.deploy import export_and_measure

        res = export_and_measure(
            config,
            checkpoint,
            deploy['out_dir'],
            part=deploy['part'],
            shape=deploy['shape'],
            threads=2,
            runs=deploy['runs'],
            act_dtype='uint8',
            log=log,
        )
        if res['file_mb'] is None:
            raise RuntimeError(
                f'{checkpoint}: the student is not quantized, no INT8 export'
            )
        out.update(
            onnx_fp32_mb=round(res['fp32_file_mb'], 4),
            onnx_int8_mb=round(res['file_mb'], 4),
            onnx_fp32_ms=round(res['fp32_ort_latency_ms'], 3),
            onnx_int8_ms=round(res['ort_latency_ms'], 3),
            onnx_int8_ort_mb=round(res['ort_opt_file_mb'], 4),
            onnx_int8_ort_ms=round(res['ort_opt_latency_ms'], 3),
            onnx_cosine=round(res['cosine'], 5),
            onnx_graph_cosine=round(res['graph_cosine'], 5),
        )
    return out


# (row, compared with): B - A over the same val images (mIoU, top-1, COCO
# bbox mAP from each image's matches)
PAIRS = (
    ('sparse24', 'sparse24_nokd'),
    ('sparse24', 'dense'),
    ('sparse24_int8', 'dense'),
    ('sparse24_oneshot', 'sparse24'),
)
#: the rows paired_rows scores image by image
SCORED = tuple(sorted({s for pair in PAIRS for s in pair}))


def paired_rows(
    runs: Dict[str, tuple],
    boot: int = 1000,
    cfg_options: Optional[dict] = None,
    workers: int = 1,
    threads: Optional[int] = None,
) -> Dict[str, Dict[str, dict]]:
    """Every row of :data:`SCORED` scored image by image on the same
    images, and the paired comparisons of :data:`PAIRS`.

    Args:
        runs (dict): stage -> ``(config, checkpoint)`` of each row in
            :data:`SCORED`.
        boot (int): paired bootstrap resamples. Defaults to 1000.
        cfg_options (dict, optional): overrides of every config (the
            scoring set's ``test_dataloader`` / ``test_evaluator``, see
            :func:`gpusq_demo.configs.test_set_options`); None: the
            configs' own test set (the demo's val set).
        workers (int): checkpoints scored side by side, each in its own
            process (``gpusq_mm.utils.paired_eval.score_many``). Defaults
            to 1 (one after the other, in this process).
        threads (int, optional): torch threads of each scoring.

    Returns:
        dict: row -> ``rescored`` (the row's metric recomputed from its
        per-image statistics), ``images`` (how many) and, for the rows
        compared, ``{'vs_<other>': gpusq_mm.utils.paired_eval
        .paired_compare(other, row)}`` (``diff`` = row - other with its
        95 % interval, ``one_image_*`` swings).
    """
    from gpusq_mm.utils.paired_eval import (
        DIGITS,
        metric_of,
        paired_compare,
        score_many,
    )

    jobs = [(*runs[stage], cfg_options) for stage in SCORED]
    scored = dict(zip(SCORED, score_many(jobs, workers, threads)))
    out: Dict[str, Dict[str, dict]] = {}
    for row, other in PAIRS:
        res = paired_compare(scored[other], scored[row], boot=boot)
        out.setdefault(row, {})[f'vs_{other}'] = res
        low, high = res['ci95']
        swing = max(res['one_image_a'], res['one_image_b'])
        d = DIGITS[scored[row]['kind']]
        log(
            f'[paired] {row} - {other}: {res["diff"]:+.{d}f} '
            f'[{low:+.{d}f}, {high:+.{d}f}] on {res["images"]} images '
            f'(one image: up to {swing:.{d + 1}f})'
        )
    for row, stats in scored.items():
        n = len(next(iter(stats['stats'].values())))
        nd = DIGITS[stats['kind']] + 1
        res = out.setdefault(row, {})
        res['rescored'] = round(metric_of(stats, list(range(n))), nd)
        res['images'] = n
    return out


def size_mb(config: str, checkpoint: str) -> float:
    """Deployment size of the model in ``checkpoint`` (see model_size)."""
    return measure_model(config, checkpoint)['size_mb']


def plot(rows: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r['task'] == t for r in rows)]
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(4.8 * len(tasks), 4.2), squeeze=False
    )
    colors = plt.get_cmap('tab10').colors
    for ax, task in zip(axes[0], tasks):
        by_stage = {r['stage']: r for r in rows if r['task'] == task}
        stages = [s for s in STAGES if s in by_stage]
        values = [by_stage[s]['value'] for s in stages]
        errs = [by_stage[s].get('std', 0.0) for s in stages]
        bars = ax.bar(
            range(len(stages)),
            values,
            yerr=errs if any(errs) else None,
            capsize=3,
            color=[colors[STAGES.index(s) % len(colors)] for s in stages],
        )
        for bar, stage in zip(bars, stages):
            r = by_stage[stage]
            pm = (
                f' ±{r["std"]:.3f} (n={len(r["values"])})'
                if r.get('values')
                else ''
            )
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                bar.get_height() + r.get('std', 0.0),
                f'{r["value"]:.3f}{pm}\n{r["size_mb"]:.2f} MB',
                ha='center',
                va='bottom',
                fontsize=7,
            )
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels(
            [STAGE_LABELS[s] for s in stages],
            fontsize=8,
            rotation=30,
            ha='right',
        )
        metric = next(r['metric'] for r in rows if r['task'] == task)
        ax.set_title(f'{task}: {metric}')
        top = max(values) if max(values) > 0 else 1.0
        ax.set_ylim(0, top * 1.3)
    fig.suptitle('GPUSQ demo (generated data): metric and deploy size')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def teacher_check(rows: List[dict], targets: Dict[str, float]) -> List[str]:
    """Mark each dense row against its task's target metric.

    Sets ``teacher_target`` and ``teacher_ok`` on the dense rows of the
    tasks in ``targets`` and returns one warning per teacher below its
    target: every other row of that task is then measured against a
    teacher that did not learn the task (the compression ratios and the KD
    comparison mean little), which the table alone does not say.
    """
    warnings = []
    for r in rows:
        target = targets.get(r['task'])
        if r['stage'] != 'dense' or target is None:
            continue
        r['teacher_target'] = target
        r['teacher_ok'] = bool(r['value'] >= target)
        if not r['teacher_ok']:
            warnings.append(
                f'[{r["task"]}] WARNING: the dense teacher reached '
                f'{r["value"]:.4g} {r["metric"]}, below the '
                f'{target:g} this demo expects of it: the rows of this task '
                'compare against a teacher that has not learned the task'
            )
    return warnings


def table(rows: List[dict]) -> str:
    """The printed table; the ONNX columns are '-' where not measured."""
    head = (
        f'{"task":5} {"stage":21} {"metric":15} {"value":>8} '
        f'{"size_mb":>8} {"vs dense":>9}'
    )
    lines = [
        head
        + ''.join(f' {h:>8}' for h in DEPLOY_KEYS.values())
        + '  seeds (mean ± std)'
    ]
    dense = {r['task']: r['value'] for r in rows if r['stage'] == 'dense'}
    for r in rows:
        ratio = (
            r['value'] / dense[r['task']]
            if dense.get(r['task'])
            else float('nan')
        )
        lines.append(
            f'{r["task"]:5} {r["stage"]:21} {r["metric"]:15} '
            f'{r["value"]:8.4f} {r["size_mb"]:8.3f} '
            f'{100 * ratio:8.1f}%'
            + ''.join(
                f' {r[k]:8.3f}' if r.get(k) is not None else f' {"-":>8}'
                for k in DEPLOY_KEYS
            )
            + (
                f'  {len(r["values"])} seeds ± {r["std"]:.4f}'
                if r.get('values')
                else ''
            )
        )
    return '\n'.join(lines)


def write_results(rows: List[dict], work_dir: str) -> None:
    from gpusq_mm.utils.checkpoint import _atomic_write_bytes

    _atomic_write_bytes(
        json.dumps(rows, indent=2).encode(),
        osp.join(work_dir, 'results.json'),
    )
    plot(rows, osp.join(work_dir, 'results.png'))
