# GPUSQ of Swin-T on ImageNet-1k (class-logit KD + feature KD). The 2:4
# stage is a third of the 300e dense schedule, then 10 epochs of QAT.
#   python tools/train.py configs/gpusq/swin_tiny_in1k.py \
#       --cfg-options model.teacher.checkpoint=dense.pth
_base_ = 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py'
model = dict(_delete_=True, type='gpusq_mm.GPUSQ', architecture=_base_.model,
             teacher=dict(checkpoint='checkpoints/swin_tiny_in1k_dense.pth'))
train_cfg = dict(max_epochs=110, val_interval=5)
param_scheduler = [  # per epoch: a fine-tune from the trained weights
    dict(type='LinearLR', start_factor=1e-3, end=5),
    dict(type='CosineAnnealingLR', eta_min=1e-5, begin=5, end=100),
    dict(type='CosineAnnealingLR', begin=100, end=110)]
custom_hooks = [*_base_.get('custom_hooks', []),
                dict(type='gpusq_mm.GPUSQHook', qat_begin_epoch=100)]
