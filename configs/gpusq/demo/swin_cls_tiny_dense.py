# Tiny dense Swin classifier on the generated class-folder shapes data: the
# dense teacher of the CPU demo. Generate the data first:
#   python tools/generate_data.py --out data/gpusq_demo --tasks cls
# Another data folder: --cfg-options train_dataloader.dataset.data_root=D
#   val_dataloader.dataset.data_root=D test_dataloader.dataset.data_root=D
# Backbone: from scratch by default (no init_cfg below). tools/demo.py
# initialises it from the demo's dense Swin UperNet (the same tiny Swin,
# keys ``backbone.*``; window 7 as there, so the relative position tables
# load as they are), its stand-in for the ImageNet-pretrained backbone a
# real classifier fine-tune starts from. From scratch this tiny Swin learns
# far slower (it stayed at chance for 12 epochs on an earlier version of
# this data); from the seg backbone it learns. By hand, in a config inheriting this
# one: ``model = dict(backbone=dict(init_cfg=dict(type='Pretrained',
# checkpoint='SEG_DENSE.pth', prefix='backbone.')))``.
_base_ = 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py'
custom_imports = dict(imports=['gpusq_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'

data_root = 'data/gpusq_demo/cls'
num_classes = 6  # class folders, see gpusq_mm.datasets.SHAPE_CLASSES
img_size = 56  # 14x14 tokens: two 7x7 windows a side
# 24 epochs from the seg backbone: 92.33 / 92.50 / 92.67 % top-1 over seeds
# 0 / 1 / 2 (+0.3 to +1.2 in the last quarter: level); 12 left it rising
max_epochs = 24
val_interval = max_epochs // 4  # the learning curve: 4 validations
embed_dims = 32

model = dict(
    backbone=dict(
        arch=dict(
            _delete_=True,
            embed_dims=embed_dims,
            depths=[1, 1, 2, 1],
            num_heads=[1, 2, 4, 8],
        ),
        img_size=img_size,
        window_size=7,
        drop_path_rate=0.1,
        pad_small_map=True,  # the last stages (4x4, 2x2) are below 7x7
    ),
    head=dict(num_classes=num_classes, in_channels=embed_dims * 8),
    # no Mixup / CutMix: too strong a regulariser for a few minutes
    train_cfg=None,
)
data_preprocessor = dict(num_classes=num_classes)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=img_size,
        crop_ratio_range=(0.7, 1.0),
        backend='pillow',
    ),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(img_size, img_size), backend='pillow'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='train',
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='val',
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator

train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=val_interval)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.01,
        by_epoch=True,
        end=1,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=0.05,
        by_epoch=True,
        begin=1,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
auto_scale_lr = dict(enable=False)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=2),
)
# val_loss at each validation (the training loss on the val data, logged
# next to the metric): the learning curve's plateau / overfitting check
custom_hooks = [dict(type='gpusq_mm.ValLossHook')]
