"""MMEngine glue: registered hooks of gpusq_mm."""

from .hooks import *  # noqa: F401,F403
