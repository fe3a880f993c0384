# 2:4 structured sparsity for a plain (no KD) mmdet / mmseg / mmpretrain
# config, e.g. the no-KD ablation:
#   _base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
#             '../_base_/gpusq/sparse_2to4.py']
#   load_from = 'dense_checkpoint.pth'  # masks come from these weights
# Masks are computed once in before_train from the loaded weights, saved in
# every checkpoint and re-applied after each optimizer step. The selection
# defaults (keep the final prediction layers dense) live in code
# (gpusq_mm.sparsity.SparsityConfig); pass keys to the hook to change them.
# With KD use the GPUSQ algorithm and gpusq_mm.GPUSQHook instead (see
# configs/gpusq/README.md). A child config that sets its own custom_hooks
# replaces this list: add the hook there too.
custom_hooks = [dict(type='gpusq_mm.SparsityHook')]
