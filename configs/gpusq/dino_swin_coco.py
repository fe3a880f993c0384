# GPUSQ of DINO (5-scale, Swin-L) on COCO: the Swin DETR-family config.
#   python tools/train.py configs/gpusq/dino_swin_coco.py \
#       --cfg-options model.teacher.checkpoint=DENSE.pth
_base_ = [
    'mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py',
    '../_base_/gpusq/gpusq_pipeline.py',
]
custom_imports = dict(imports=['gpusq_mm'], allow_failed_imports=False)

teacher_ckpt = 'checkpoints/dino-5scale_swin-l_8xb2-12e_coco.pth'
stage1_epochs = 12  # the dense schedule again (ASP recipe)
qat_epochs = 2

model = dict(
    _delete_=True,
    type='gpusq_mm.GPUSQ',
    architecture=_base_.model,
    teacher=dict(
        config='mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py',
        checkpoint=teacher_ckpt),
    sparsity=_base_.gpusq_sparsity,
    quantization=_base_.gpusq_quantization,
    distill=_base_.gpusq_distill,
)
model['architecture']['backbone']['init_cfg'] = None

train_cfg = dict(max_epochs=stage1_epochs + qat_epochs, val_interval=1)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=stage1_epochs, by_epoch=True,
         milestones=[11], gamma=0.1),
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
