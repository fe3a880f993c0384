"""Registries of gpusq_mm, children of MMEngine's root registries.

Only what the package registers is declared: the ``GPUSQ`` algorithm
(``MODELS``) and the hooks (``HOOKS``). Every registry uses the scope
``gpusq_mm`` and knows where its modules live (``locations``), so a config
can say ``type='gpusq_mm.GPUSQ'`` or ``type='gpusq_mm.GPUSQHook'`` under
any ``default_scope`` (mmdet, mmseg, mmpretrain): the scoped name alone
makes MMEngine import ``gpusq_mm``, no ``custom_imports`` needed.
"""

from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

__all__ = ['HOOKS', 'MODELS', 'SCOPE']

SCOPE = 'gpusq_mm'

#: The ``GPUSQ`` algorithm.
MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope=SCOPE,
    locations=['gpusq_mm.models', 'gpusq_mm.distillation'],
)
#: Hooks: ``GPUSQHook`` and its parts (sparsity upkeep, QAT switch,
#: student checkpoint).
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope=SCOPE, locations=['gpusq_mm.engine']
)
