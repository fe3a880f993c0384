# GPUSQ of DETR R50 on COCO (query-matched logit KD + encoder/feature KD).
#   python tools/train.py configs/gpusq/detr_r50_coco.py \
#       --cfg-options model.teacher.checkpoint=DENSE.pth
_base_ = [
    'mmdet::detr/detr_r50_8xb2-150e_coco.py',
    '../_base_/gpusq/gpusq_pipeline.py',
]
custom_imports = dict(imports=['gpusq_mm'], allow_failed_imports=False)

teacher_ckpt = 'checkpoints/detr_r50_8xb2-150e_coco.pth'
stage1_epochs = 50  # a third of the 150e dense schedule: fine-tuning
qat_epochs = 5  # ~10 % of stage 1

model = dict(
    _delete_=True,
    type='gpusq_mm.GPUSQ',
    architecture=_base_.model,
    teacher=dict(
        config='mmdet::detr/detr_r50_8xb2-150e_coco.py',
        checkpoint=teacher_ckpt),
    sparsity=_base_.gpusq_sparsity,
    quantization=_base_.gpusq_quantization,
    distill=_base_.gpusq_distill,
)
model['architecture']['backbone']['init_cfg'] = None

train_cfg = dict(max_epochs=stage1_epochs + qat_epochs, val_interval=5)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=stage1_epochs, by_epoch=True,
         milestones=[stage1_epochs * 2 // 3], gamma=0.1),
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
