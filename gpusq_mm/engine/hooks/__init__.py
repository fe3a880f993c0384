"""Registered hooks of gpusq_mm (one import line per hook module)."""

from .qat_hook import QATHook  # noqa: F401
from .sparsity_hook import SparsityHook  # noqa: F401
