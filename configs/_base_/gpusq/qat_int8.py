# Sparse-distillation-aware QAT (GPUSQ-ViT stage 2), INT8 weights and
# activations, for any mmdet / mmseg / mmpretrain config, e.g. after the
# 2:4 stage:
#   _base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
#             '../_base_/gpusq/sparse_2to4.py', '../_base_/gpusq/qat_int8.py']
#   custom_hooks = [*_base_.custom_hooks, _base_.gpusq_qat_hook]
# (this fragment sets no `custom_hooks` itself, so it combines with the
# sparsity fragment). With the GPUSQ algorithm, pass
# `quantization=_base_.gpusq_quantization` to the model: the layers are then
# swapped when the model is built and the hook only calibrates / switches.
# Layers swapped (same parameters, masks kept): every Linear / Conv2d but
# the patch embedding and the final prediction layers. Weights: per-channel
# max; activations: per-tensor, histogram percentile 99.99 over
# `num_batches` training batches at the start of `begin_epoch`.

gpusq_quantization = dict(
    w_bits=8,
    a_bits=8,
    w_per_channel=True,
    quantize_inputs=True,
    narrow_range=False,
    skip=[],  # module-name regexes, added to the defaults
    skip_types=[],
    use_default_skip=True,  # patch embedding + prediction layers
    # True: also quantize the attention matmul operands (q, k, v, softmax
    # output) of Swin's WindowMSA; the paper quantizes the Linear layers
    quantize_attention=False,
    calib=dict(method='percentile', percentile=99.99, num_bins=2048),
)

gpusq_qat_hook = dict(
    type='gpusq_mm.QATHook',
    begin_epoch=0,  # 0-based epoch at whose start QAT begins
    num_batches=32,  # calibration batches
    forward_mode='tensor',
    lr_factor=0.01,  # QAT lr = 1 % of the optimizer's lr (cosine: config)
    quantization=gpusq_quantization,  # used for plain (non-GPUSQ) models
)
