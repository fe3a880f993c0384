"""Metrics of the runs, size of the deployable model, the result files.

:func:`measure_model` is where a run's checkpoint is measured for the
table; it computes the deployable weight size today, and is the place to
plug the deployment measurement (ONNX export + onnxruntime parity /
latency: ``gpusq_mm.deploy.export_and_measure``) into the demo.
"""

import json
import os
import os.path as osp
from typing import Dict, List

from .runs import log
from .schedules import STAGES, TASKS


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


def measure_model(config: str, checkpoint: str) -> Dict[str, float]:
    """What the demo reports about a run's model (``size_mb`` today)."""
    from gpusq_mm.utils.model_io import load_model
    from gpusq_mm.utils.model_size import deploy_size_mb

    model = load_model(config, checkpoint, student=True)
    return dict(size_mb=float(deploy_size_mb(model)))


def size_mb(config: str, checkpoint: str) -> float:
    """Deployment size of the model in ``checkpoint`` (see model_size)."""
    return measure_model(config, checkpoint)['size_mb']


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


def write_results(rows: List[dict], work_dir: str) -> None:
    from gpusq_mm.utils.checkpoint import _atomic_write_bytes

    _atomic_write_bytes(
        json.dumps(rows, indent=2).encode(),
        osp.join(work_dir, 'results.json'),
    )
    plot(rows, osp.join(work_dir, 'results.png'))
