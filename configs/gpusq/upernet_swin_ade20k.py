# GPUSQ of UperNet Swin-T on ADE20K 512x512 (per-pixel logit KD). The 2:4
# stage is half the 160k dense schedule, then 16k iterations of QAT.
#   python tools/train.py configs/gpusq/upernet_swin_ade20k.py \
#       --cfg-options model.teacher.checkpoint=dense.pth
_base_ = ('mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_'
          '8xb2-160k_ade20k-512x512.py')
model = dict(_delete_=True, type='gpusq_mm.GPUSQ', architecture=_base_.model,
             teacher=dict(checkpoint='checkpoints/upernet_swin_dense.pth'))
train_cfg = dict(max_iters=96000, val_interval=8000)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, end=1500),
    dict(type='PolyLR', power=1.0, begin=1500, end=80000, by_epoch=False),
    dict(type='CosineAnnealingLR', begin=80000, end=96000, by_epoch=False)]
custom_hooks = [*_base_.get('custom_hooks', []),
                dict(type='gpusq_mm.GPUSQHook', qat_begin_iter=80000)]
