# The whole GPUSQ-ViT pipeline in one training run, for any mmdet / mmseg /
# mmpretrain config (see configs/gpusq/README.md):
#   dense weights (model.teacher.checkpoint, also the student's start)
#   -> 2:4 masks from those weights (SparsityHook, before_train)
#   -> stage 1: sparse fine-tune with KD from the dense teacher
#   -> calibrate + switch to fake-quant (QATHook at the stage boundary)
#   -> stage 2: sparse-aware QAT with KD from the stage-1 sparse snapshot,
#      feature-KD terms weighted by the stage-1 per-layer losses.
# A model config using it:
#   _base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
#             '../_base_/gpusq/gpusq_pipeline.py']
#   model = dict(_delete_=True, type='gpusq_mm.GPUSQ',
#                architecture=_base_.model, teacher=dict(config=...,
#                checkpoint=...), sparsity=_base_.gpusq_sparsity,
#                quantization=_base_.gpusq_quantization,
#                distill=_base_.gpusq_distill)
#   custom_hooks = [dict(type='gpusq_mm.SparsityHook'),
#                   dict(type='gpusq_mm.QATHook', begin_epoch=E1, ...),
#                   dict(type='gpusq_mm.StudentCheckpointHook')]
_base_ = ['./qat_int8.py']

gpusq_sparsity = dict(pattern='2:4')  # SparsityConfig keys; defaults skip
# the final prediction layers, depth-wise / grouped convs and misaligned
# shapes (see gpusq_mm/sparsity/eligibility.py)

# L = hard + 10 * KL(T) + 5 * feature MSE (GPUSQ-ViT; ../shared/METHOD.md)
gpusq_distill = dict(
    hard=1.0,
    logits=dict(weight=10.0, T=2.0),
    features=dict(weight=5.0, loss='mse'),  # backbone stages + neck levels
    weighting=dict(mode='inverse'),  # QAT: larger stage-1 loss, smaller w_i
)
