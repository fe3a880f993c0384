"""Helpers of the GPUSQ algorithm tests: tiny configs, teachers, runners.

``gpusq_cfg`` turns a dense demo config (``configs/gpusq/demo``) into a
GPUSQ distillation config: the teacher is a seeded, randomly initialised
model of the same config saved to a checkpoint; loaders run in the main
process with batch size 2 and small images, so a few iterations take
seconds on a CPU.
"""

import os.path as osp
from typing import List, Optional

import pytest
import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import MODELS, DefaultScope

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO_ROOT, 'configs', 'gpusq', 'demo')


def demo_config(name: str, options: Optional[List[str]] = None) -> Config:
    """A demo config (``swin_cls`` / ``swin_upernet`` / ``swin_maskrcnn``)
    with ``--cfg-options`` applied."""
    cfg = Config.fromfile(osp.join(DEMO, f'{name}_tiny_dense.py'))
    if options:
        parsed = {}
        action = DictAction(option_strings=[], dest='x')
        for opt in options:
            key, value = opt.split('=', 1)
            parsed[key] = action._parse_iterable(value)
        cfg.merge_from_dict(parsed)
    return cfg


def save_teacher(model_cfg, scope: str, path: str, seed: int = 0) -> str:
    """Save a seeded, randomly initialised model of ``model_cfg``."""
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(ConfigDict(model_cfg))
    model.init_weights()
    torch.save({'state_dict': model.state_dict()}, path)
    return path


def _shrink_loader(loader: ConfigDict, size: Optional[int]) -> None:
    loader.batch_size = 2
    loader.num_workers = 0
    loader.persistent_workers = False
    if size is None:
        return
    for step in loader.dataset.get('pipeline', []):
        for key in ('scale', 'crop_size'):
            if key in step and step.type != 'RandomResizedCrop':
                step[key] = (size, size)
        if step.type == 'RandomResizedCrop':
            step.scale = size


def gpusq_cfg(
    cfg: Config,
    work_dir: str,
    teacher_cfg=None,
    distill: Optional[dict] = None,
    iters: int = 2,
    size: Optional[int] = None,
    seed: int = 0,
) -> Config:
    """Wrap a dense config's model in ``gpusq_mm.GPUSQ`` for a short run.

    Args:
        cfg (Config): the dense config (student = its model).
        work_dir (str): the runner's work dir (teacher checkpoint there).
        teacher_cfg (dict, optional): the teacher's config; default the
            dense config itself (as a dict with ``default_scope``).
        distill (dict, optional): ``GPUSQ.distill``.
        iters (int): training iterations. Defaults to 2.
        size (int, optional): image size of the train pipeline.
        seed (int): seed of the teacher's random weights.
    """
    cfg = cfg.copy()
    scope = cfg.default_scope
    if teacher_cfg is None:
        teacher_cfg = dict(model=cfg.model.to_dict(), default_scope=scope)
    t_model = teacher_cfg.get('model', teacher_cfg)
    t_scope = teacher_cfg.get('default_scope', scope)
    ckpt = save_teacher(t_model, t_scope, osp.join(work_dir, 't.pth'), seed)
    cfg.model = dict(
        type='gpusq_mm.GPUSQ',
        architecture=cfg.model,
        teacher=dict(config=teacher_cfg, checkpoint=ckpt),
        distill=distill,
        sparsity=None,  # KD only (the recipe's default is 2:4 + INT8)
        quantization=None,
    )
    cfg.work_dir = work_dir
    cfg.train_cfg = dict(
        type='IterBasedTrainLoop', max_iters=iters, val_interval=10**6
    )
    cfg.param_scheduler = []
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    _shrink_loader(cfg.train_dataloader, size)
    cfg.default_hooks = dict(
        logger=dict(type='LoggerHook', interval=1),
        checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=iters),
    )
    cfg.custom_hooks = [dict(type='gpusq_mm.StudentCheckpointHook')]
    cfg.log_processor = dict(by_epoch=False)
    cfg.randomness = dict(seed=seed)
    cfg.visualizer = None
    cfg.env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
    return cfg


@pytest.fixture
def make_gpusq_cfg():
    """The :func:`gpusq_cfg` helper."""
    return gpusq_cfg


@pytest.fixture
def load_demo_config():
    """The :func:`demo_config` helper."""
    return demo_config


def _walk_shrink(node, dims: int) -> None:
    sizes = {
        'embed_dims': dims,
        'feedforward_channels': 128,
        'num_layers': 1,
        'num_feats': dims // 2,
    }
    if isinstance(node, dict):
        for key, value in node.items():
            if key in sizes and isinstance(value, int):
                node[key] = sizes[key]
            else:
                _walk_shrink(value, dims)
    elif isinstance(node, list):
        for item in node:
            _walk_shrink(item, dims)


def tiny_detr(name: str, num_classes: int = 6) -> dict:
    """A shrunk mmdet DETR-family model config (``'detr'`` / ``'dino'``).

    ResNet-18 with 16 base channels, one encoder / decoder layer, 10
    queries; 64-wide DETR, 256-wide DINO (its decoder's sine encoding of
    reference points is fixed at 128 features per axis).
    """
    from mmengine.hub import get_config

    dims = 256 if name == 'dino' else 64

    path = {
        'detr': 'mmdet::detr/detr_r50_8xb2-150e_coco.py',
        'dino': 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    }[name]
    model = get_config(path).model.to_dict()
    _walk_shrink(model, dims)
    stage_channels = [16, 32, 64, 128]
    model['backbone'].update(
        depth=18, base_channels=16, init_cfg=None, frozen_stages=-1
    )
    out = model['backbone']['out_indices']
    model['neck']['in_channels'] = [stage_channels[i] for i in out]
    model['neck']['out_channels'] = dims
    model['num_queries'] = 10
    model['bbox_head'].update(num_classes=num_classes, embed_dims=dims)
    model['test_cfg']['max_per_img'] = 10
    if 'dn_cfg' in model:
        model['dn_cfg']['group_cfg']['num_dn_queries'] = 10
    return model


def tiny_cls_config(data_root: str, dims: int = 16, size: int = 64) -> Config:
    """A tiny mmpretrain Swin classifier on a class-folder dataset."""
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(size, size), backend='pillow'),
        dict(type='PackInputs'),
    ]
    return Config(
        dict(
            default_scope='mmpretrain',
            model=dict(
                type='ImageClassifier',
                data_preprocessor=dict(
                    num_classes=6,
                    mean=[123.675, 116.28, 103.53],
                    std=[58.395, 57.12, 57.375],
                    to_rgb=True,
                ),
                backbone=dict(
                    type='SwinTransformer',
                    arch=dict(
                        embed_dims=dims,
                        depths=[1, 1, 1, 1],
                        num_heads=[1, 1, 2, 2],
                    ),
                    img_size=size,
                    window_size=4,
                    pad_small_map=True,
                ),
                neck=dict(type='GlobalAveragePooling'),
                head=dict(
                    type='LinearClsHead',
                    num_classes=6,
                    in_channels=dims * 8,
                    loss=dict(type='CrossEntropyLoss'),
                ),
            ),
            train_dataloader=dict(
                batch_size=2,
                num_workers=0,
                sampler=dict(type='DefaultSampler', shuffle=True),
                dataset=dict(
                    type='CustomDataset',
                    data_root=data_root,
                    data_prefix='train',
                    pipeline=pipeline,
                ),
            ),
            optim_wrapper=dict(
                optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.0)
            ),
        )
    )


def tiny_cascade(num_classes: int = 6, channels: int = 32) -> dict:
    """A shrunk mmdet Cascade Mask R-CNN (ResNet-18, 16 base channels)."""
    from mmengine.hub import get_config

    path = 'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py'
    model = get_config(path).model.to_dict()
    model['backbone'].update(
        depth=18, base_channels=16, init_cfg=None, frozen_stages=-1
    )
    model['neck'].update(in_channels=[16, 32, 64, 128], out_channels=channels)
    model['rpn_head'].update(in_channels=channels, feat_channels=channels)
    roi = model['roi_head']
    roi['bbox_roi_extractor']['out_channels'] = channels
    roi['mask_roi_extractor']['out_channels'] = channels
    for head in roi['bbox_head']:
        head.update(
            in_channels=channels, fc_out_channels=64, num_classes=num_classes
        )
    roi['mask_head'].update(
        in_channels=channels,
        conv_out_channels=channels,
        num_classes=num_classes,
    )
    model['train_cfg']['rpn_proposal'].update(nms_pre=200, max_per_img=100)
    for stage in model['train_cfg']['rcnn']:
        stage['sampler']['num'] = 64
    return model
