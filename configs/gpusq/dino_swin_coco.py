# GPUSQ of DINO (5-scale, Swin-L) on COCO: the Swin DETR-family config. The
# 12e schedule again as the 2:4 stage (ASP recipe), then 2 epochs of QAT.
# cls_branches and the last layer of each reg_branches MLP stay dense + FP.
#   python tools/train.py configs/gpusq/dino_swin_coco.py \
#       --cfg-options model.teacher.checkpoint=dense.pth
_base_ = 'mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py'
model = dict(_delete_=True, type='gpusq_mm.GPUSQ', architecture=_base_.model,
             teacher=dict(checkpoint='checkpoints/dino_swin_dense.pth'))
train_cfg = dict(max_epochs=14)
param_scheduler = [*_base_.param_scheduler,
                   dict(type='CosineAnnealingLR', begin=12, end=14,
                        by_epoch=True, convert_to_iter_based=True)]
custom_hooks = [*_base_.get('custom_hooks', []),
                dict(type='gpusq_mm.GPUSQHook', qat_begin_epoch=12)]
