"""``wrap_config``: the one place an upstream config becomes a GPUSQ one.

An mmdet / mmseg / mmpretrain config plus the dense checkpoint is all a
GPUSQ run needs; the paper's recipe (2:4, INT8, KD weights 1 / 10 / 5) is
the default of :class:`gpusq_mm.GPUSQ`, so the wrapped config holds only:

- ``model = dict(type='gpusq_mm.GPUSQ', architecture=<upstream model>,
  teacher=dict(checkpoint=...), ...)``: the teacher's config defaults to
  the student's, the student starts from the teacher's weights (its own
  pretrained init is skipped), the top-level ``data_preprocessor`` is
  taken over by the algorithm;
- ``custom_hooks = [*upstream hooks, dict(type='gpusq_mm.GPUSQHook',
  qat_ratio=...)]``.

It is what ``tools/train.py CONFIG --gpusq DENSE.pth`` and
``tools/test.py CONFIG STUDENT.pth --gpusq`` run, and what a three-statement
config writes by hand.
"""

import copy
import os.path as osp
from typing import Optional, Union

from mmengine.config import Config

__all__ = [
    'DEFAULT_QAT_RATIO',
    'is_gpusq_config',
    'load_config',
    'strip_teacher',
    'wrap_config',
]

#: QAT share of the run when no start is given (pytorch-quantization's
#: guide: about 10 % of the original schedule; 4 of the demo classifier's 24
#: epochs).
DEFAULT_QAT_RATIO = 0.15
_GPUSQ_TYPES = ('gpusq_mm.GPUSQ', 'GPUSQ')
_HOOK_TYPES = (
    'gpusq_mm.GPUSQHook',
    'gpusq_mm.SparsityHook',
    'gpusq_mm.QATHook',
    'gpusq_mm.StudentCheckpointHook',
)


def load_config(path: str) -> Config:
    """A config from a file or ``'mmdet::path'`` (``mmseg::``, ...).

    Raises:
        FileNotFoundError: a file path that does not exist.
    """
    if '::' in path:
        from mmengine.hub import get_config

        return get_config(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path}')
    return Config.fromfile(path)


def is_gpusq_config(cfg: Config) -> bool:
    """Whether ``cfg.model`` is a :class:`gpusq_mm.GPUSQ` algorithm."""
    model = cfg.get('model') or {}
    return model.get('type') in _GPUSQ_TYPES


def strip_teacher(cfg: Config) -> Config:
    """The config with ``model.teacher=None``, for test / export.

    Evaluating or exporting a GPUSQ student needs no teacher: building it
    would load the dense checkpoint for nothing (or fail where it is
    absent). Plain configs are returned unchanged.
    """
    if is_gpusq_config(cfg):
        cfg.model.teacher = None
    return cfg


def wrap_config(
    cfg: Union[Config, str],
    teacher_checkpoint: Optional[str],
    sparsity: Union[str, dict, None] = '2:4',
    quantization: Union[str, dict, None] = 'int8',
    distill: Optional[dict] = None,
    qat_ratio: Optional[float] = None,
    qat_begin_epoch: Optional[int] = None,
    qat_begin_iter: Optional[int] = None,
    **hook,
) -> Config:
    """Wrap an upstream config's model in ``gpusq_mm.GPUSQ``.

    Args:
        cfg (Config | str): the upstream config (or its path /
            ``'mmdet::...'``); not modified.
        teacher_checkpoint (str, optional): the trained dense checkpoint:
            the frozen teacher and the student's starting weights. None
            builds the student only (test / export).
        sparsity (str | dict, optional): ``'2:4'`` or selection settings;
            None: dense. Defaults to '2:4'.
        quantization (str | dict, optional): ``'int8'``, ``'int4'`` or
            settings; None: no QAT. Defaults to 'int8'.
        distill (dict, optional): KD settings over the defaults. Defaults
            to None.
        qat_ratio (float, optional): QAT share of the run; default
            :data:`DEFAULT_QAT_RATIO` when quantizing and no explicit start
            is given.
        qat_begin_epoch (int, optional): explicit QAT start epoch.
        qat_begin_iter (int, optional): explicit QAT start iteration.
        **hook: further ``GPUSQHook`` settings (``num_batches``,
            ``lr_factor``, ...).

    Returns:
        Config: a new config.

    Raises:
        ValueError: ``cfg`` is already a GPUSQ config.
    """
    if isinstance(cfg, str):
        cfg = load_config(cfg)
    if is_gpusq_config(cfg):
        raise ValueError(
            'the config is already a GPUSQ config (model.type '
            f'{cfg.model.type!r}); set model.teacher.checkpoint instead'
        )
    cfg = copy.deepcopy(cfg)
    cfg.model = dict(
        type='gpusq_mm.GPUSQ',
        architecture=cfg.model,
        teacher=(
            dict(checkpoint=teacher_checkpoint) if teacher_checkpoint else None
        ),
        sparsity=sparsity,
        quantization=quantization,
        distill=distill,
    )
    starts = dict(
        qat_ratio=qat_ratio,
        qat_begin_epoch=qat_begin_epoch,
        qat_begin_iter=qat_begin_iter,
    )
    starts = {k: v for k, v in starts.items() if v is not None}
    if quantization is not None and not starts:
        starts = dict(qat_ratio=DEFAULT_QAT_RATIO)
    hooks = list(cfg.get('custom_hooks') or [])
    ours = [h for h in hooks if h.get('type') in _HOOK_TYPES]
    if ours:
        raise ValueError(
            f'the config already has gpusq_mm hooks {ours}; wrap an '
            'upstream (dense) config'
        )
    hooks.append(dict(type='gpusq_mm.GPUSQHook', **starts, **hook))
    cfg.custom_hooks = hooks
    return cfg
