# 2:4 structured sparsity (GPUSQ-ViT stage 1 / NVIDIA ASP recipe) for any
# mmdet / mmseg / mmpretrain config:
#   _base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
#             '../_base_/gpusq/sparse_2to4.py']
#   load_from = 'dense_checkpoint.pth'  # masks come from these weights
# Masks are computed once in before_train from the loaded weights, saved in
# every checkpoint (<layer>.sparsity_mask) and re-applied after each
# optimizer step. Check a checkpoint with tools/analysis/check_sparsity.py.
# No custom_imports here (two bases defining it would clash): the scoped type
# 'gpusq_mm.SparsityHook' makes MMEngine import gpusq_mm by itself. A child
# config that sets its own custom_hooks replaces this list: add the hook
# there too.

custom_hooks = [
    dict(
        type='gpusq_mm.SparsityHook',
        include=[],  # module-name regexes; empty: every eligible layer
        exclude=[],  # added to the default head-prediction / teacher skips
        in_align=16,  # NVIDIA ASP / FP16 kernels; 32 for INT8 TensorRT
        out_align=8,
        permute=False,  # channel-permutation search before pruning
        mask_grad=False,
    ),
]
