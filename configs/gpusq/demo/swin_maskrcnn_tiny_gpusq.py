# GPUSQ on the tiny dense Swin Mask R-CNN of the demo, in one training run:
# load the dense weights -> prune to 2:4 -> sparse fine-tune with KD
# (stage 1) -> calibrate -> INT8 QAT with KD (stage 2).
#   python tools/train.py configs/gpusq/demo/swin_maskrcnn_tiny_gpusq.py \
#       --cfg-options model.teacher.checkpoint=DENSE.pth
_base_ = [
    './swin_maskrcnn_tiny_dense.py', '../../_base_/gpusq/gpusq_pipeline.py'
]

teacher_ckpt = 'work_dirs/swin_maskrcnn_tiny_dense/iter_500.pth'
# Short against the dense schedule: the student starts from the trained
# dense weights (see tools/demo.py SCHEDULES for why).
stage1_iters = 100
qat_iters = 50  # ~10 % of the dense schedule (pytorch-quantization)

model = dict(
    _delete_=True,
    type='gpusq_mm.GPUSQ',
    architecture=_base_.model,
    teacher=dict(
        config='{{fileDirname}}/swin_maskrcnn_tiny_dense.py',
        checkpoint=teacher_ckpt),
    sparsity=_base_.gpusq_sparsity,
    quantization=_base_.gpusq_quantization,
    distill=_base_.gpusq_distill,  # 1 * hard + 10 * KL(T=2) + 5 * feat MSE
)

train_cfg = dict(
    type='IterBasedTrainLoop',
    max_iters=stage1_iters + qat_iters,
    val_interval=stage1_iters)
param_scheduler = [
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=0.05,
        by_epoch=False,
        begin=0,
        end=stage1_iters),
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=0.0,
        by_epoch=False,
        begin=stage1_iters,
        end=stage1_iters + qat_iters),
]
optim_wrapper = dict(optimizer=dict(lr=5e-4))
custom_hooks = [
    dict(type='gpusq_mm.SparsityHook'),
    dict(
        type='gpusq_mm.QATHook',
        begin_iter=stage1_iters,
        num_batches=8,
        lr_factor=0.05),
    dict(type='gpusq_mm.StudentCheckpointHook'),
]
default_hooks = dict(
    checkpoint=dict(
        by_epoch=False,
        interval=stage1_iters,
        max_keep_ckpts=3,
        save_last=True))
