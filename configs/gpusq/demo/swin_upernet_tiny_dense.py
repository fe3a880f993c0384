# Tiny dense Swin UperNet on the generated ADE20K-format texture data: the
# dense teacher of the CPU demo. Generate the data first:
#   python tools/generate_data.py --out data/gpusq_demo --tasks seg
# Another data folder: --cfg-options train_dataloader.dataset.data_root=D
#   val_dataloader.dataset.data_root=D test_dataloader.dataset.data_root=D
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['gpusq_mm'], allow_failed_imports=False)
default_scope = 'mmseg'

data_root = 'data/gpusq_demo/ade'
# gpusq_mm.datasets.TEXTURE_CLASSES: real ADE20K names / ids, remapped
# by ADE20KDataset to 0..5 through ``metainfo``.
classes = ('wall', 'sky', 'floor', 'grass', 'curtain', 'rug')
num_classes = len(classes)
crop_size = (256, 256)
max_iters = 2000  # 1000 left the teacher rising (+3.4 mIoU in its last quarter)
val_interval = max_iters // 4  # the learning curve: 4 validations
embed_dims = 32
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        embed_dims=embed_dims,
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 4, 8],
        # no stochastic depth: with 0.1 (and a 50-iteration warmup) the
        # from-scratch start depended on the seed (below)
        drop_path_rate=0.0,
        init_cfg=None,
    ),
    decode_head=dict(
        in_channels=[embed_dims * 2**i for i in range(4)],
        channels=32,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
    ),
    auxiliary_head=dict(
        in_channels=embed_dims * 4,
        channels=16,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
    ),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize',
        scale=(320, 320),
        ratio_range=(0.75, 1.25),
        keep_ratio=True,
    ),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader

train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
# A long warmup (300 iterations) and no drop path: from scratch, the loss
# first sits at the class prior while the texture features form. With a
# 50-iteration warmup and drop path 0.1 that lasted 150-450 iterations
# depending on the seed (and the CPU's rounding), and a late start ended
# 11 mIoU lower (seeds 0 / 1 / 2: 82.6 / 87.5 / 93.2); with these two
# changes the same seeds end at 93.56 / 93.31 / 93.35.
warmup_iters = 300
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.01,
        by_epoch=False,
        begin=0,
        end=warmup_iters,
    ),
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=0.05,
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters,
    ),
]
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.01))
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=2),
)
# val_loss at each validation (the training loss on the val data, logged
# next to the metric): the learning curve's plateau / overfitting check
custom_hooks = [dict(type='gpusq_mm.ValLossHook')]
