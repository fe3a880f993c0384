# As qat_int8.py with INT4 weights (INT8 activations). A 2:4 mask already
# satisfies the 4:8 pattern of INT4 sparse kernels. GPUSQ-ViT reports the
# per-layer KD weight factors matter most at INT4. Use it like qat_int8.py:
#   custom_hooks = [*_base_.custom_hooks, _base_.gpusq_qat_hook]
_base_ = ['./qat_int8.py']

gpusq_quantization = dict(w_bits=4)
gpusq_qat_hook = dict(quantization=dict(w_bits=4))
