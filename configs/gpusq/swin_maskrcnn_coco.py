# GPUSQ (2:4 + INT8 QAT, both with KD 1/10/5) of Swin-T Mask R-CNN on COCO.
# The dense checkpoint is the teacher and the student's start; the 1x
# schedule runs again as the 2:4 stage (NVIDIA ASP recipe), then 2 epochs of
# QAT from 1 % of the lr, cosine-annealed (pytorch-quantization guide).
#   python tools/train.py configs/gpusq/swin_maskrcnn_coco.py \
#       --cfg-options model.teacher.checkpoint=dense.pth
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
model = dict(_delete_=True, type='gpusq_mm.GPUSQ', architecture=_base_.model,
             teacher=dict(checkpoint='checkpoints/swin_maskrcnn_dense.pth'))
train_cfg = dict(max_epochs=14)
param_scheduler = [*_base_.param_scheduler,
                   dict(type='CosineAnnealingLR', begin=12, end=14,
                        by_epoch=True, convert_to_iter_based=True)]
custom_hooks = [*_base_.get('custom_hooks', []),
                dict(type='gpusq_mm.GPUSQHook', qat_begin_epoch=12)]
