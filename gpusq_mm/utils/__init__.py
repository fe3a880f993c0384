from .checkpoint import (
    allow_mmengine_checkpoint_types,
    atomic_torch_save,
    enable_atomic_local_writes,
)

__all__ = [
    'allow_mmengine_checkpoint_types',
    'atomic_torch_save',
    'enable_atomic_local_writes',
]
