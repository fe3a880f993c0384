"""gpusq_mm: GPU-friendly 2:4 sparsity + quantization for OpenMMLab models.

An MMEngine plugin implementing GPUSQ-ViT (Yu et al., CVPR 2023, "Boost
Vision Transformer with GPU-Friendly Sparsity and Quantization",
arXiv 2305.10727): 2:4 structured pruning and sparse-aware
quantization-aware training, both recovered with knowledge distillation.

Importing the package creates the ``gpusq_mm`` registries (children of
MMEngine's) and registers its algorithm and hooks. The public config API
is :func:`gpusq_mm.apis.wrap_config`.
"""

from .registry import HOOKS, MODELS
from .utils.checkpoint import (
    allow_mmengine_checkpoint_types,
    enable_atomic_local_writes,
)
from .version import __version__

__all__ = [
    'HOOKS',
    'MODELS',
    '__version__',
]

# Checkpoints written by MMEngine hold a few plain, non-tensor types
# (message hub history, numpy scalars). torch >= 2.6 refuses them under its
# default ``weights_only=True``; allow exactly those, nothing else.
allow_mmengine_checkpoint_types()
enable_atomic_local_writes()


def _register_all() -> None:
    """Import the modules that register classes (cheap, no heavy deps)."""
    import importlib

    for name in ('gpusq_mm.engine', 'gpusq_mm.models', 'gpusq_mm.datasets'):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:  # a part not yet present
            if e.name != name:
                raise


_register_all()
