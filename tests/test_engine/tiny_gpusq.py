"""A tiny GPUSQ run config: mmpretrain Swin classifier + GPUSQHook (CPU).

The student is an upstream mmpretrain ``ImageClassifier`` (16-wide Swin,
32x32 inputs) on the generated class-folder data; the teacher is a
seeded, randomly initialised model of the same config saved to disk.
"""

import os
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

SIZE = 32


def cls_architecture(dims: int = 16, classes: int = 6) -> dict:
    """The upstream model config (no data_preprocessor: top-level)."""
    return dict(
        type='ImageClassifier',
        backbone=dict(
            type='SwinTransformer',
            arch=dict(
                embed_dims=dims, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2]
            ),
            img_size=SIZE,
            window_size=4,
            pad_small_map=True,
        ),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(
            type='LinearClsHead',
            num_classes=classes,
            in_channels=dims * 8,
            loss=dict(type='CrossEntropyLoss'),
        ),
    )


PREPROCESSOR = dict(
    num_classes=6,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True,
)


def save_dense(path: str, seed: int = 0, **arch) -> str:
    """A seeded random 'dense' checkpoint of :func:`cls_architecture`."""
    cfg = dict(cls_architecture(**arch), data_preprocessor=PREPROCESSOR)
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg)
    model.init_weights()
    torch.save({'state_dict': model.state_dict()}, path)
    return path


def upstream_config(data_root: str, work_dir: str, by_epoch: bool) -> Config:
    """A plain mmpretrain config of the tiny classifier (2-image batches)."""
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(SIZE, SIZE), backend='pillow'),
        dict(type='PackInputs'),
    ]
    train_cfg = (
        dict(by_epoch=True, max_epochs=2)
        if by_epoch
        else dict(type='IterBasedTrainLoop', max_iters=4)
    )
    return Config(
        dict(
            default_scope='mmpretrain',
            work_dir=work_dir,
            model=cls_architecture(),
            data_preprocessor=PREPROCESSOR,
            train_dataloader=dict(
                batch_size=12,
                num_workers=0,
                sampler=dict(type='DefaultSampler', shuffle=False),
                dataset=dict(
                    type='CustomDataset',
                    data_root=data_root,
                    data_prefix='train',
                    pipeline=pipeline,
                ),
            ),
            train_cfg=train_cfg,
            optim_wrapper=dict(
                optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.0)
            ),
            default_hooks=dict(
                logger=dict(type='LoggerHook', interval=1),
                checkpoint=dict(type='CheckpointHook', interval=10**6),
            ),
            custom_hooks=[dict(type='EMAHook', momentum=0.01)],
            log_processor=dict(by_epoch=by_epoch),
            randomness=dict(seed=0),
            visualizer=None,
            env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo')),
        )
    )


def teacher_path(work_dir: str) -> str:
    """Where :func:`gpusq_run` saves the dense checkpoint."""
    return osp.join(work_dir, 'dense.pth')


def gpusq_run(
    data_root: str,
    work_dir: str,
    by_epoch: bool = False,
    model: Optional[dict] = None,
    **recipe,
) -> Config:
    """The upstream config wrapped by ``wrap_config`` (+ model overrides)."""
    from gpusq_mm.apis import wrap_config

    os.makedirs(work_dir, exist_ok=True)
    dense = save_dense(teacher_path(work_dir))
    recipe.setdefault('num_batches', 2)
    recipe.setdefault('progress', False)
    cfg = wrap_config(
        upstream_config(data_root, work_dir, by_epoch), dense, **recipe
    )
    cfg.model.update(model or {})
    return cfg
