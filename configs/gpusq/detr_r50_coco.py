# GPUSQ of DETR R50 on COCO (query-matched logit KD + feature KD). The 2:4
# stage is a third of the 150e dense schedule (the student starts from the
# trained dense weights), then 5 epochs (~10 %) of QAT.
#   python tools/train.py configs/gpusq/detr_r50_coco.py \
#       --cfg-options model.teacher.checkpoint=dense.pth
_base_ = 'mmdet::detr/detr_r50_8xb2-150e_coco.py'
model = dict(_delete_=True, type='gpusq_mm.GPUSQ', architecture=_base_.model,
             teacher=dict(checkpoint='checkpoints/detr_r50_dense.pth'))
train_cfg = dict(max_epochs=55, val_interval=5)
param_scheduler = [
    dict(type='MultiStepLR', end=50, by_epoch=True, milestones=[33]),
    dict(type='CosineAnnealingLR', begin=50, end=55, by_epoch=True,
         convert_to_iter_based=True)]
custom_hooks = [*_base_.get('custom_hooks', []),
                dict(type='gpusq_mm.GPUSQHook', qat_begin_epoch=50)]
