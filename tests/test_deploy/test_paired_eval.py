"""Paired comparison of two checkpoints (tools/analysis/compare_runs.py)."""

import json

import numpy as np
import pytest

from gpusq_mm.utils.paired_eval import metric_of, paired_compare

from .helpers import CONFIGS, make_student
from .test_report_trt import _tool


def _seg(inter, union):
    return dict(
        kind='IoUMetric',
        key='mIoU',
        stats=dict(
            intersect=np.asarray(inter, float), union=np.asarray(union, float)
        ),
    )


def _cls(correct):
    return dict(
        kind='Accuracy',
        key='accuracy/top1',
        stats=dict(correct=np.asarray(correct, float)),
    )


def test_metric_of_sums_areas_over_images_then_averages_classes():
    # 2 images, 3 classes; class 2 is absent everywhere (NaN, ignored)
    s = _seg([[2, 1, 0], [3, 0, 0]], [[4, 2, 0], [6, 2, 0]])
    # class 0: 5 / 10, class 1: 1 / 4 -> (0.5 + 0.25) / 2
    assert metric_of(s, [0, 1]) == pytest.approx(37.5)
    # resampling image 0 twice: 4 / 8 and 2 / 4
    assert metric_of(s, [0, 0]) == pytest.approx(50.0)
    assert metric_of(_cls([1, 0, 1, 1]), [0, 1, 2, 3]) == 75.0


def test_paired_compare_hand_counts():
    a = _cls([1] * 10 + [0] * 10)  # 50 %
    # B is right on every image A is right on, plus 2 more
    b = _cls([1] * 12 + [0] * 8)  # 60 %
    res = paired_compare(a, b, boot=500)
    assert (res['a'], res['b'], res['diff'], res['images']) == (
        50.0,
        60.0,
        10.0,
        20,
    )
    # B is never below A on any resample of the same images
    assert res['ci95'][0] >= 0 and res['p_b_above'] > 0.8
    # leaving out one image of 20 at 50 %: 10 / 19 = 52.63 %
    assert res['one_image_a'] == pytest.approx(100 * 10 / 19 - 50, abs=1e-3)
    # the same model against itself: exactly 0, every resample
    same = paired_compare(a, a, boot=100)
    assert same['diff'] == 0 and same['ci95'] == [0.0, 0.0]
    with pytest.raises(ValueError, match='different numbers of images'):
        paired_compare(a, _cls([1, 0]), boot=100)
    with pytest.raises(ValueError, match='at least 100'):
        paired_compare(a, b, boot=10)
    with pytest.raises(ValueError, match='different metrics'):
        paired_compare(a, _seg([[1]], [[2]]), boot=100)


def test_compare_runs_tool_on_the_generated_val_set(
    tmp_path, cls_cfg_options, capsys
):
    """The tool scores two tiny classifiers image by image; its full-set
    numbers are the evaluator's (checked inside), a model against itself
    differs by exactly 0."""
    a, b = str(tmp_path / 'a.pth'), str(tmp_path / 'b.pth')
    make_student('cls', a, stage=1)
    make_student('cls', b, stage=2)
    tool = _tool('analysis', 'compare_runs.py')
    out = str(tmp_path / 'cmp.json')
    args = ['--boot', '200', '--cfg-options'] + cls_cfg_options
    res = tool.main([CONFIGS['cls'], a, b, '--out', out] + args)
    assert res['images'] == 12  # the generated val split
    with open(out) as f:
        assert json.load(f) == res
    printed = capsys.readouterr().out
    assert 'accuracy/top1 on 12 images' in printed
    assert 'one image moves the metric by up to' in printed
    same = tool.main([CONFIGS['cls'], a, a] + args)
    assert same['diff'] == 0 and same['ci95'] == [0.0, 0.0]


def test_compare_runs_tool_on_a_detector(tmp_path, coco_cfg_options, capsys):
    """COCO bbox mAP: each image's pycocotools matches are kept, the
    full-set value is checked against the evaluator's inside; masks are not
    compared, and an evaluator without bbox is refused, named."""
    a, b = str(tmp_path / 'a.pth'), str(tmp_path / 'b.pth')
    make_student('det', a, stage=0)
    make_student('det', b, stage=1)
    tool = _tool('analysis', 'compare_runs.py')
    args = ['--boot', '100', '--cfg-options'] + coco_cfg_options
    res = tool.main([CONFIGS['det'], a, b] + args)
    assert res['key'] == 'coco/bbox_mAP' and res['images'] == 4
    assert 0 <= res['a'] <= 1 and res['ci95'][0] <= res['ci95'][1]
    assert 'coco/bbox_mAP on 4 images' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tool.main(
            [CONFIGS['det'], a, b]
            + args
            + ['test_evaluator.metric=segm', 'test_evaluator.type=CocoMetric']
        )
    assert "metric=['segm']" in capsys.readouterr().err


def test_plain_config_checkpoint_with_applied_masks_loads(
    tmp_path, dense_checkpoint
):
    """A plain config trained with ``gpusq_mm.SparsityHook`` (the no-KD
    ablation) saves mask buffers the plain model lacks: they are dropped
    once each weight is zero where its mask is; a weight that breaks its
    mask is an error naming the key."""
    import torch

    from gpusq_mm.deploy import load_student

    config = CONFIGS['cls'].replace('_gpusq.py', '_dense.py')
    model, path = dense_checkpoint(config, str(tmp_path / 'd.pth'))
    state = model.state_dict()
    name = next(k for k in state if k.endswith('ffn.layers.0.0.weight'))
    mask = torch.ones_like(state[name])
    mask[:, ::2] = 0  # a 2:4 pattern
    prefix = name[: -len('weight')]
    state[name] = state[name] * mask
    state[prefix + 'sparsity_mask'] = mask
    state[prefix + 'sparsity_mask_computed'] = torch.tensor(True)
    torch.save({'state_dict': state}, path)
    loaded, _ = load_student(config, path)
    assert torch.equal(loaded.state_dict()[name], state[name])
    state[name] = state[name] + (1 - mask)  # pruned entries not zero
    torch.save({'state_dict': state}, path)
    with pytest.raises(KeyError, match='sparsity_mask is not applied'):
        load_student(config, path)


def test_detector_scored_without_masks_side_by_side(
    tmp_path, coco_cfg_options, monkeypatch
):
    """Scoring a detector switches its mask branch off (bbox mAP only):
    the same boxes as with masks, up to float rounding, and no masks
    predicted while it is scored; two worker processes score exactly what
    one process scores in turn."""
    import copy

    import torch
    from mmdet.models.roi_heads import StandardRoIHead
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    from gpusq_mm.deploy import load_student
    from gpusq_mm.utils.paired_eval import drop_mask_branch, score_many

    mask_calls = []
    predict_mask = StandardRoIHead.predict_mask

    def counted(self, *args, **kwargs):
        mask_calls.append(1)
        return predict_mask(self, *args, **kwargs)

    monkeypatch.setattr(StandardRoIHead, 'predict_mask', counted)
    opts = dict(opt.split('=', 1) for opt in coco_cfg_options)
    a, b = str(tmp_path / 'a.pth'), str(tmp_path / 'b.pth')
    make_student('det', a, stage=0)
    make_student('det', b, stage=1)

    model, cfg = load_student(CONFIGS['det'], a, opts)
    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        batch = next(iter(Runner.build_dataloader(loader_cfg)))
    with torch.no_grad():
        (full,) = model.test_step(batch)
        assert mask_calls  # the spy sees the mask branch run
        assert drop_mask_branch(model) == 1
        assert drop_mask_branch(model) == 0  # nothing left to drop
        (boxes,) = model.test_step(batch)
    full, boxes = full.pred_instances, boxes.pred_instances
    assert len(full) > 0 and 'masks' in full and 'masks' not in boxes
    assert torch.equal(full.labels, boxes.labels)
    assert torch.allclose(full.scores, boxes.scores)
    assert torch.allclose(full.bboxes, boxes.bboxes, atol=1e-3)

    jobs = [(CONFIGS['det'], a, opts), (CONFIGS['det'], b, opts)]
    before = torch.get_num_threads()
    mask_calls.clear()
    one = score_many(jobs, workers=1, threads=1)  # in this process
    assert not mask_calls  # per_image_stats predicted no masks
    assert torch.get_num_threads() == before  # the caller's threads kept
    two = score_many(jobs, workers=2, threads=1)
    every = np.arange(4)
    resample = np.array([0, 0, 3, 1])
    for x, y in zip(one, two):
        assert x['reported'] == y['reported']
        assert np.array_equal(x['stats']['images'], y['stats']['images'])
        for idx in (every, resample):
            assert metric_of(x, idx) == metric_of(y, idx)
    with pytest.raises(ValueError, match='workers must be >= 1'):
        score_many(jobs, workers=0)
