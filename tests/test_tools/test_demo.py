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


@pytest.mark.slow
def test_demo_quick_writes_all_rows(tmp_path):
    demo = _import_demo()
    rows = demo.main(['--work-dir', str(tmp_path), '--quick'])
    with open(tmp_path / 'results.json') as f:
        saved = json.load(f)
    assert saved == rows
    assert len(rows) == 12
    assert {(r['task'], r['stage']) for r in rows} == {
        (t, s) for t in ('det', 'seg', 'cls') for s in demo.STAGES
    }
    metrics = {'det': 'coco/bbox_mAP', 'seg': 'mIoU', 'cls': 'accuracy/top1'}
    for r in rows:
        assert set(r) == {'task', 'stage', 'metric', 'value', 'size_mb'}
        assert r['metric'] == metrics[r['task']]
        assert isinstance(r['value'], float) and r['value'] >= 0
        assert r['size_mb'] > 0
    size = {(r['task'], r['stage']): r['size_mb'] for r in rows}
    for task in ('det', 'seg', 'cls'):
        # 2:4 saves storage, INT8 saves more
        assert size[task, 'sparse24'] < size[task, 'dense']
        assert size[task, 'sparse24_int8'] < size[task, 'sparse24']
    assert (tmp_path / 'results.png').stat().st_size > 10_000
    for task in ('det', 'seg', 'cls'):
        assert osp.isfile(tmp_path / task / 'gpusq' / 'student_final.pth')


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
