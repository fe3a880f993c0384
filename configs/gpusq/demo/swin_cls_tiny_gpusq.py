# GPUSQ on the tiny dense Swin classifier of the demo, in one training run:
# the dense weights -> 2:4 masks -> sparse fine-tune with KD from the dense
# teacher (stage 1) -> calibrate, INT8 QAT with KD from the stage-1 sparse
# snapshot (stage 2). tools/demo.py runs it after training the teacher:
#   python tools/train.py configs/gpusq/demo/swin_cls_tiny_gpusq.py \
#       --cfg-options model.teacher.checkpoint=DENSE.pth
_base_ = './swin_cls_tiny_dense.py'
model = dict(_delete_=True, type='gpusq_mm.GPUSQ', architecture=_base_.model,
             teacher=dict(checkpoint='work_dirs/swin_cls_tiny_dense/'
                          'epoch_24.pth'))
train_cfg = dict(max_epochs=3, val_interval=2)  # 2 epochs 2:4, 1 QAT
param_scheduler = [
    dict(type='CosineAnnealingLR', eta_min_ratio=0.05, by_epoch=True,
         end=2, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=2, end=3,
         convert_to_iter_based=True)]
custom_hooks = [*_base_.get('custom_hooks', []),
                dict(type='gpusq_mm.GPUSQHook', qat_begin_epoch=2,
                     num_batches=8, lr_factor=0.05)]
default_hooks = dict(checkpoint=dict(interval=2, save_last=True))
