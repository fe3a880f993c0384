# GPUSQ on the tiny dense Swin classifier of the demo, in one training run:
# load the dense weights -> prune to 2:4 (SparsityHook, before_train) ->
# sparse fine-tune with KD from the dense teacher (stage 1) -> calibrate and
# switch to INT8 QAT with KD from the stage-1 sparse snapshot (QATHook).
#   python tools/train.py configs/gpusq/demo/swin_cls_tiny_gpusq.py \
#       --cfg-options model.teacher.checkpoint=DENSE.pth
# tools/demo.py runs it after training the dense teacher.
_base_ = ['./swin_cls_tiny_dense.py', '../../_base_/gpusq/gpusq_pipeline.py']

teacher_ckpt = 'work_dirs/swin_cls_tiny_dense/epoch_30.pth'
stage1_epochs = 5  # sparse fine-tune with KD (see tools/demo.py SCHEDULES)
qat_epochs = 3  # ~10 % of the dense schedule (pytorch-quantization)

model = dict(
    _delete_=True,
    type='gpusq_mm.GPUSQ',
    architecture=_base_.model,
    teacher=dict(
        config='{{fileDirname}}/swin_cls_tiny_dense.py',
        checkpoint=teacher_ckpt),
    sparsity=_base_.gpusq_sparsity,
    quantization=_base_.gpusq_quantization,
    distill=_base_.gpusq_distill,  # 1 * hard + 10 * KL(T=2) + 5 * feat MSE
)

train_cfg = dict(
    by_epoch=True,
    max_epochs=stage1_epochs + qat_epochs,
    val_interval=stage1_epochs)  # validate at the end of each stage
param_scheduler = [
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=0.05,
        by_epoch=True,
        begin=0,
        end=stage1_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=0.0,
        by_epoch=True,
        begin=stage1_epochs,
        end=stage1_epochs + qat_epochs,
        convert_to_iter_based=True),
]
custom_hooks = [
    dict(type='gpusq_mm.SparsityHook'),
    dict(
        type='gpusq_mm.QATHook',
        begin_epoch=stage1_epochs,
        num_batches=8,
        lr_factor=0.05),
    dict(type='gpusq_mm.StudentCheckpointHook'),
]
default_hooks = dict(
    checkpoint=dict(
        interval=stage1_epochs, max_keep_ckpts=3, save_last=True))
