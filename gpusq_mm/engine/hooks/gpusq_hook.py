"""One hook for the whole GPUSQ run: masks, the QAT switch, the student.

``GPUSQHook`` drives a :class:`gpusq_mm.GPUSQ` model through its stages in
one training run, composing the three single-purpose hooks (their logic,
not a copy of it):

- :class:`SparsityHook`: compute the 2:4 masks from the loaded weights in
  ``before_train`` (never on resume), re-apply them after every optimizer
  step; how (``permute``, ``mask_grad``) comes from ``model.sparsity``;
- :class:`QATHook`: at the QAT start ``model.begin_qat()``, calibrate,
  fake-quant on, optionally scale the lr; the start is a fraction of the
  run (``qat_ratio``) or an explicit epoch / iteration, checked against the
  train loop before training starts (a start the loop never reaches is an
  error, not an FP ``student_final.pth``);
- :class:`StudentCheckpointHook`: ``student_final.pth`` at the end.

The compression settings all live in the model config (``sparsity``,
``quantization``): the hook holds the schedule only, so nothing is set in
two places. Upstream ``custom_hooks`` (EMAHook, ...) are kept by the
config shape ``[*_base_.get('custom_hooks', []), dict(type=
'gpusq_mm.GPUSQHook', ...)]``; the priority is above EMAHook's.
"""

from typing import Optional

from mmengine.hooks import Hook
from mmengine.runner import IterBasedTrainLoop

from gpusq_mm.registry import HOOKS

from .model_access import ema_models, unwrap
from .qat_hook import QATHook
from .sparsity_hook import SparsityHook
from .student_checkpoint_hook import StudentCheckpointHook

__all__ = ['GPUSQHook', 'qat_start']

_ARGS = (
    'qat_ratio',
    'qat_begin_epoch',
    'qat_begin_iter',
    'num_batches',
    'calib',
    'forward_mode',
    'lr_factor',
    'filename',
    'out_dir',
    'progress',
)


def qat_start(
    loop,
    qat_ratio: Optional[float] = None,
    qat_begin_epoch: Optional[int] = None,
    qat_begin_iter: Optional[int] = None,
) -> dict:
    """``dict(begin_epoch=E)`` or ``dict(begin_iter=I)`` for a train loop.

    Args:
        loop: the runner's train loop (epoch- or iteration-based).
        qat_ratio (float, optional): the QAT share of the run, in (0, 1):
            QAT starts at ``round(max * (1 - qat_ratio))`` epochs (epoch
            loops) or iterations.
        qat_begin_epoch (int, optional): explicit 0-based start epoch.
        qat_begin_iter (int, optional): explicit 0-based start iteration.

    Raises:
        ValueError: a start the loop never reaches, named with the values.
    """
    by_epoch = not isinstance(loop, IterBasedTrainLoop) and hasattr(
        loop, 'max_epochs'
    )
    kind = type(loop).__name__
    if qat_ratio is not None:
        if by_epoch:
            qat_begin_epoch = int(round(loop.max_epochs * (1 - qat_ratio)))
        else:
            qat_begin_iter = int(round(loop.max_iters * (1 - qat_ratio)))
    if qat_begin_epoch is not None:
        if not by_epoch and qat_begin_epoch >= 1:
            raise ValueError(
                f'GPUSQHook: qat_begin_epoch={qat_begin_epoch} never comes '
                f'in an {kind} (it runs one epoch, 0); use qat_begin_iter '
                f'(max_iters={loop.max_iters}) or qat_ratio'
            )
        if by_epoch and qat_begin_epoch >= loop.max_epochs:
            raise ValueError(
                f'GPUSQHook: QAT would never start: begin epoch '
                f'{qat_begin_epoch} >= max_epochs={loop.max_epochs} '
                f'(qat_ratio={qat_ratio}, qat_begin_epoch='
                f'{qat_begin_epoch}); the student would stay in FP'
            )
        return dict(begin_epoch=qat_begin_epoch)
    if qat_begin_iter >= loop.max_iters:
        raise ValueError(
            f'GPUSQHook: QAT would never start: begin iteration '
            f'{qat_begin_iter} >= max_iters={loop.max_iters} of the {kind} '
            f'(qat_ratio={qat_ratio}, qat_begin_iter={qat_begin_iter}); the '
            'student would stay in FP'
        )
    return dict(begin_iter=qat_begin_iter)


def _match_ema_buffers(runner) -> None:
    """Give averaged copies (EMAHook) the algorithm's resized buffers.

    GPUSQ's stage-1 KD statistics and QAT factors are buffers whose size
    is known only after the first step / at the QAT switch; MMEngine's
    averaged models copy buffers in place, so a copy made at
    ``before_run`` would fail on the size change. Called before EMAHook's
    ``after_train_iter`` (this hook's priority is higher).
    """
    source = dict(unwrap(runner.model).named_buffers())
    for ema in ema_models(runner):
        modules = dict(ema.named_modules())
        for name, buf in list(ema.named_buffers()):
            src = source.get(name)
            if src is not None and src.shape != buf.shape:
                owner, _, attr = name.rpartition('.')
                setattr(modules[owner], attr, src.detach().clone())


@HOOKS.register_module()
class GPUSQHook(Hook):
    """2:4 masks, the QAT switch and the student checkpoint of a GPUSQ run.

    Args:
        qat_ratio (float, optional): share of the run trained with QAT, in
            (0, 1), e.g. 0.15 (pytorch-quantization suggests ~10 % of the
            original schedule). Defaults to None.
        qat_begin_epoch (int, optional): 0-based epoch at whose start QAT
            begins (epoch-based loops). Defaults to None.
        qat_begin_iter (int, optional): 0-based iteration at which QAT
            begins. Defaults to None. Exactly one of the three is required
            when the model is quantized, none when it is not.
        num_batches (int): calibration batches. Defaults to 32.
        calib (dict, optional): activation calibration settings; default:
            the model's ``quantization.calib``. Defaults to None.
        forward_mode (str): student forward mode while calibrating.
            Defaults to 'tensor'.
        lr_factor (float, optional): lr = ``lr_factor * initial lr`` at the
            QAT switch (pytorch-quantization: ~1 %); None leaves the lr to
            the param schedulers. Defaults to 0.01.
        filename (str): the student-only checkpoint in ``out_dir``.
            Defaults to 'student_final.pth'.
        out_dir (str, optional): its folder; default the work_dir.
        progress (bool): calibration progress bar. Defaults to True.
    """

    priority = 'ABOVE_NORMAL'  # before EMAHook, like its parts

    def __init__(
        self,
        qat_ratio: Optional[float] = None,
        qat_begin_epoch: Optional[int] = None,
        qat_begin_iter: Optional[int] = None,
        num_batches: int = 32,
        calib: Optional[dict] = None,
        forward_mode: str = 'tensor',
        lr_factor: Optional[float] = 0.01,
        filename: str = 'student_final.pth',
        out_dir: Optional[str] = None,
        progress: bool = True,
        **unknown,
    ) -> None:
        if unknown:
            raise KeyError(
                f'GPUSQHook: unknown key(s) {sorted(unknown)}; accepted: '
                f'{", ".join(_ARGS)} (compression settings belong in the '
                'model: model.sparsity / model.quantization)'
            )
        starts = dict(
            qat_ratio=qat_ratio,
            qat_begin_epoch=qat_begin_epoch,
            qat_begin_iter=qat_begin_iter,
        )
        given = {k: v for k, v in starts.items() if v is not None}
        assert len(given) <= 1, (
            f'GPUSQHook: give one of qat_ratio / qat_begin_epoch / '
            f'qat_begin_iter, got {given}'
        )
        assert qat_ratio is None or 0 < qat_ratio < 1, (
            f'GPUSQHook: qat_ratio must be in (0, 1), got {qat_ratio!r}'
        )
        for key in ('qat_begin_epoch', 'qat_begin_iter'):
            value = starts[key]
            assert (
                value is None
                or (isinstance(value, int) and not isinstance(value, bool))
                and value >= 0
            ), f'GPUSQHook: {key} must be a non-negative int, got {value!r}'
        self.starts = starts
        self.qat_args = dict(
            num_batches=num_batches,
            calib=calib,
            forward_mode=forward_mode,
            lr_factor=lr_factor,
            progress=progress,
        )
        self.sparsity: Optional[SparsityHook] = None
        self.qat: Optional[QATHook] = None
        self.checkpoint = StudentCheckpointHook(filename, out_dir)
        self._resync_ema = False
        if given:  # validate the QAT settings now, not at before_run
            QATHook(begin_epoch=0, **self.qat_args)

    # -- set-up -----------------------------------------------------------
    def before_run(self, runner) -> None:
        """Check the model and the schedule; build the parts."""
        model = unwrap(runner.model)
        if not hasattr(model, 'sparsity_options'):
            raise TypeError(
                f'GPUSQHook needs a gpusq_mm.GPUSQ model, got '
                f'{type(model).__name__}; for a plain model use '
                'gpusq_mm.SparsityHook / gpusq_mm.QATHook'
            )
        for hook in runner.hooks:
            if hook is not self and isinstance(
                hook, (GPUSQHook, SparsityHook, QATHook, StudentCheckpointHook)
            ):
                raise ValueError(
                    f'GPUSQHook already does what {type(hook).__name__} '
                    'does; remove it from custom_hooks'
                )
        given = {k: v for k, v in self.starts.items() if v is not None}
        if model.sparse_layers:
            opts = model.sparsity_options
            self.sparsity = SparsityHook(
                permute=opts['permute'],
                permute_pairs=opts['permute_pairs'],
                permute_search=opts['permute_search'],
                mask_grad=opts['mask_grad'],
                log_selection=False,
            )
            self.sparsity.before_run(runner)
        if model.quant_layers:
            if not given:
                raise ValueError(
                    'GPUSQHook: the model is quantized '
                    f'({len(model.quant_layers)} layers) but the QAT start '
                    'is not set: give qat_ratio, qat_begin_epoch or '
                    'qat_begin_iter (or model.quantization=None)'
                )
            start = qat_start(runner.train_loop, **self.starts)
            self.qat = QATHook(**start, **self.qat_args)
            self.qat.before_run(runner)
            where = ', '.join(f'{k}={v}' for k, v in start.items())
        elif given:
            raise ValueError(
                f'GPUSQHook: {given} set but the model is not quantized '
                '(model.quantization=None): remove it or quantize'
            )
        else:
            where = 'never (model.quantization=None)'
        runner.logger.info(
            f'GPUSQHook: {len(model.sparse_layers)} 2:4 layers, '
            f'{len(model.quant_layers)} quantized layers; QAT from {where}'
        )

    # -- life cycle -------------------------------------------------------
    def before_train(self, runner) -> None:
        """Compute the masks (stage 1 begins), detect a resumed QAT."""
        model = unwrap(runner.model)
        if self.sparsity is not None:
            self.sparsity.before_train(runner)
            model.begin_sparse()
        if self.qat is not None:
            self.qat.before_train(runner)
        self._resync_ema = True  # KD statistics grow on the first step

    def before_train_epoch(self, runner) -> None:
        """QAT switch of epoch-based starts."""
        if self.qat is not None and not self.qat.active:
            self.qat.before_train_epoch(runner)
            self._resync_ema = self._resync_ema or self.qat.active

    def before_train_iter(
        self, runner, batch_idx: int, data_batch=None
    ) -> None:
        """QAT switch of iteration-based starts."""
        if self.qat is not None and not self.qat.active:
            self.qat.before_train_iter(runner, batch_idx, data_batch)
            self._resync_ema = self._resync_ema or self.qat.active

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs=None
    ) -> None:
        """Re-apply the masks after the optimizer step; stop on a
        non-finite QAT loss before a checkpoint can save it."""
        if self.sparsity is not None:
            self.sparsity.after_train_iter(
                runner, batch_idx, data_batch, outputs
            )
        if self.qat is not None:
            self.qat.after_train_iter(runner, batch_idx, data_batch, outputs)
        if self._resync_ema:
            _match_ema_buffers(runner)
            self._resync_ema = False

    def after_train_epoch(self, runner) -> None:
        """Log the sparsity state."""
        if self.sparsity is not None:
            self.sparsity.after_train_epoch(runner)

    def after_train(self, runner) -> None:
        """Final sparsity state, then the student-only checkpoint."""
        if self.sparsity is not None:
            self.sparsity.after_train(runner)
        self.checkpoint.after_train(runner)
