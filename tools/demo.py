"""Offline demo of the whole GPUSQ method on generated data.

    python tools/demo.py --work-dir work_dirs/demo [--quick [--all-rows]]
        [--tasks det] [--jobs N]

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
4. evaluates the dense weights with 2:4 magnitude masks and no fine-tune
   (``sparse24_oneshot``: the damage the fine-tune has to recover) with
   ``tools/test.py``;
5. full demo only (``--quick``: with ``--all-rows``), for cls and seg: the
   extra training rows ``sparse24_labelfree`` (stage 1 with the teacher's
   predictions instead of the labels, the ``sparse24`` budget),
   ``sparse24_int4`` and ``sparse24_int4_uniform`` (INT4 QAT, with / without
   the per-layer feature-KD weight factors: the GPUSQ run resumed from its
   stage-1 checkpoint, so they share its 2:4 + KD stage and train only
   their own QAT stage; the ``sparse24_int8`` budget);
6. scores the dense, one-shot, no-KD, 2:4 + KD and INT8 rows image by
   image on the same images (one single-thread process per ``--jobs``
   slot; a detector's boxes only, without its mask branch) and compares
   them (paired bootstrap intervals): on the val set, or for det on a
   larger scoring set (the schedule's ``score`` images: the val images
   and more), whose score then is the row's ``value`` (``val_value``: the
   run's own validation);

and writes ``results.json`` (one row per task and stage), ``results.png``
and prints the table. The final student's row also gets its ONNX numbers:
file size and onnxruntime latency of the FP32 export vs the 2:4+INT8 one
(``onnx_fp32_mb`` / ``onnx_int8_mb`` / ``onnx_fp32_ms`` / ``onnx_int8_ms``;
the detector exports its backbone+neck, the others the whole model).
Every run is a plain ``tools/train.py`` (or ``tools/test.py``) subprocess
with its own work dir, log and checkpoints under ``--work-dir``. Up to
``--jobs`` of them train side by side (default 2 on a machine with 2 cores
or more), each with its share of the cores (``OMP_NUM_THREADS``): a tiny
model on a CPU trains faster as two single-thread runs than as one
two-thread run. The seg teacher, which the other tasks start from, trains
alone with every core; the ONNX exports, latencies and per-image scoring
run with nothing else on the machine (see ``gpusq_demo/lanes.py``). The parts
(tasks and schedules, config preparation, runs, one-shot pruning, results)
live in ``tools/gpusq_demo/``; this file is the command line and the
sequence.
"""

import argparse
import json
import os
import os.path as osp
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Dict, List, Optional

from gpusq_demo.configs import (  # noqa: F401
    _iter_based,
    dense_val_interval,
    prepare_config,
    stage1_checkpoint,
    test_set_options,
)
from gpusq_demo.oneshot import oneshot_checkpoint
from gpusq_demo.results import (  # noqa: F401
    dense_curve,
    measure_model,
    metric_at,
    paired_rows,
    plot_curve,
    read_val_metrics,
    seed_stats,
    size_mb,
    table,
    teacher_check,
    write_results,
)
from gpusq_demo.runs import (
    abort_runs,
    evaluate,
    last_checkpoint,
    log,
    run,
    set_jobs,
)
from gpusq_demo.schedules import (  # noqa: F401
    DEMO_CFG,
    DEPLOY_RUNS,
    EXTRA_RUNS,
    ROOT,
    RUN_ORDER,
    SCHEDULES,
    STAGES,
    TASKS,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='fewer iterations and images, without the extra training rows '
        '(see --all-rows) (CI)',
    )
    parser.add_argument(
        '--tasks', nargs='+', default=list(TASKS), choices=list(TASKS)
    )
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--jobs',
        type=int,
        default=min(os.cpu_count() or 1, 2),
        help='training runs side by side, each with its share of the cores '
        '(default: 2 where there are 2 cores or more; 1: one run at a '
        'time with all cores). ONNX exports, latencies and per-image '
        'scoring always run alone',
    )
    parser.add_argument(
        '--all-rows',
        action='store_true',
        help='with --quick: also run the extra training rows '
        '(sparse24_labelfree, sparse24_int4, sparse24_int4_uniform; cls '
        'and seg), which only the full demo runs by default',
    )
    return parser.parse_args(argv)


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    work_dir = osp.abspath(args.work_dir)
    os.makedirs(work_dir, exist_ok=True)
    py = sys.executable
    t_start = time.time()
    mode = 'quick' if args.quick else 'full'
    extra = args.all_rows or not args.quick
    train = osp.join(ROOT, 'tools', 'train.py')
    lanes = set_jobs(args.jobs)
    if args.jobs > 1:
        log(
            f'--jobs {args.jobs}: up to {args.jobs} runs at once on '
            f'{lanes.cpus} core(s); exports, latencies and per-image '
            'scoring run alone'
        )

    from gpusq_mm.datasets.generate import generate_task

    # rows of tasks not run now are kept from an earlier run in work_dir
    rows: List[dict] = []
    previous = osp.join(work_dir, 'results.json')
    if osp.isfile(previous):
        with open(previous) as f:
            rows = [r for r in json.load(f) if r['task'] not in args.tasks]

    # in-process work (configs, data, one-shot pruning, measurements) is
    # serialised: config parsing and lazy imports are not thread-safe
    inproc = threading.RLock()

    def prepare(*a, **kw) -> str:
        with inproc:
            return prepare_config(*a, **kw)

    pool = ThreadPoolExecutor(max_workers=64)

    def data_root_of(task: str) -> str:
        sched = SCHEDULES[mode][task]
        log(
            f'[{task}] generating data ({mode}: {sched["data"][0]} train / '
            f'{sched["data"][1]} val images)'
        )
        with inproc:
            root = generate_task(
                task,
                osp.join(work_dir, 'data'),
                sched['data'][0],
                sched['data'][1],
                args.seed,
            )
        return osp.abspath(root).rstrip('/') + '/'

    def score_root_of(task: str) -> Optional[str]:
        """The task's scoring set (``score`` images of its schedule: the
        val set's images and more from the same generator), None where
        the rows are scored on the val set."""
        num = SCHEDULES[mode][task].get('score')
        if not num:
            return None
        log(
            f'[{task}] generating the scoring set ({num} images: the '
            f'{SCHEDULES[mode][task]["data"][1]} val images and more)'
        )
        with inproc:
            # one train image: the folder layout needs one, nothing uses it
            root = generate_task(
                task, osp.join(work_dir, 'data', 'score'), 1, num, args.seed
            )
        return osp.abspath(root).rstrip('/') + '/'

    # task -> Future of its dense (config, work dir, checkpoint)
    dense_runs: Dict[str, Future] = {}
    dense_lock = threading.Lock()
    # the tasks whose dense model another task of this run starts from:
    # their teachers train alone, with every core
    gating = {
        TASKS[t].get('backbone_from')
        for t in args.tasks
        if TASKS[t].get('backbone_from')
    }

    def dense_of(task: str, data_root: Optional[str] = None) -> Future:
        """The (one) dense training of ``task`` in this demo run."""
        with dense_lock:
            if task not in dense_runs:
                dense_runs[task] = pool.submit(train_dense, task, data_root)
            return dense_runs[task]

    def train_dense(task: str, data_root: Optional[str]) -> tuple:
        """Train ``task``'s dense model; (config, work dir, checkpoint)."""
        spec, sched = TASKS[task], SCHEDULES[mode][task]
        if data_root is None:
            data_root = data_root_of(task)
        tdir = osp.join(work_dir, task)
        os.makedirs(tdir, exist_ok=True)
        backbone = None
        if spec.get('backbone_from'):
            src = spec['backbone_from']
            src_dir = osp.join(work_dir, src, 'dense')
            if src in args.tasks or not osp.isfile(
                osp.join(src_dir, 'last_checkpoint')
            ):
                if src not in args.tasks:
                    log(f'[{task}] needs the dense {src} model first')
                backbone = dense_of(src).result()[2]
            else:  # src not run now: an earlier run's
                backbone = last_checkpoint(src_dir)
            log(f'[{task}] backbone initialised from {backbone}')
        dense_dir = osp.join(tdir, 'dense')
        try:
            dense_cfg = prepare(
                osp.join(DEMO_CFG, spec['dense']),
                osp.join(tdir, 'dense.py'),
                data_root,
                args.seed,
                dense_len=sched['dense'],
                backbone_ckpt=backbone,
            )
        finally:  # a gating teacher's run can start: the others go on
            if task in gating_data:
                gating_data[task].set()
            dense_queued[task].set()
        log(
            f'[{task}] 1/3 dense training ({sched["dense"]} '
            f'{"iters" if task != "cls" else "epochs"})'
        )
        run(
            [py, train, dense_cfg, '--work-dir', dense_dir],
            osp.join(tdir, 'dense.log'),
            priority=0,
            width=lanes.jobs if task in gating else 1,
        )
        return dense_cfg, dense_dir, last_checkpoint(dense_dir)

    # the gating teachers first (they train alone): the other tasks wait
    # until their data and config are ready (in-process work is serial)
    gating_data = {t: threading.Event() for t in gating if t in args.tasks}
    # set when a task's teacher run is queued for a slot (or cannot be)
    dense_queued = {t: threading.Event() for t in TASKS}
    pipelines: Dict[str, Future] = {}  # task -> its pipeline

    def wait_teachers_queued(task: str) -> None:
        """Wait until every other teacher of this run is queued: a task's
        student runs then never take the slot of a teacher still being
        prepared (the det teacher, which starts from the seg one, is the
        demo's critical path; before, it could wait ~3 min for the seg
        GPUSQ run that won the race to the in-process lock)."""
        for other in args.tasks:
            while other != task and not dense_queued[other].wait(1.0):
                with dense_lock:
                    job = dense_runs.get(other)
                pipe = pipelines.get(other)
                if any(f is not None and f.done() for f in (job, pipe)):
                    break  # it failed before its teacher was queued

    # teacher_check's warnings of every task, logged again at the end
    teacher_warnings: List[str] = []

    def pipeline(task: str) -> None:
        spec, sched = TASKS[task], SCHEDULES[mode][task]
        tdir = osp.join(work_dir, task)
        if task in gating_data:
            try:
                data_root = data_root_of(task)
            except BaseException:  # nobody waits forever
                gating_data[task].set()
                raise
        else:
            for ready in gating_data.values():
                ready.wait()
            data_root = data_root_of(task)
        score_root = score_root_of(task)

        # 1. dense teacher
        dense_cfg, dense_dir, dense_ckpt = dense_of(task, data_root).result()
        wait_teachers_queued(task)

        def train_run(
            name: str, cfg: str, log_name: str, priority=1, after=None
        ):
            """``tools/train.py cfg`` into ``tdir/name`` (once the run
            ``after``, a Future, is done); the work dir."""
            if after is not None:
                after.result()
            run_dir = osp.join(tdir, name)
            run(
                [py, train, cfg, '--work-dir', run_dir],
                osp.join(tdir, f'{log_name}.log'),
                priority=priority,
            )
            return run_dir

        # 2. GPUSQ: prune -> sparse KD (stage 1) -> calibrate -> QAT + KD
        gpusq_cfg = prepare(
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
        gpusq_job = pool.submit(train_run, 'gpusq', gpusq_cfg, 'gpusq')
        gpusq_dir = osp.join(tdir, 'gpusq')

        # 3. ablation: the same 2:4 fine-tune without KD
        nokd_cfg = prepare(
            osp.join(DEMO_CFG, spec['gpusq']),
            osp.join(tdir, 'nokd.py'),
            data_root,
            args.seed,
            stages=sched,
            teacher_ckpt=dense_ckpt,
            kd=False,
        )
        log(f'[{task}] 3/3 2:4 fine-tune without KD (ablation)')
        nokd_job = pool.submit(train_run, 'sparse24_nokd', nokd_cfg, 'nokd')

        # 4. one-shot: the dense weights, 2:4-pruned, no fine-tune
        log(f'[{task}] 2:4 masks on the dense weights, no fine-tune')
        oneshot_dir = osp.join(tdir, 'sparse24_oneshot')
        os.makedirs(oneshot_dir, exist_ok=True)
        with inproc:
            oneshot_ckpt = oneshot_checkpoint(
                gpusq_cfg, dense_ckpt, osp.join(oneshot_dir, 'oneshot.pth')
            )
        oneshot_job = pool.submit(
            evaluate,
            py,
            gpusq_cfg,
            oneshot_ckpt,
            oneshot_dir,
            osp.join(tdir, 'oneshot.log'),
        )

        # 5. the extra rows (full demo): label-free, INT4 with / without
        # the per-layer factors, each a gpusq run with model overrides; the
        # INT4 rows branch off the GPUSQ run at its stage-1 checkpoint
        with inproc:
            stage1_ckpt = stage1_checkpoint(gpusq_cfg, gpusq_dir, sched)
        extra_runs = {}
        for stage in spec['extra_rows'] if extra else ():
            how = EXTRA_RUNS[stage]
            cfg = prepare(
                osp.join(DEMO_CFG, spec['gpusq']),
                osp.join(tdir, f'{stage}.py'),
                data_root,
                args.seed,
                stages=sched,
                teacher_ckpt=dense_ckpt,
                model=how['model'],
                qat=how['qat'],
                resume_from=stage1_ckpt if how['branch'] else None,
            )
            log(
                f'[{task}] extra row {stage}: {how["model"]}'
                + (' (resumes the GPUSQ stage 1)' if how['branch'] else '')
            )
            after = gpusq_job if how['branch'] else None
            extra_runs[stage] = (
                cfg,
                pool.submit(train_run, stage, cfg, stage, 2, after),
                how,
            )

        # 6. more seeds of the KD vs no-KD comparison (full demo, where
        # one run cannot separate them): stage 1 with KD (the sparse24
        # budget, no QAT) and the no-KD fine-tune, per extra seed
        key = spec['metric']
        seed_jobs = {'sparse24': [], 'sparse24_nokd': []}
        for k in range(1, sched.get('kd_seeds', 1)):
            seed = args.seed + k
            for stage, kd in (('sparse24', True), ('sparse24_nokd', False)):
                name = f'{stage}_seed{seed}'
                cfg = prepare(
                    osp.join(DEMO_CFG, spec['gpusq']),
                    osp.join(tdir, f'{name}.py'),
                    data_root,
                    seed,
                    stages=sched,
                    teacher_ckpt=dense_ckpt,
                    kd=kd,
                    qat=False,
                    # stage 1 alone: an unquantized student (as the
                    # label-free row)
                    model=dict(quantization=None) if kd else None,
                )
                log(f'[{task}] seed {seed}: {stage}')
                seed_jobs[stage].append(
                    pool.submit(train_run, name, cfg, name, 2)
                )

        # every run of the task done (the first failure is raised here)
        gpusq_dir, nokd_dir = gpusq_job.result(), nokd_job.result()
        oneshot_metrics = oneshot_job.result()
        seed_values = {
            stage: [metric_at(read_val_metrics(j.result()), key) for j in jobs]
            for stage, jobs in seed_jobs.items()
        }
        extra_dirs = {
            stage: (cfg, job.result(), how)
            for stage, (cfg, job, how) in extra_runs.items()
        }
        # the measurements run alone: latencies are not taken under load
        with lanes.exclusive(), inproc:
            collect(
                task,
                dict(
                    dense=(dense_cfg, dense_dir, dense_ckpt),
                    gpusq=(gpusq_cfg, gpusq_dir),
                    nokd=(nokd_cfg, nokd_dir),
                    oneshot=(oneshot_ckpt, oneshot_metrics),
                    extra=extra_dirs,
                    seeds=seed_values,
                    score_root=score_root,
                ),
            )

    def collect(task: str, got: dict) -> None:
        """The task's rows from its finished runs; results.json updated."""
        spec, sched = TASKS[task], SCHEDULES[mode][task]
        tdir = osp.join(work_dir, task)
        key = spec['metric']
        dense_cfg, dense_dir, dense_ckpt = got['dense']
        gpusq_cfg, gpusq_dir = got['gpusq']
        nokd_cfg, nokd_dir = got['nokd']
        oneshot_ckpt, oneshot_metrics = got['oneshot']
        seed_values = got['seeds']

        # the teacher's learning curve: validations through the run
        curve = dense_curve(
            dense_dir,
            spec['metric'],
            sched['dense'],
            dense_val_interval(sched['dense']),
            'epochs' if task == 'cls' else 'iterations',
        )
        plot_curve(
            dense_dir,
            spec['metric'],
            curve,
            osp.join(tdir, 'dense_curve.png'),
            f'{task} dense teacher: train / val loss, val {spec["metric"]}',
        )
        val_loss = curve.get('val_loss')
        log(
            f'[{task}] dense learning curve: {curve["curve"]}'
            + (f'; val loss {val_loss}' if val_loss else '')
        )

        gpusq_val = read_val_metrics(gpusq_dir)
        if len(gpusq_val) != 2:  # end of stage 1, end of QAT
            raise RuntimeError(
                f'expected 2 validations in {gpusq_dir}, got {len(gpusq_val)}'
            )
        nokd_ckpt = last_checkpoint(nokd_dir)
        sparse = measure_model(nokd_cfg, nokd_ckpt)
        # the final student: its FP32 and 2:4+INT8 ONNX exports too
        final = measure_model(
            gpusq_cfg,
            last_checkpoint(gpusq_dir),
            deploy=dict(
                spec['deploy'],
                out_dir=osp.join(tdir, 'onnx'),
                runs=DEPLOY_RUNS[mode],
            ),
        )
        results = [
            (
                'dense',
                metric_at(read_val_metrics(dense_dir), key),
                measure_model(dense_cfg, dense_ckpt),
            ),
            (
                'sparse24_oneshot',
                metric_at([oneshot_metrics], key),
                measure_model(gpusq_cfg, oneshot_ckpt),
            ),
            ('sparse24', metric_at(gpusq_val, key, 0), sparse),
            (
                'sparse24_nokd',
                metric_at(read_val_metrics(nokd_dir), key),
                sparse,
            ),
            ('sparse24_int8', metric_at(gpusq_val, key), final),
        ]
        for stage, (cfg, run_dir, how) in got['extra'].items():
            val = read_val_metrics(run_dir)
            # end of stage 1 (not in a branch: the GPUSQ run's), end of QAT
            want = 1 + (how['qat'] and not how['branch'])
            if len(val) != want:
                raise RuntimeError(
                    f'expected {want} validation(s) in {run_dir}, '
                    f'got {len(val)}'
                )
            results.append(
                (
                    stage,
                    metric_at(val, key),
                    measure_model(cfg, last_checkpoint(run_dir)),
                )
            )
        paired = {}
        score_root = got['score_root']
        if spec.get('paired') or score_root:
            stage1_ckpt = stage1_checkpoint(gpusq_cfg, gpusq_dir, sched)
            paired = paired_rows(
                {
                    'dense': (dense_cfg, dense_ckpt),
                    'sparse24_oneshot': (gpusq_cfg, oneshot_ckpt),
                    'sparse24_nokd': (nokd_cfg, nokd_ckpt),
                    'sparse24': (gpusq_cfg, stage1_ckpt),
                    'sparse24_int8': (gpusq_cfg, last_checkpoint(gpusq_dir)),
                },
                # every config has the same test split: one set of options
                cfg_options=test_set_options(gpusq_cfg, score_root)
                if score_root
                else None,
                # collect runs with every slot: one scoring per slot, each
                # with its share of the cores
                workers=lanes.jobs,
                threads=lanes.threads(1),
            )
        for stage, value, measured in results:
            row = dict(task=task, stage=stage, metric=key, value=value)
            row.update(measured, size_mb=round(measured['size_mb'], 4))
            if stage in paired:
                row['paired'] = paired[stage]
                if score_root:
                    # the row's value is the scoring set's; the val set's
                    # (the training run's own validation) is kept
                    row['val_value'] = value
                    row['value'] = paired[stage]['rescored']
            elif score_root:
                raise RuntimeError(
                    f'[{task}] row {stage} is not scored on the scoring set '
                    f"{score_root}: its value would be the val set's"
                )
            if stage == 'dense':
                row.update(curve)
            if seed_values.get(stage):
                if score_root:
                    raise RuntimeError(
                        f'[{task}] kd_seeds and a scoring set: the extra '
                        "seeds' values are the val set's"
                    )
                # seed args.seed first, then the extra seeds
                row.update(seed_stats([value] + seed_values[stage]))
            rows.append(row)
        rows.sort(
            key=lambda r: (
                list(TASKS).index(r['task']),
                STAGES.index(r['stage']),
            )
        )
        # the targets are the full schedule's; --quick teachers are short
        targets = {}
        if not args.quick and 'teacher_target' in spec:
            targets[task] = spec['teacher_target']
        warn = teacher_check(rows, targets)
        teacher_warnings.extend(warn)
        log(
            f'[{task}] done:\n' + table([r for r in rows if r['task'] == task])
        )
        for line in warn:
            log(line)
        write_results(rows, work_dir)

    for t in RUN_ORDER:
        if t in args.tasks:
            pipelines[t] = pool.submit(pipeline, t)
    jobs = list(pipelines.values())
    try:
        done, _ = wait_futures(jobs, return_when=FIRST_EXCEPTION)
        for job in jobs:  # the first failure, in task order
            if job in done and job.exception() is not None:
                raise job.exception()
    except BaseException:
        abort_runs()  # stop the other tasks' runs: they cannot be reported
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    log(
        f'all done in {time.time() - t_start:.0f} s ({mode}); results in '
        f'{work_dir}/results.json and results.png\n' + table(rows)
    )
    for line in teacher_warnings:  # again, under the final table
        log(line)
    return rows


if __name__ == '__main__':
    sys.path.insert(0, ROOT)
    try:
        main()
    except KeyboardInterrupt:
        log('interrupted: the runs in progress were stopped')
        sys.exit(130)
