"""The README's main command, ``tools/demo.py --quick``, end to end."""

import json
import os.path as osp
import sys

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _import_demo():
    sys.path.insert(0, osp.join(REPO_ROOT, 'tools'))
    try:
        import demo
    finally:
        sys.path.pop(0)
    return demo


def test_full_schedule_is_the_demo_configs_defaults():
    """A user running the demo configs by hand gets the demo's lengths."""
    from mmengine.config import Config

    demo = _import_demo()
    # every task runs, each after the task its backbone comes from
    assert sorted(demo.RUN_ORDER) == sorted(demo.TASKS)
    for task, spec in demo.TASKS.items():
        src = spec.get('backbone_from')
        if src:
            assert demo.RUN_ORDER.index(src) < demo.RUN_ORDER.index(task)
    for task, spec in demo.TASKS.items():
        sched = demo.SCHEDULES['full'][task]
        dense = Config.fromfile(osp.join(demo.DEMO_CFG, spec['dense']))
        gpusq = Config.fromfile(osp.join(demo.DEMO_CFG, spec['gpusq']))
        key = 'max_iters' if demo._iter_based(dense) else 'max_epochs'
        assert dense.train_cfg[key] == sched['dense'], task
        assert gpusq.train_cfg[key] == sched['stage1'] + sched['qat'], task
        assert gpusq.train_cfg['val_interval'] == sched['stage1'], task
        hook = [
            h for h in gpusq.custom_hooks if h['type'] == 'gpusq_mm.GPUSQHook'
        ]
        begin = hook[0].get('qat_begin_iter', hook[0].get('qat_begin_epoch'))
        assert begin == sched['stage1'], task
        unit = 'iter' if key == 'max_iters' else 'epoch'
        assert gpusq.model.teacher.checkpoint.endswith(
            f'{unit}_{sched["dense"]}.pth'
        ), task


QUICK_STAGES = (
    'dense',
    'sparse24_oneshot',
    'sparse24',
    'sparse24_nokd',
    'sparse24_int8',
)
DEPLOY = (
    'onnx_fp32_mb',
    'onnx_int8_mb',
    'onnx_fp32_ms',
    'onnx_int8_ms',
    'onnx_int8_ort_mb',
    'onnx_int8_ort_ms',
)


def test_quick_runs_the_extra_rows_only_when_asked():
    """The extra training rows are full-demo rows; --help says so."""
    demo = _import_demo()
    assert set(demo.STAGES) == set(QUICK_STAGES) | set(demo.EXTRA_RUNS)
    assert demo.TASKS['det']['extra_rows'] == ()
    for task in ('cls', 'seg'):
        assert set(demo.TASKS[task]['extra_rows']) == {
            'sparse24_labelfree',
            'sparse24_int4',
            'sparse24_int4_uniform',
        }
    runs = demo.EXTRA_RUNS
    # equal budgets: label-free = stage 1 (as sparse24), INT4 = the whole
    # pipeline (as sparse24_int8), with and without the layer factors; the
    # INT4 rows branch off the GPUSQ run after its (shared) stage 1
    assert runs['sparse24_labelfree']['qat'] is False
    assert runs['sparse24_labelfree']['branch'] is False
    assert runs['sparse24_int4']['branch'] is True
    assert runs['sparse24_int4_uniform']['branch'] is True
    assert runs['sparse24_labelfree']['model']['distill'] == dict(
        hard='teacher'
    )
    assert runs['sparse24_int4']['model'] == dict(quantization='int4')
    assert runs['sparse24_int4_uniform']['model'] == dict(
        quantization='int4', distill=dict(weighting=dict(mode='uniform'))
    )
    assert not demo.parse_args(['--quick']).all_rows
    assert demo.parse_args(['--quick', '--all-rows']).all_rows


def test_extra_row_configs(tmp_path, cls_data_root):
    """The prepared configs carry the overrides and a matching schedule."""
    from mmengine.config import Config

    demo = _import_demo()
    spec, sched = demo.TASKS['cls'], demo.SCHEDULES['quick']['cls']
    got = {}
    for stage, how in demo.EXTRA_RUNS.items():
        path = demo.prepare_config(
            osp.join(demo.DEMO_CFG, spec['gpusq']),
            str(tmp_path / f'{stage}.py'),
            cls_data_root,
            seed=0,
            stages=sched,
            teacher_ckpt='dense.pth',
            model=how['model'],
            qat=how['qat'],
            resume_from='gpusq/epoch_3.pth' if how['branch'] else None,
        )
        got[stage] = Config.fromfile(path)
    free = got['sparse24_labelfree']
    assert free.model.distill.hard == 'teacher'
    assert not free.get('resume', False) and free.load_from == 'dense.pth'
    assert free.model.quantization is None
    assert free.train_cfg.max_epochs == sched['stage1']
    hook = [h for h in free.custom_hooks if h['type'].endswith('GPUSQHook')]
    assert 'qat_begin_epoch' not in hook[0]
    for stage in ('sparse24_int4', 'sparse24_int4_uniform'):
        cfg = got[stage]
        assert cfg.model.quantization == 'int4'
        assert cfg.train_cfg.max_epochs == sched['stage1'] + sched['qat']
        assert cfg.model.teacher.checkpoint == 'dense.pth'
        # MMEngine resume: iteration, optimizer and schedulers carry on
        assert cfg.resume is True and cfg.load_from == 'gpusq/epoch_3.pth'
    assert got['sparse24_int4_uniform'].model.distill.weighting.mode == (
        'uniform'
    )
    assert 'distill' not in got['sparse24_int4'].model


def test_dense_curve_and_seed_stats(tmp_path):
    """The teacher's curve comes from its validations, in order."""
    demo = _import_demo()  # imports gpusq_demo (tools/) too
    from gpusq_demo.results import dense_curve, seed_stats

    assert demo.dense_val_interval(30) == 7  # 7, 14, 21, 28 and 30
    run = tmp_path / '20260101_000000' / 'vis_data'
    run.mkdir(parents=True)
    lines = [dict(lr=0.1, loss=2.0, iter=10, step=10)]
    for acc in (50.0, 80.0, 90.0, 91.0, 91.5):
        lines.append({'accuracy/top1': acc, 'step': 0})
    (run / 'scalars.json').write_text(
        '\n'.join(json.dumps(x) for x in lines) + '\n'
    )
    got = dense_curve(str(tmp_path), 'accuracy/top1', 30, 7, 'epochs')
    assert got['curve'] == [
        [7, 50.0],
        [14, 80.0],
        [21, 90.0],
        [28, 91.0],
        [30, 91.5],
    ]
    assert got['last_gain'] == 0.5
    assert 'val_loss' not in got  # none logged
    # with ValLossHook: val_loss at every validation, by step
    for i, row in enumerate(lines[1:]):
        row['val_loss'] = 1.0 - 0.1 * i
    (run / 'scalars.json').write_text(
        '\n'.join(json.dumps(x) for x in lines) + '\n'
    )
    got = dense_curve(str(tmp_path), 'accuracy/top1', 30, 7, 'epochs')
    assert got['val_loss'] == [
        [7, 1.0],
        [14, 0.9],
        [21, 0.8],
        [28, 0.7],
        [30, 0.6],
    ]
    del lines[2]['val_loss']
    (run / 'scalars.json').write_text(
        '\n'.join(json.dumps(x) for x in lines) + '\n'
    )
    with pytest.raises(RuntimeError, match='at some validations only'):
        dense_curve(str(tmp_path), 'accuracy/top1', 30, 7, 'epochs')
    with pytest.raises(RuntimeError, match='expected 4 validations'):
        dense_curve(str(tmp_path), 'accuracy/top1', 40, 10, 'epochs')
    stats = seed_stats([90.0, 92.0, 94.0])
    assert stats == dict(value=92.0, values=[90.0, 92.0, 94.0], std=2.0)


def test_scoring_set_holds_the_val_set_and_moves_the_test_split(tmp_path):
    """The det rows are scored on a larger set: the val set's images (the
    same files and boxes) and more; the configs' test split is moved to it,
    nothing else."""
    import hashlib

    from mmengine.config import Config

    from gpusq_mm.datasets.generate import generate_task

    demo = _import_demo()
    for mode in ('full', 'quick'):
        for task, sched in demo.SCHEDULES[mode].items():
            if sched.get('score'):
                # the extra seeds would be scored on the val set
                assert sched['score'] > sched['data'][1], (mode, task)
                assert sched.get('kd_seeds', 1) == 1, (mode, task)
    val = generate_task('det', str(tmp_path / 'data'), 6, 5, seed=0)
    score = generate_task('det', str(tmp_path / 'score'), 1, 9, seed=0)

    def digest(root, name):
        with open(osp.join(root, 'val2017', name), 'rb') as f:
            return hashlib.md5(f.read()).hexdigest()

    with open(osp.join(val, 'annotations/instances_val2017.json')) as f:
        small = json.load(f)
    with open(osp.join(score, 'annotations/instances_val2017.json')) as f:
        big = json.load(f)
    assert len(big['images']) == 9
    ids = {im['id'] for im in small['images']}
    assert [im for im in big['images'] if im['id'] in ids] == small['images']
    for im in small['images']:
        assert digest(val, im['file_name']) == digest(score, im['file_name'])
    assert [a for a in big['annotations'] if a['image_id'] in ids] == small[
        'annotations'
    ]

    spec = demo.TASKS['det']
    cfg_path = demo.prepare_config(
        osp.join(demo.DEMO_CFG, spec['gpusq']),
        str(tmp_path / 'gpusq.py'),
        val.rstrip('/') + '/',
        seed=0,
        stages=demo.SCHEDULES['quick']['det'],
        teacher_ckpt='dense.pth',
    )
    root = score.rstrip('/') + '/'
    opts = demo.test_set_options(cfg_path, root)
    assert opts == {
        'test_dataloader.dataset.data_root': root,
        'test_evaluator.ann_file': root + 'annotations/instances_val2017.json',
    }
    cfg = Config.fromfile(cfg_path)
    cfg.merge_from_dict(opts)
    assert cfg.val_dataloader.dataset.data_root == val.rstrip('/') + '/'
    assert cfg.val_evaluator.ann_file.startswith(val)


@pytest.mark.slow
def test_demo_quick_writes_all_rows(tmp_path):
    demo = _import_demo()
    rows = demo.main(['--work-dir', str(tmp_path), '--quick'])
    with open(tmp_path / 'results.json') as f:
        saved = json.load(f)
    assert saved == rows
    assert len(rows) == 15
    assert {(r['task'], r['stage']) for r in rows} == {
        (t, s) for t in ('det', 'seg', 'cls') for s in QUICK_STAGES
    }
    metrics = {'det': 'coco/bbox_mAP', 'seg': 'mIoU', 'cls': 'accuracy/top1'}
    value = {(r['task'], r['stage']): r['value'] for r in rows}
    for r in rows:
        # every row is scored image by image (det: COCO bbox mAP from
        # each image's matches) on the same images: the val set, or (det)
        # the larger scoring set, whose value is then the row's
        base = {'task', 'stage', 'metric', 'value', 'size_mb', 'paired'}
        p = r.pop('paired')
        scoring = demo.SCHEDULES['quick'][r['task']].get('score')
        if scoring:
            base |= {'val_value'}
            assert p['rescored'] == r['value'], (r, p)
            assert isinstance(r['val_value'], float), r
        else:
            assert abs(p['rescored'] - r['value']) <= 0.011, (r, p)
        images = scoring or demo.SCHEDULES['quick'][r['task']]['data'][1]
        assert p['images'] == images, (r, p)
        others = {
            'sparse24': {'sparse24_nokd', 'dense'},
            'sparse24_int8': {'dense'},
            'sparse24_oneshot': {'sparse24'},
        }.get(r['stage'], set())
        assert set(p) == {f'vs_{o}' for o in others} | {'rescored', 'images'}
        for other in others:
            c = p[f'vs_{other}']
            assert c['images'] == images, c
            assert abs(c['a'] - value[r['task'], other]) <= 0.011, c
            assert abs(c['b'] - r['value']) <= 0.011, c
            assert c['ci95'][0] <= c['ci95'][1], c
            assert c['one_image_a'] >= 0 and c['one_image_b'] >= 0, c
        r['paired'] = p
        if r['stage'] == 'sparse24_int8':  # the final student: exported
            assert set(r) == base | set(DEPLOY) | {
                'onnx_cosine',
                'onnx_graph_cosine',
            }
        elif r['stage'] == 'dense':  # the teacher's learning curve
            assert set(r) == base | {
                'curve',
                'curve_unit',
                'last_gain',
                'val_loss',  # the dense configs' ValLossHook
            }
            assert [p[0] for p in r['val_loss']] == [p[0] for p in r['curve']]
            assert all(0 < p[1] < 100 for p in r['val_loss']), r
            length = demo.SCHEDULES['quick'][r['task']]['dense']
            step = demo.dense_val_interval(length)
            steps = list(range(step, length + 1, step))
            steps += [length] if steps[-1] != length else []
            assert [p[0] for p in r['curve']] == steps, r
            assert r['curve'][-1][1] == r.get('val_value', r['value'])
            assert r['last_gain'] == r['curve'][-1][1] - r['curve'][-2][1]
            assert osp.getsize(tmp_path / r['task'] / 'dense_curve.png')
        else:
            assert set(r) == base
        assert r['metric'] == metrics[r['task']]
        assert isinstance(r['value'], float) and r['value'] >= 0
        assert r['size_mb'] > 0
    size = {(r['task'], r['stage']): r['size_mb'] for r in rows}
    for task in ('det', 'seg', 'cls'):
        # 2:4 saves storage (one-shot too), INT8 saves more
        assert size[task, 'sparse24'] < size[task, 'dense']
        assert size[task, 'sparse24_oneshot'] == size[task, 'sparse24']
        assert size[task, 'sparse24_int8'] < size[task, 'sparse24']
    final = {r['task']: r for r in rows if r['stage'] == 'sparse24_int8'}
    for task, r in final.items():
        # the ONNX files: INT8 (weights int8, 2:4 pruned values still
        # stored) well under FP32; latencies measured; the INT8 export
        # computes what the fake-quant student computes
        assert 0 < r['onnx_int8_mb'] < 0.5 * r['onnx_fp32_mb'], task
        assert r['onnx_fp32_ms'] > 0 and r['onnx_int8_ms'] > 0, task
        # the onnxruntime-only copy (biases / Convs folded): measured too
        assert 0 < r['onnx_int8_ort_mb'] < r['onnx_fp32_mb'], task
        assert r['onnx_int8_ort_ms'] > 0, task
        assert osp.isfile(tmp_path / task / 'onnx' / 'ort_opt.onnx')
        assert r['onnx_graph_cosine'] > 0.99, task
        assert r['onnx_cosine'] > 0.99, task
    # the ONNX columns are in the printed table
    assert 'int8 MB' in demo.table(rows).splitlines()[0]
    assert (tmp_path / 'results.png').stat().st_size > 10_000
    for task in ('det', 'seg', 'cls'):
        assert osp.isfile(tmp_path / task / 'gpusq' / 'student_final.pth')
        assert osp.isfile(tmp_path / task / 'onnx' / 'quant.onnx')
    _run_bench_block(tmp_path)


def _run_bench_block(demo_dir):
    """bench/README.md's bash block (``tools/test.py``, ``export_onnx.py``
    and ``eval_onnx.py`` on the demo's cls and seg students), run as
    written in a scratch folder whose ``work_dirs/demo`` is ``demo_dir``
    (``python``: this interpreter; stops at the first failure)."""
    import os
    import re
    import subprocess

    with open(osp.join(REPO_ROOT, 'bench', 'README.md')) as f:
        (block,) = re.findall(r'```bash\n(.*?)```', f.read(), re.S)
    assert 'W=work_dirs/demo' in block
    root = demo_dir / 'bench_block'
    (root / 'work_dirs').mkdir(parents=True)
    os.symlink(demo_dir, root / 'work_dirs' / 'demo')
    for name in ('tools', 'configs'):
        os.symlink(osp.join(REPO_ROOT, name), root / name)
    (root / 'block.sh').write_text(block)
    path = osp.dirname(sys.executable) + os.pathsep + os.environ['PATH']
    env = dict(os.environ, PATH=path, PYTHONPATH=REPO_ROOT)
    proc = subprocess.run(
        ['bash', '-e', 'block.sh'],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for task in ('cls', 'seg'):
        assert (demo_dir / task / 'student.onnx').stat().st_size > 0, task
    # eval_onnx exits non-zero when the export scores worse than PyTorch
    assert out.count('same prediction') == 2, out[-4000:]


def test_detector_backbone_starts_from_the_seg_model(
    tmp_path, coco_data_root, dense_checkpoint
):
    """The demo's dense detector loads the dense seg model's Swin backbone.

    mmseg's and mmdet's Swin share their state-dict layout; every backbone
    tensor must arrive (mmdet's Swin loads with ``strict=False``, so a
    naming drift would silently leave the detector from scratch).
    """
    import torch
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from gpusq_mm.registry import MODELS

    demo = _import_demo()
    seg, ckpt = dense_checkpoint(
        osp.join(demo.DEMO_CFG, demo.TASKS['seg']['dense']),
        str(tmp_path / 'seg_dense.pth'),
        seed=1,
    )

    spec = demo.TASKS['det']
    assert spec['backbone_from'] == 'seg'
    dumped = demo.prepare_config(
        osp.join(demo.DEMO_CFG, spec['dense']),
        str(tmp_path / 'dense.py'),
        coco_data_root.rstrip('/') + '/',
        seed=0,
        dense_len=2,
        backbone_ckpt=ckpt,
    )
    det_cfg = Config.fromfile(dumped)
    torch.manual_seed(2)
    with DefaultScope.overwrite_default_scope('mmdet'):
        det = MODELS.build(det_cfg.model)
    det.init_weights()
    want = seg.backbone.state_dict()
    got = det.backbone.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_oneshot_checkpoint_is_the_dense_model_2to4_pruned(
    tmp_path, dense_checkpoint
):
    """The one-shot row's weights: the dense ones, magnitude 2:4, no more."""
    import torch

    from gpusq_mm.sparsity import compute_2to4_mask, is_2to4

    demo = _import_demo()
    spec = demo.TASKS['cls']
    dense, ckpt = dense_checkpoint(
        osp.join(demo.DEMO_CFG, spec['dense']),
        str(tmp_path / 'dense.pth'),
        seed=3,
    )
    out = demo.oneshot_checkpoint(
        osp.join(demo.DEMO_CFG, spec['gpusq']),
        ckpt,
        str(tmp_path / 'oneshot.pth'),
    )
    state = torch.load(out, map_location='cpu', weights_only=False)[
        'state_dict'
    ]
    assert int(state['gpusq_stage']) == 1  # a stage-1 (sparse) student
    masks = [k for k in state if k.endswith('.sparsity_mask')]
    assert len(masks) > 10
    pruned = 0
    for key, want in dense.state_dict().items():
        got = state['architecture.' + key]
        mask_key = 'architecture.' + key[: -len('weight')] + 'sparsity_mask'
        if key.endswith('.weight') and mask_key in state:
            # magnitude masks: the 2 largest of every 4 kept, unchanged
            mask = state[mask_key]
            assert torch.equal(mask, compute_2to4_mask(want)), key
            assert torch.equal(got, want * mask) and is_2to4(got), key
            pruned += 1
        else:
            assert torch.equal(got, want), key
    assert pruned == len(masks)
    # a dense checkpoint of another model is refused, naming both files
    seg, seg_ckpt = dense_checkpoint(
        osp.join(demo.DEMO_CFG, demo.TASKS['seg']['dense']),
        str(tmp_path / 'seg.pth'),
        seed=3,
    )
    with pytest.raises(RuntimeError, match='does not fit the student'):
        demo.oneshot_checkpoint(
            osp.join(demo.DEMO_CFG, spec['gpusq']),
            seg_ckpt,
            str(tmp_path / 'bad.pth'),
        )
    assert not osp.exists(tmp_path / 'bad.pth')


def test_val_loss_on_the_teachers_only(tmp_path, cls_data_root):
    """The dense runs log val_loss (the learning curve); the student runs
    drop the hook they inherit (extra loss forwards, no row uses them)."""
    from mmengine.config import Config

    demo = _import_demo()
    spec, sched = demo.TASKS['cls'], demo.SCHEDULES['quick']['cls']

    def hooks(name, **kw):
        path = demo.prepare_config(
            osp.join(demo.DEMO_CFG, spec[name]),
            str(tmp_path / f'{name}_{len(kw)}.py'),
            cls_data_root,
            seed=0,
            **kw,
        )
        return [h['type'] for h in Config.fromfile(path).custom_hooks]

    assert hooks('dense', dense_len=sched['dense']) == ['gpusq_mm.ValLossHook']
    gpusq = Config.fromfile(osp.join(demo.DEMO_CFG, spec['gpusq']))
    assert 'gpusq_mm.ValLossHook' in [h['type'] for h in gpusq.custom_hooks]
    student = dict(stages=sched, teacher_ckpt='dense.pth')
    assert hooks('gpusq', **student) == ['gpusq_mm.GPUSQHook']
    assert hooks('gpusq', kd=False, **student) == ['gpusq_mm.SparsityHook']


def test_teacher_check_flags_a_teacher_below_its_target():
    """A dense row below its task's target gets ``teacher_ok: False`` and
    a warning naming the task, the value and the target; rows of other
    stages and tasks without a target are left alone."""
    _import_demo()
    from gpusq_demo.results import teacher_check
    from gpusq_demo.schedules import TASKS

    # the targets the full demo checks: the teacher targets
    assert {t: TASKS[t]['teacher_target'] for t in TASKS} == dict(
        det=0.40, seg=80.0, cls=90.0
    )
    rows = [
        dict(task='cls', stage='dense', metric='accuracy/top1', value=21.2),
        dict(task='cls', stage='sparse24', metric='accuracy/top1', value=20.0),
        dict(task='seg', stage='dense', metric='mIoU', value=82.6),
        dict(task='det', stage='dense', metric='coco/bbox_mAP', value=0.05),
    ]
    warnings = teacher_check(rows, dict(cls=90.0, seg=80.0))
    assert len(warnings) == 1
    assert '[cls]' in warnings[0] and '21.2' in warnings[0]
    assert '90' in warnings[0]
    assert rows[0]['teacher_ok'] is False and rows[0]['teacher_target'] == 90
    assert rows[2]['teacher_ok'] is True
    assert 'teacher_ok' not in rows[1]  # not a dense row
    assert 'teacher_ok' not in rows[3]  # no target given (e.g. --quick)
