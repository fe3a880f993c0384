"""Registered hooks of gpusq_mm (one import line per hook module)."""

from .gpusq_hook import GPUSQHook  # noqa: F401
from .qat_hook import QATHook  # noqa: F401
from .sparsity_hook import SparsityHook  # noqa: F401
from .student_checkpoint_hook import StudentCheckpointHook  # noqa: F401
from .val_loss_hook import ValLossHook  # noqa: F401
