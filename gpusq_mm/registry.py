"""Registries of gpusq_mm, children of MMEngine's root registries.

Every registry uses the scope ``gpusq_mm`` and knows where its modules live
(``locations``), so a config can say ``type='gpusq_mm.GPUSQ'`` under any
``default_scope`` (mmdet, mmseg, mmpretrain) once ``gpusq_mm`` is imported,
e.g. through ``custom_imports=dict(imports=['gpusq_mm'])``.
"""

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

SCOPE = 'gpusq_mm'

#: Algorithms (``GPUSQ``), distillation losses and connectors.
MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope=SCOPE,
    locations=['gpusq_mm.models', 'gpusq_mm.distillation'],
)
#: Model wrappers (DDP variants).
MODEL_WRAPPERS = Registry(
    'model_wrapper',
    parent=MMENGINE_MODEL_WRAPPERS,
    scope=SCOPE,
    locations=['gpusq_mm.models'],
)
#: Hooks: sparsity upkeep, calibration / QAT switch, logging.
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope=SCOPE, locations=['gpusq_mm.engine']
)
#: Loops (none yet: stage switches live in hooks, not loops).
LOOPS = Registry(
    'loop', parent=MMENGINE_LOOPS, scope=SCOPE, locations=['gpusq_mm.engine']
)
#: Generated datasets.
DATASETS = Registry(
    'dataset',
    parent=MMENGINE_DATASETS,
    scope=SCOPE,
    locations=['gpusq_mm.datasets'],
)
DATA_SAMPLERS = Registry(
    'data sampler',
    parent=MMENGINE_DATA_SAMPLERS,
    scope=SCOPE,
    locations=['gpusq_mm.datasets'],
)
TRANSFORMS = Registry(
    'transform',
    parent=MMENGINE_TRANSFORMS,
    scope=SCOPE,
    locations=['gpusq_mm.datasets'],
)
METRICS = Registry(
    'metric',
    parent=MMENGINE_METRICS,
    scope=SCOPE,
    locations=['gpusq_mm.evaluation'],
)
OPTIM_WRAPPERS = Registry(
    'optim_wrapper',
    parent=MMENGINE_OPTIM_WRAPPERS,
    scope=SCOPE,
    locations=['gpusq_mm.engine'],
)
