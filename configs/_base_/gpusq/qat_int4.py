# As qat_int8.py with INT4 weights (INT8 activations); use it instead of
# qat_int8.py (not with it). A 2:4 mask already satisfies the 4:8 pattern of
# INT4 sparse kernels. With the GPUSQ algorithm: model.quantization='int4'.
gpusq_qat_hook = dict(type='gpusq_mm.QATHook', begin_epoch=0,
                      lr_factor=0.01, quantization='int4')
