# INT8 QAT (weights and activations) for a plain (no KD) config, on top of
# sparse_2to4.py:
#   _base_ = [UPSTREAM, '../_base_/gpusq/sparse_2to4.py',
#             '../_base_/gpusq/qat_int8.py']
#   custom_hooks = [*_base_.custom_hooks,
#                   dict(_base_.gpusq_qat_hook, begin_epoch=E)]
# The settings are the 'int8' preset of gpusq_mm.quantization (its one
# home). With the GPUSQ algorithm use model.quantization='int8' and
# gpusq_mm.GPUSQHook instead.
gpusq_qat_hook = dict(type='gpusq_mm.QATHook', begin_epoch=0,
                      lr_factor=0.01, quantization='int8')
