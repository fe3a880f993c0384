# GPUSQ (2:4 + INT8 QAT, both with KD) of Swin-T Mask R-CNN on COCO.
#   python tools/train.py configs/gpusq/swin_maskrcnn_coco.py \
#       --cfg-options model.teacher.checkpoint=DENSE.pth
# The dense checkpoint is the teacher and the student's starting point.
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
    '../_base_/gpusq/gpusq_pipeline.py',
]
custom_imports = dict(imports=['gpusq_mm'], allow_failed_imports=False)

teacher_ckpt = 'checkpoints/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.pth'
stage1_epochs = 12  # NVIDIA ASP recipe: the dense schedule again
qat_epochs = 2  # ~10-15 % of it, from 1 % of the lr, cosine

model = dict(
    _delete_=True,
    type='gpusq_mm.GPUSQ',
    architecture=_base_.model,
    teacher=dict(
        config='mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
        checkpoint=teacher_ckpt),
    sparsity=_base_.gpusq_sparsity,
    quantization=_base_.gpusq_quantization,
    distill=_base_.gpusq_distill,
)
# the weights come from the teacher checkpoint, not ImageNet
model['architecture']['backbone']['init_cfg'] = None

train_cfg = dict(max_epochs=stage1_epochs + qat_epochs, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=1000),
    dict(type='MultiStepLR', begin=0, end=stage1_epochs, by_epoch=True,
         milestones=[8, 11], gamma=0.1),
    dict(type='CosineAnnealingLR', begin=stage1_epochs,
         end=stage1_epochs + qat_epochs, by_epoch=True, eta_min=0.0,
         convert_to_iter_based=True),
]
custom_hooks = [
    dict(type='gpusq_mm.SparsityHook'),
    dict(type='gpusq_mm.QATHook', begin_epoch=stage1_epochs,
         num_batches=32, lr_factor=0.01),
    dict(type='gpusq_mm.StudentCheckpointHook'),
]
