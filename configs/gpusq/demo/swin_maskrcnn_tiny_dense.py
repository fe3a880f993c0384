# Tiny dense Swin Mask R-CNN on the generated COCO-format shapes data: the
# dense teacher of the CPU demo. Generate the data first:
#   python tools/generate_data.py --out data/gpusq_demo --tasks det
# Another data folder: override every path that uses ``data_root``:
#   --cfg-options train_dataloader.dataset.data_root=D/
#     val_dataloader.dataset.data_root=D/ test_dataloader.dataset.data_root=D/
#     val_evaluator.ann_file=D/annotations/instances_val2017.json
#     test_evaluator.ann_file=D/annotations/instances_val2017.json
# Backbone: from scratch by default (init_cfg=None below). tools/demo.py
# initialises it from the demo's dense Swin UperNet (same tiny Swin, keys
# ``backbone.*``), its stand-in for the ImageNet-pretrained backbone that
# real detectors start from; from scratch, 400-600 CPU iterations leave
# this detector near 0 bbox mAP (the loss stalls). By hand, in a config
# inheriting this one: ``model = dict(backbone=dict(init_cfg=dict(
# _delete_=True, type='Pretrained', checkpoint='SEG_DENSE.pth')))``
# (``_delete_`` because the base's init_cfg is None).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['gpusq_mm'], allow_failed_imports=False)
default_scope = 'mmdet'

data_root = 'data/gpusq_demo/coco/'
# gpusq_mm.datasets.SHAPE_CLASSES (category ids 1..6 in the json)
classes = ('circle', 'triangle', 'square', 'star', 'cross', 'crescent')
num_classes = len(classes)
image_scale = (320, 320)
max_iters = 600  # 500 left the teacher rising (+0.044 mAP, last quarter)
val_interval = max_iters // 4  # the learning curve: 4 validations
embed_dims = 32
channels = 64

model = dict(
    backbone=dict(
        embed_dims=embed_dims,
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 4, 8],
        drop_path_rate=0.1,
        convert_weights=False,
        init_cfg=None,
    ),
    neck=dict(
        in_channels=[embed_dims * 2**i for i in range(4)],
        out_channels=channels,
    ),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        bbox_head=dict(
            in_channels=channels, fc_out_channels=256, num_classes=num_classes
        ),
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(
            in_channels=channels,
            conv_out_channels=channels,
            num_classes=num_classes,
        ),
    ),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=500),
        rcnn=dict(sampler=dict(num=256)),
    ),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    # one input shape: CPU kernels are built once, not per image size
    dict(type='Pad', size=image_scale),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    # no Pad here: it sets img_shape to the padded size, so predicted boxes
    # are clipped to the padding, not the image, and a box lying wholly in
    # the padding crashes mmdet's CPU mask pasting (the data preprocessor
    # pads to a multiple of 32 instead)
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=(
            'img_id',
            'img_path',
            'ori_shape',
            'img_shape',
            'scale_factor',
        ),
    ),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

train_cfg = dict(
    _delete_=True,
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=val_interval,
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=0.05,
        by_epoch=False,
        begin=50,
        end=max_iters,
    ),
]
optim_wrapper = dict(
    # 5e-4: at 1e-3 the loss stalls from ~100 iterations on, with or without
    # the pretrained backbone
    optimizer=dict(lr=5e-4, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0),
)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=2),
)
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False)
# val_loss at each validation (the training loss on the val data, logged
# next to the metric): the learning curve's plateau / overfitting check
custom_hooks = [dict(type='gpusq_mm.ValLossHook')]
