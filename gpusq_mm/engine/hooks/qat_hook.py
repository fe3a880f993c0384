"""Switch a (2:4 sparse) model to quantization-aware training.

Stage 2 of GPUSQ-ViT (Yu et al., CVPR 2023, arXiv 2305.10727) in the
Runner's life cycle:

- ``before_run``: if the student has no quantized layers yet (a plain
  mmdet / mmseg / mmpretrain model with this hook in ``custom_hooks``),
  swap its Linear / Conv2d layers in place (same parameters, so the
  optimizer stays valid; quantizers off), before any checkpoint loads;
- at ``begin_epoch`` (``before_train_epoch``) or ``begin_iter``
  (``before_train_iter``): call ``model.begin_qat()`` if the algorithm has
  it (GPUSQ snapshots the sparse FP student as the QAT teacher and freezes
  the per-layer KD weight factors), calibrate the student over
  ``num_batches`` training batches (eval mode, no grad, quantization off),
  enable fake quantization and optionally set the learning rate for QAT;
- a resumed checkpoint whose quantizers are already on is never
  recalibrated: ranges, calibration and on/off state are buffers.

Calibration batches come from a separate loader over the training
dataset (:mod:`.calibration_data`): under DDP each rank calibrates on its
own shard and the ranges are all-reduced; an empty shard is an error.

A non-finite loss while QAT is active stops training before the step can
be checkpointed (unless the weights stayed finite, e.g. AMP skipped it).

The 2:4 masks stay enforced by ``SparsityHook`` after every step; the
quantized layers keep their mask buffers and fake-quantize the masked
weight.

Learning rate: by default (``lr_factor=None``) it is left to the config's
``param_scheduler``. With ``lr_factor`` set, every parameter group's lr
becomes ``lr_factor * initial_lr`` (the optimizer's configured lr) at the
switch, e.g. 0.01 as the pytorch-quantization guide recommends; add a
cosine scheduler starting at the QAT epoch/iter to anneal it.
"""

import itertools
import math
import time
from typing import Optional

import torch
import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.utils import ProgressBar

from gpusq_mm.registry import HOOKS

from .calibration_data import calibration_loader, check_calibration_set
from .model_access import get_student, unwrap

__all__ = ['QATHook']


def _quantization():
    """``gpusq_mm.quantization``, imported on use: pytorch-quantization is
    an optional dependency, ``import gpusq_mm`` works without it."""
    try:
        from gpusq_mm import quantization
    except ImportError as e:
        raise ImportError(f'QATHook needs pytorch-quantization: {e}') from e
    return quantization


@HOOKS.register_module()
class QATHook(Hook):
    """Calibrate and start fake quantization at a given epoch or iteration.

    Args:
        begin_epoch (int, optional): 0-based epoch at whose start QAT
            begins. Defaults to None.
        begin_iter (int, optional): 0-based iteration at which QAT begins
            (iteration-based training). Exactly one of ``begin_epoch`` /
            ``begin_iter`` must be given. Defaults to None.
        num_batches (int): training batches used for calibration.
            Defaults to 32.
        calib (dict, optional): activation calibration (``method``: max /
            percentile / entropy / mse, ``percentile``, ``num_bins``,
            ``start_bin``, ``stride``); default: the model's quantization
            config. Defaults to None.
        forward_mode (str): mode of the student's forward during
            calibration, ``'tensor'`` or ``'loss'``. Defaults to 'tensor'.
        lr_factor (float, optional): set each group's lr to
            ``lr_factor * initial_lr`` at the switch. Defaults to None.
        quantization (str | dict, optional): a preset (``'int8'``,
            ``'int4'``) or ``QuantConfig`` keys, used when the hook has to
            quantize a plain model itself (a model quantized by its own
            config refuses a different one). Defaults to None.
        progress (bool): show a progress bar on rank 0 while calibrating.
            Defaults to True.
    """

    priority = 'ABOVE_NORMAL'  # swap before EMAHook copies the model

    def __init__(
        self,
        begin_epoch: Optional[int] = None,
        begin_iter: Optional[int] = None,
        num_batches: int = 32,
        calib: Optional[dict] = None,
        forward_mode: str = 'tensor',
        lr_factor: Optional[float] = None,
        quantization: Optional[dict] = None,
        progress: bool = True,
    ) -> None:
        assert (begin_epoch is None) != (begin_iter is None), (
            'give exactly one of begin_epoch / begin_iter, got '
            f'begin_epoch={begin_epoch!r}, begin_iter={begin_iter!r}'
        )
        for key, value in (
            ('begin_epoch', begin_epoch),
            ('begin_iter', begin_iter),
        ):
            assert value is None or (isinstance(value, int) and value >= 0), (
                f'{key} must be a non-negative int, got {value!r}'
            )
        assert isinstance(num_batches, int) and num_batches > 0, (
            f'num_batches must be a positive int, got {num_batches!r}'
        )
        assert forward_mode in ('tensor', 'loss'), (
            f"forward_mode must be 'tensor' or 'loss', got {forward_mode!r}"
        )
        assert lr_factor is None or lr_factor > 0, (
            f'lr_factor must be positive, got {lr_factor!r}'
        )
        self.begin_epoch = begin_epoch
        self.begin_iter = begin_iter
        self.num_batches = num_batches
        quant = _quantization()  # fail early if it is missing
        self.calib = None if calib is None else quant.normalize_calib(calib)
        self.forward_mode = forward_mode
        self.lr_factor = lr_factor
        self.quantization = (
            quantization
            if isinstance(quantization, str)
            else dict(quantization or {})
        )
        quant.QuantConfig.build(self.quantization)  # typos fail here
        self.progress = progress
        self.active = False
        #: Number of calibrations this hook ran (tests, logs).
        self.num_calibrations = 0

    # -- life cycle -------------------------------------------------------
    def before_run(self, runner) -> None:
        """Quantize a plain student before any checkpoint is loaded."""
        quant = _quantization()
        student = get_student(runner.model)
        layers = quant.quantized_layers(student)
        if layers and self.quantization:
            own = getattr(student, 'gpusq_quant_cfg', None)
            if own != quant.QuantConfig.build(self.quantization):
                raise ValueError(
                    f'QATHook: quantization={self.quantization} would be '
                    'ignored: the model is already quantized by its own '
                    'config (set it there, e.g. model.quantization)'
                )
        if layers:
            runner.logger.info(
                f'QATHook: the model has {len(layers)} quantized layers'
            )
            return
        names = quant.quantize_model(student, self.quantization)
        for hook in getattr(runner, 'hooks', []):  # EMA copies made before
            ema = getattr(getattr(hook, 'ema_model', None), 'module', None)
            if isinstance(ema, nn.Module):
                ema = getattr(ema, 'architecture', ema)
                if not quant.quantized_layers(ema):
                    quant.quantize_model(ema, self.quantization)
        runner.logger.info(
            f'QATHook: quantized {len(names)} layers (fake quantization '
            f'off until QAT begins): {student.gpusq_quant_cfg.to_dict()}'
        )

    def before_train(self, runner) -> None:
        """Detect a resumed QAT stage (ranges come from the checkpoint)."""
        state = _quantization().quant_state(get_student(runner.model))
        self.active = state['enabled'] > 0
        if self.active:
            runner.logger.info(
                'QATHook: QAT stage active from the checkpoint '
                f'({state["enabled"]}/{state["quantizers"]} quantizers on, '
                'ranges loaded, not recalibrated)'
            )
        self._publish(runner)

    def before_train_epoch(self, runner) -> None:
        """Switch to QAT at ``begin_epoch``."""
        if (
            not self.active
            and self.begin_epoch is not None
            and runner.epoch >= self.begin_epoch
        ):
            self.begin_qat(runner)

    def before_train_iter(
        self, runner, batch_idx: int, data_batch=None
    ) -> None:
        """Switch to QAT at ``begin_iter``."""
        if (
            not self.active
            and self.begin_iter is not None
            and runner.iter >= self.begin_iter
        ):
            self.begin_qat(runner)

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs=None
    ) -> None:
        """Stop on a non-finite QAT loss before a checkpoint can save it.

        A non-finite loss whose step left the student's weights finite
        (AMP's loss scaler skipped it) is only logged.
        """
        if not self.active or not isinstance(outputs, dict):
            return
        bad = {
            k: float(v)
            for k, v in outputs.items()
            if 'loss' in k
            and (
                isinstance(v, (int, float))
                or (isinstance(v, torch.Tensor) and v.numel() == 1)
            )
            and not math.isfinite(float(v))
        }
        if not bad:
            return
        where = f'iter {runner.iter + 1} (epoch {runner.epoch})'
        damaged = [
            n
            for n, p in get_student(runner.model).named_parameters()
            if not bool(torch.isfinite(p).all())
        ]
        if not damaged:
            runner.logger.warning(
                f'QATHook: non-finite loss at {where}: {bad}; the weights '
                'are still finite (the step was skipped), training goes on'
            )
            return
        last = runner.message_hub.get_info('last_ckpt')
        raise FloatingPointError(
            f'QATHook: non-finite loss at {where} of the QAT stage: {bad}; '
            f'{len(damaged)} parameters now hold NaN / inf (e.g. '
            f'{damaged[0]}). Training stopped before this step could be '
            f'checkpointed; the last checkpoint ({last or "none yet"}) is '
            'kept. Lower the QAT lr (QATHook lr_factor) or check the '
            'calibration ranges, then resume from it'
        )

    # -- the switch -------------------------------------------------------
    def begin_qat(self, runner) -> None:
        """Snapshot the teacher, calibrate, enable fake quantization."""
        model = unwrap(runner.model)
        where = (
            f'epoch {runner.epoch}'
            if self.begin_iter is None
            else f'iter {runner.iter}'
        )
        runner.logger.info(f'QATHook: QAT stage begins at {where}')
        if callable(getattr(model, 'begin_qat', None)):
            model.begin_qat()
            runner.logger.info('QATHook: model.begin_qat() done')
        student = get_student(runner.model)
        start = time.time()
        report = self._calibrate(runner, student)
        self.num_calibrations += 1
        enabled = _quantization().enable_fake_quant(student)
        self.active = True
        self._sync_ema(runner, student)
        runner.logger.info(
            f'QATHook: calibrated on {report["batches"]} batches '
            f'({report["method"]}) in {time.time() - start:.1f}s: '
            f'{report["weights"]} weight / {report["inputs"]} input ranges; '
            f'fake quantization on for {enabled} quantizers'
        )
        if report['unseen']:
            runner.logger.warning(
                'QATHook: no calibration batch reached these input '
                f'quantizers, left off: {report["unseen"]}'
            )
        if self.lr_factor is not None:
            self._set_lr(runner)
        self._publish(runner)

    def _calibrate(self, runner, student: nn.Module) -> dict:
        preprocessor = getattr(student, 'data_preprocessor', None)
        if preprocessor is None:
            preprocessor = unwrap(runner.model).data_preprocessor
        dataloader = calibration_loader(runner.train_loop.dataloader)
        check_calibration_set(dataloader, self.num_batches)
        total = min(self.num_batches, len(dataloader))
        if total < self.num_batches:
            runner.logger.warning(
                f"QATHook: num_batches={self.num_batches} but this rank's "
                f'calibration shard holds {len(dataloader.dataset)} samples '
                f'({total} batches): calibrating on {total}'
            )
        batches = itertools.islice(dataloader, total)
        bar = None
        if self.progress and is_main_process():
            bar = ProgressBar(total)

        def forward(batch):
            # training=True: pad to a common size as the train step does
            data = preprocessor(batch, True)
            if isinstance(data, dict):
                return student(**data, mode=self.forward_mode)
            return student(*data, mode=self.forward_mode)

        return _quantization().calibrate(
            student,
            forward,
            batches,
            calib=self.calib,
            progress=(lambda i: bar.update()) if bar else None,
        )

    def _set_lr(self, runner) -> None:
        wrappers = runner.optim_wrapper
        if hasattr(wrappers, 'values') and not hasattr(wrappers, 'optimizer'):
            optimizers = [w.optimizer for w in wrappers.values()]
        else:
            optimizers = [wrappers.optimizer]
        lrs = []
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                base = group.get('initial_lr', group['lr'])
                group['lr'] = base * self.lr_factor
                lrs.append(group['lr'])
        runner.logger.info(
            f'QATHook: lr set to {self.lr_factor} x initial lr '
            f'({min(lrs):.3g}..{max(lrs):.3g})'
        )

    def _sync_ema(self, runner, student: nn.Module) -> None:
        """Give averaged models (EMAHook) the calibrated quantizers (their
        averaged weights stay)."""
        state = {
            k: v for k, v in student.state_dict().items() if '_quantizer.' in k
        }
        for hook in getattr(runner, 'hooks', []):
            module = getattr(getattr(hook, 'ema_model', None), 'module', None)
            if isinstance(module, nn.Module):
                ema_student = getattr(module, 'architecture', module)
                ema_student.load_state_dict(state, strict=False)

    def _publish(self, runner) -> None:
        if hasattr(runner, 'message_hub'):
            runner.message_hub.update_info('qat_active', int(self.active))
