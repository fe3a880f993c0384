"""End to end: real Swin detectors / segmentors / classifiers stay 2:4.

Each test builds the upstream OpenMMLab model from its shipped config,
shrunk (narrow Swin, small images), trains it a few iterations with a real
Runner and ``SparsityHook`` on generated in-memory data, and checks that at
least 90 % of the backbone + neck Linear / Conv weights are exactly 2:4.
"""

import os

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from torch.utils.data import Dataset

import gpusq_mm  # noqa: F401
from gpusq_mm.sparsity import is_2to4, layer_kind, masked_layers

pytestmark = pytest.mark.slow

SWIN = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])
SIZE = 64


class _Generated(Dataset):
    """A few random images with one box / mask / class each."""

    def __init__(self, make, n=4):
        self.make, self.n = make, n

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        torch.manual_seed(idx)
        img = torch.randint(0, 255, (3, SIZE, SIZE), dtype=torch.uint8)
        meta = dict(
            img_shape=(SIZE, SIZE),
            ori_shape=(SIZE, SIZE),
            pad_shape=(SIZE, SIZE),
            scale_factor=(1.0, 1.0),
            img_id=idx,
            img_path=f'{idx}.png',
        )
        return dict(inputs=img, data_samples=self.make(idx, meta))


def _det_sample(idx, meta):
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    x0, y0 = 8 + idx, 10 + idx
    masks = np.zeros((1, SIZE, SIZE), dtype=np.uint8)
    masks[0, y0 : y0 + 30, x0 : x0 + 30] = 1
    gt = InstanceData(
        bboxes=torch.tensor([[x0, y0, x0 + 30.0, y0 + 30.0]]),
        labels=torch.tensor([idx % 3]),
        masks=BitmapMasks(masks, SIZE, SIZE),
    )
    return DetDataSample(gt_instances=gt, metainfo=meta)


def _seg_sample(idx, meta):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    seg = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    seg[:, 16:48, 8 + idx : 40] = 1 + idx % 3
    return SegDataSample(gt_sem_seg=PixelData(data=seg), metainfo=meta)


def _cls_sample(idx, meta):
    from mmpretrain.structures import DataSample

    return DataSample(metainfo=meta).set_gt_label(idx % 4)


def _config(package, path):
    module = pytest.importorskip(package)
    root = os.path.join(os.path.dirname(module.__file__), '.mim', 'configs')
    return Config.fromfile(os.path.join(root, path))


def _train(tmp_path, name, scope, model, make):
    runner = Runner(
        model=model,
        work_dir=str(tmp_path / name),
        experiment_name=f'{name}_{os.getpid()}',
        train_dataloader=dict(
            dataset=_Generated(make),
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='pseudo_collate'),
            batch_size=2,
            num_workers=0,
        ),
        train_cfg=dict(by_epoch=False, max_iters=3),
        optim_wrapper=dict(
            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)
        ),
        custom_hooks=[dict(type='gpusq_mm.SparsityHook')],
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=3),
            logger=dict(type='LoggerHook', interval=1),
        ),
        log_processor=dict(by_epoch=False),
        log_level='WARNING',
        default_scope=scope,
    )
    runner.train()
    return runner


def _share_2to4(model, prefixes=('backbone', 'neck')):
    sparse = total = 0
    for name, module in model.named_modules():
        if not name.startswith(prefixes) or layer_kind(module) is None:
            continue
        total += module.weight.numel()
        if is_2to4(module.weight):
            sparse += module.weight.numel()
    assert total > 0
    return sparse / total


def _check(runner):
    model = runner.model
    layers = masked_layers(model)
    assert layers and all(
        bool(m.sparsity_mask_computed) for m in layers.values()
    )
    assert all(is_2to4(m.weight) for m in layers.values())
    assert _share_2to4(model) >= 0.9
    ckpt = torch.load(
        os.path.join(runner.work_dir, 'iter_3.pth'), weights_only=False
    )
    assert any(k.endswith('sparsity_mask') for k in ckpt['state_dict'])


def test_swin_mask_rcnn(tmp_path):
    cfg = _config('mmdet', 'swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py')
    model = cfg.model
    model.backbone.update(SWIN, init_cfg=None)
    model.neck.update(in_channels=[32, 64, 128, 256], out_channels=32)
    model.rpn_head.update(in_channels=32, feat_channels=32)
    roi = model.roi_head
    roi.bbox_roi_extractor.out_channels = 32
    roi.bbox_head.update(in_channels=32, fc_out_channels=64, num_classes=3)
    roi.mask_roi_extractor.out_channels = 32
    roi.mask_head.update(in_channels=32, conv_out_channels=32, num_classes=3)
    model.train_cfg.rcnn.sampler.num = 64
    runner = _train(tmp_path, 'det', 'mmdet', model, _det_sample)
    _check(runner)
    names = masked_layers(runner.model)
    assert 'roi_head.bbox_head.fc_cls' not in names
    assert 'rpn_head.rpn_cls' not in names
    assert 'roi_head.mask_head.conv_logits' not in names


def test_swin_upernet(tmp_path):
    cfg = _config(
        'mmseg',
        'swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_'
        'ade20k-512x512.py',
    )
    model = cfg.model
    model.data_preprocessor.size = (SIZE, SIZE)
    model.backbone.update(SWIN, init_cfg=None, pretrain_img_size=SIZE)
    model.decode_head.update(
        in_channels=[32, 64, 128, 256], channels=32, num_classes=4
    )
    model.auxiliary_head.update(in_channels=128, channels=32, num_classes=4)
    runner = _train(tmp_path, 'seg', 'mmseg', model, _seg_sample)
    _check(runner)
    assert 'decode_head.conv_seg' not in masked_layers(runner.model)


def test_swin_classifier(tmp_path):
    cfg = _config('mmpretrain', 'swin_transformer/swin-tiny_16xb64_in1k.py')
    model = cfg.model
    model.backbone.update(arch=SWIN, img_size=SIZE, pad_small_map=True)
    model.head.update(in_channels=256, num_classes=4)
    model.train_cfg = None  # no Mixup / CutMix
    model.data_preprocessor = dict(
        type='mmpretrain.ClsDataPreprocessor',
        num_classes=4,
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True,
    )
    runner = _train(tmp_path, 'cls', 'mmpretrain', model, _cls_sample)
    _check(runner)
    assert 'head.fc' not in masked_layers(runner.model)
    _check_sparsity_tool(tmp_path, runner, model)


def _load_tool():
    import importlib.util

    path = os.path.join(
        os.path.dirname(__file__),
        '..',
        '..',
        'tools',
        'analysis',
        'check_sparsity.py',
    )
    spec = importlib.util.spec_from_file_location('check_sparsity', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _check_sparsity_tool(tmp_path, runner, model_cfg):
    tool = _load_tool()
    ckpt = torch.load(
        os.path.join(runner.work_dir, 'iter_3.pth'), weights_only=False
    )
    state = ckpt['state_dict']
    cfg = Config(
        dict(
            model=model_cfg,
            default_scope='mmpretrain',
            custom_hooks=[dict(type='gpusq_mm.SparsityHook', in_align=16)],
        )
    )
    with torch.no_grad():
        student = tool.build_student(cfg, dict(state))
        assert tool.check(student, tool._sparsity_settings(cfg)) == 0
        # the same student saved by a GPUSQ algorithm
        algo = Config(
            dict(
                model=dict(type='GPUSQ', architecture=model_cfg),
                default_scope='mmpretrain',
            )
        )
        wrapped = {f'architecture.{k}': v for k, v in state.items()}
        wrapped['teacher.backbone.x'] = torch.zeros(1)
        student = tool.build_student(algo, wrapped)
        assert len(masked_layers(student)) == len(masked_layers(runner.model))
        assert tool.check(student, {}) == 0
        # a masked layer that is no longer 2:4 fails the check
        key = next(k for k in state if k.endswith('sparsity_mask'))
        state[key[: -len('sparsity_mask')] + 'weight'].fill_(1.0)
        student = tool.build_student(cfg, dict(state))
        assert tool.check(student, {}) == 1
