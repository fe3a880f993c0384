"""The README's main command, ``tools/demo.py --quick``, end to end."""

import json
import os.path as osp
import sys

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.mark.slow
def test_demo_quick_writes_all_rows(tmp_path):
    sys.path.insert(0, osp.join(REPO_ROOT, 'tools'))
    try:
        import demo
    finally:
        sys.path.pop(0)
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
