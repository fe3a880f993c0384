# GPUSQ of UperNet Swin-T on ADE20K 512x512 (per-pixel logit KD).
#   python tools/train.py configs/gpusq/upernet_swin_ade20k.py \
#       --cfg-options model.teacher.checkpoint=DENSE.pth
_base_ = [
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_'
    '8xb2-160k_ade20k-512x512.py',
    '../_base_/gpusq/gpusq_pipeline.py',
]
custom_imports = dict(imports=['gpusq_mm'], allow_failed_imports=False)

teacher_ckpt = 'checkpoints/upernet_swin-t_512x512_160k_ade20k.pth'
stage1_iters = 80000  # half the 160k dense schedule: fine-tuning
qat_iters = 16000  # ~10 % of the dense schedule

model = dict(
    _delete_=True,
    type='gpusq_mm.GPUSQ',
    architecture=_base_.model,
    teacher=dict(
        config='mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_'
        '8xb2-160k_ade20k-512x512.py',
        checkpoint=teacher_ckpt),
    sparsity=_base_.gpusq_sparsity,
    quantization=_base_.gpusq_quantization,
    distill=_base_.gpusq_distill,
)
model['architecture']['backbone']['init_cfg'] = None
model['architecture']['pretrained'] = None

train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=stage1_iters + qat_iters,
    val_interval=8000)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
         end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500,
         end=stage1_iters, by_epoch=False),
    dict(type='CosineAnnealingLR', begin=stage1_iters,
         end=stage1_iters + qat_iters, by_epoch=False, eta_min=0.0),
]
custom_hooks = [
    dict(type='gpusq_mm.SparsityHook'),
    dict(type='gpusq_mm.QATHook', begin_iter=stage1_iters,
         num_batches=32, lr_factor=0.01),
    dict(type='gpusq_mm.StudentCheckpointHook'),
]
