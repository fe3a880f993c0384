"""Log the model's training loss on the validation data (``val_loss``).

MMEngine logs the train loss every few iterations and the val metric at
each validation, but no val loss: whether a run has levelled off or has
begun to overfit shows best as the two losses side by side. This hook
computes, at every validation iteration, the loss the model trains on
(``mode='loss'``, summed as ``model.parse_losses`` sums it) on the same
val batch, and hands it to MMEngine's own val-loss record
(``ValLoop.val_loss``): the epoch mean is logged as ``val_loss`` next to
the metrics (console, ``scalars.json``), weighted by batch size.

The model stays in eval mode (no dropout / drop-path; BatchNorm uses its
running statistics), so the val loss is the loss of the model that is
scored. The batch goes through the data preprocessor's training path
(ground truth padded as in training) with its batch augments (Mixup,
CutMix, ...) switched off. Losses that draw random numbers (the RPN and
RoI samplers of a two-stage detector) would advance the global random
generators; their states are saved and restored around the extra forward,
so adding the hook leaves the training run unchanged.

In a GPUSQ run the loss is the student's own task loss (the upstream
model's, without the distillation terms and without a teacher forward):
the same quantity as a dense or a no-KD run logs, so the rows compare.
"""

import random
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

from gpusq_mm.registry import HOOKS

from .model_access import get_student

__all__ = ['ValLossHook']

#: The key of the logged val loss (MMEngine's own name for it).
VAL_LOSS_KEY = 'val_loss'


def _rng_states() -> tuple:
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    )
    return (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        cuda,
    )


def _set_rng_states(states: tuple) -> None:
    py, np_state, cpu, cuda = states
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _batch_size(data_batch) -> int:
    if isinstance(data_batch, dict):
        samples = data_batch.get('data_samples')
        if isinstance(samples, (list, tuple)) and samples:
            return len(samples)
        inputs = data_batch.get('inputs')
        if isinstance(inputs, (list, tuple)) and inputs:
            return len(inputs)
        if isinstance(inputs, torch.Tensor) and inputs.dim() > 0:
            return int(inputs.shape[0])
    return 1


@HOOKS.register_module()
class ValLossHook(Hook):
    """Log ``val_loss``: the training loss on each validation's data.

    No arguments: add ``dict(type='gpusq_mm.ValLossHook')`` to
    ``custom_hooks``. It needs a model with MMEngine's ``BaseModel``
    interface (``data_preprocessor``, ``forward(..., mode='loss')``,
    ``parse_losses``: every mmdet / mmseg / mmpretrain model) and MMEngine's
    ``ValLoop`` (>= 0.10, which records val losses).
    """

    priority = 'NORMAL'

    def __init__(self) -> None:
        self._warned = False

    def after_val_iter(
        self,
        runner,
        batch_idx: int,
        data_batch: Optional[Sequence] = None,
        outputs: Optional[Sequence] = None,
    ) -> None:
        if data_batch is None:
            return
        loop = runner.val_loop
        record = getattr(loop, 'val_loss', None)
        if not isinstance(record, dict):
            raise RuntimeError(
                f'ValLossHook: {type(loop).__name__} has no val_loss record '
                '(it needs the ValLoop of MMEngine >= 0.10)'
            )
        model = get_student(runner.model)
        for name in ('data_preprocessor', 'parse_losses'):
            if not hasattr(model, name):
                raise TypeError(
                    f'ValLossHook: the model ({type(model).__name__}) has no '
                    f'{name}: it needs an MMEngine BaseModel'
                )
        if set(record) - {VAL_LOSS_KEY} and not self._warned:
            # the model's val_step returns losses of its own: MMEngine
            # would sum them into val_loss with ours
            runner.logger.warning(
                'ValLossHook: the model already logs val losses '
                f'{sorted(set(record) - {VAL_LOSS_KEY})}; val_loss is their '
                'sum with the training loss'
            )
            self._warned = True
        loss = self._loss(model, data_batch)
        count = _batch_size(data_batch)
        record.setdefault(VAL_LOSS_KEY, HistoryBuffer()).update(
            loss * count, count
        )

    @staticmethod
    def _loss(model, data_batch) -> float:
        """The total training loss of ``model`` on one batch, eval mode."""
        pre = model.data_preprocessor
        augments = getattr(pre, 'batch_augments', None)
        states = _rng_states()
        try:
            if augments is not None:
                pre.batch_augments = None
            with torch.no_grad():
                data = pre(data_batch, True)
                if isinstance(data, dict):
                    losses = model(**data, mode='loss')
                elif isinstance(data, (list, tuple)):
                    losses = model(*data, mode='loss')
                else:
                    raise TypeError(
                        'ValLossHook: the data preprocessor returned '
                        f'{type(data).__name__}, expected a dict or a list'
                    )
                total, _ = model.parse_losses(losses)
        finally:
            if augments is not None:
                pre.batch_augments = augments
            _set_rng_states(states)
        return float(total)
