# GPUSQ on the tiny dense Swin Mask R-CNN of the demo, in one training run:
# the dense weights -> 2:4 -> sparse fine-tune with KD (stage 1) ->
# calibrate -> INT8 QAT with KD (stage 2). Short against the dense schedule:
# the student starts from the trained dense weights (see tools/demo.py).
#   python tools/train.py configs/gpusq/demo/swin_maskrcnn_tiny_gpusq.py \
#       --cfg-options model.teacher.checkpoint=DENSE.pth
_base_ = './swin_maskrcnn_tiny_dense.py'
model = dict(_delete_=True, type='gpusq_mm.GPUSQ', architecture=_base_.model,
             teacher=dict(checkpoint='work_dirs/swin_maskrcnn_tiny_dense/'
                          'iter_600.pth'))
# 200 it 2:4 + KD, 100 QAT: a third of the dense schedule, longer than the
# seg / cls stages because one-shot 2:4 costs this detector a quarter of
# its mAP (100 + 50 recovered 97 % / 96 % of it)
train_cfg = dict(max_iters=300, val_interval=200)
param_scheduler = [
    dict(type='CosineAnnealingLR', eta_min_ratio=0.05, by_epoch=False,
         end=200),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=200, end=300)]
custom_hooks = [*_base_.get('custom_hooks', []),
                dict(type='gpusq_mm.GPUSQHook', qat_begin_iter=200,
                     num_batches=8, lr_factor=0.05)]
default_hooks = dict(checkpoint=dict(interval=200, save_last=True))
