# GPUSQ of Swin-T on ImageNet-1k (class-logit KD + feature KD).
#   python tools/train.py configs/gpusq/swin_tiny_in1k.py \
#       --cfg-options model.teacher.checkpoint=DENSE.pth
_base_ = [
    'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py',
    '../_base_/gpusq/gpusq_pipeline.py',
]
custom_imports = dict(imports=['gpusq_mm'], allow_failed_imports=False)

teacher_ckpt = 'checkpoints/swin-tiny_16xb64_in1k.pth'
stage1_epochs = 100  # a third of the 300e dense schedule: fine-tuning
qat_epochs = 10  # ~10 % of stage 1

model = dict(
    _delete_=True,
    type='gpusq_mm.GPUSQ',
    architecture=_base_.model,
    teacher=dict(
        config='mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py',
        checkpoint=teacher_ckpt),
    sparsity=_base_.gpusq_sparsity,
    quantization=_base_.gpusq_quantization,
    distill=_base_.gpusq_distill,
)
# mmpretrain keeps normalization / num_classes in a top-level
# data_preprocessor that the Runner merges into the top-level model only
model['architecture']['data_preprocessor'] = _base_.data_preprocessor

train_cfg = dict(by_epoch=True, max_epochs=stage1_epochs + qat_epochs,
                 val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5,
         end=stage1_epochs, convert_to_iter_based=True),
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
