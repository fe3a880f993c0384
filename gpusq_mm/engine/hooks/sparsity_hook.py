"""Keep a model 2:4 sparse during MMEngine training.

The NVIDIA ASP recipe used by GPUSQ-ViT (Yu et al., CVPR 2023, arXiv
2305.10727) for the Runner's life cycle:

- ``before_run``: attach placeholder mask buffers (if the model has none),
  so ``load_from`` / resume checkpoints with masks load into them;
- ``before_train`` (after the Runner loaded the weights): compute the
  masks not computed yet, optionally after a channel-permutation search,
  on rank 0, broadcast them, zero the pruned weights. A resumed checkpoint
  holds computed masks, which are kept, never recomputed;
- ``after_train_iter`` (priority above ``EMAHook``): re-apply the masks right
  after each optimizer step, so momentum, weight decay and weight averaging
  never revive a pruned weight.

Only the student is touched: a GPUSQ algorithm (a model with an
``architecture`` attribute) is pruned in ``model.architecture``; its teacher
never is.
"""

from typing import Optional, Sequence

import torch
import torch.nn as nn
from mmengine.dist import broadcast, get_rank, get_world_size
from mmengine.hooks import Hook

from gpusq_mm.registry import HOOKS
from gpusq_mm.sparsity import (
    FLAG_NAME,
    MASK_NAME,
    MaskUpkeep,
    SparsityConfig,
    attach_masks,
    compute_masks,
    format_selection,
    has_masks,
    mask_summary,
    masked_layers,
    permute_model,
    select_layers,
)

from .model_access import get_student, unwrap

__all__ = ['SparsityHook', 'check_loaded_masks', 'get_student']


def _broadcast_masks(student: nn.Module) -> None:
    layers = list(masked_layers(student).values())
    if not layers:
        return
    parts = []
    for module in layers:
        parts.append(module._buffers[MASK_NAME].flatten())
        parts.append(module._buffers[FLAG_NAME].flatten())
    flat = torch.cat(parts).to(torch.uint8)
    broadcast(flat, src=0)
    offset = 0
    with torch.no_grad():
        for module in layers:
            for key in (MASK_NAME, FLAG_NAME):
                buf = module._buffers[key]
                n = buf.numel()
                chunk = flat[offset : offset + n].view(buf.shape)
                buf.copy_(chunk.to(device=buf.device, dtype=torch.bool))
                offset += n


def _broadcast_state(student: nn.Module) -> None:
    with torch.no_grad():
        for tensor in list(student.parameters()) + list(student.buffers()):
            if tensor.dtype == torch.bool:
                data = tensor.data.to(torch.uint8)
                broadcast(data, src=0)
                tensor.data.copy_(data.bool())
            else:
                broadcast(tensor.data, src=0)


def _source(runner) -> Optional[str]:
    """The checkpoint the Runner loaded (``load_from`` / ``--resume``)."""
    path = getattr(runner, '_load_from', None)
    if path is None and getattr(runner, '_resume', False):
        return f'(latest in {runner.work_dir})'
    return path


def _ema_students(runner) -> list:
    """The students of averaged model copies (``EMAHook``), if any."""
    found = []
    for hook in getattr(runner, 'hooks', []):
        module = getattr(getattr(hook, 'ema_model', None), 'module', None)
        if isinstance(module, nn.Module):
            found.append(getattr(module, 'architecture', module))
    return found


def check_loaded_masks(
    student: nn.Module, source: Optional[str] = None
) -> None:
    """Refuse computed masks that are not 2:4 (a tampered checkpoint).

    Raises:
        ValueError: naming the layers whose mask keeps more than 2 of 4.
    """
    from gpusq_mm.sparsity import is_2to4

    bad = [
        name
        for name, module in masked_layers(student).items()
        if bool(module._buffers[FLAG_NAME])
        and not is_2to4(module._buffers[MASK_NAME])
    ]
    if bad:
        shown = ', '.join(bad[:5]) + (' ...' if len(bad) > 5 else '')
        raise ValueError(
            f'the loaded checkpoint{f" {source!r}" if source else ""} holds '
            f'{len(bad)} 2:4 mask(s) that keep '
            f'more than 2 of every 4 weights: {shown}; a valid mask keeps at '
            'most 2 per group of 4 input channels. The checkpoint was '
            'altered or is not a gpusq_mm checkpoint; re-run from the dense '
            'weights (load_from) to recompute the masks'
        )


@HOOKS.register_module()
class SparsityHook(Hook):
    """Prune to 2:4 at the start of training and keep the masks enforced.

    Args:
        include (Sequence[str]): module-name regexes to restrict pruning to.
            Defaults to ``()`` (all eligible layers).
        exclude (Sequence[str]): extra module-name regexes to skip (the
            final prediction layers of heads and the teacher are skipped by
            default). Defaults to ``()``.
        include_types (Sequence[str]): extra module class names to prune.
            Defaults to ``()``.
        exclude_types (Sequence[str]): module class names to skip. Defaults
            to ``()``.
        use_default_exclude (bool): skip head prediction layers / teacher.
            Defaults to True.
        in_align (int): grouped (input-channel) size must be a multiple of
            it. Defaults to 16 (FP16 sparse kernels; 32 for INT8).
        out_align (int): output size must be a multiple of it. Defaults to
            8.
        permute (bool): search input-channel permutations before computing
            the masks (FFN / MLP / Bottleneck pairs, or ``permute_pairs``).
            Defaults to False.
        permute_pairs (Sequence, optional): explicit
            ``(producer, consumer[, between])`` pairs. Defaults to None.
        permute_search (dict, optional): arguments of the search
            (``num_passes``, ``patience``, ``seed``). Defaults to None.
        mask_grad (bool): also mask the gradients. Defaults to False.
        log_selection (bool): log the per-layer dry-run listing when the
            hook attaches the masks. Defaults to True.
    """

    priority = 'ABOVE_NORMAL'  # before EMAHook ('NORMAL') in every stage

    def __init__(
        self,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        include_types: Sequence[str] = (),
        exclude_types: Sequence[str] = (),
        use_default_exclude: bool = True,
        in_align: int = 16,
        out_align: int = 8,
        permute: bool = False,
        permute_pairs: Optional[Sequence] = None,
        permute_search: Optional[dict] = None,
        mask_grad: bool = False,
        log_selection: bool = True,
    ) -> None:
        self.cfg = SparsityConfig(
            include=include,
            exclude=exclude,
            include_types=include_types,
            exclude_types=exclude_types,
            use_default_exclude=use_default_exclude,
            in_align=in_align,
            out_align=out_align,
        )
        assert isinstance(permute, bool), (
            f'permute must be a bool, got {permute!r}'
        )
        assert permute_search is None or isinstance(permute_search, dict), (
            f'permute_search must be a dict, got {permute_search!r}'
        )
        self.permute = permute
        self.permute_pairs = permute_pairs
        self.permute_search = dict(permute_search or {})
        self.mask_grad = bool(mask_grad)
        self.log_selection = log_selection
        self.upkeep: Optional[MaskUpkeep] = None

    def before_run(self, runner) -> None:
        """Attach placeholder masks before any checkpoint is loaded."""
        student = get_student(runner.model)
        options = getattr(unwrap(runner.model), 'sparsity_options', {})
        asked = {k: v for k, v in options.items() if v} if options else {}
        mine = dict(
            permute=bool(self.permute),
            permute_pairs=self.permute_pairs,
            permute_search=self.permute_search or None,
            mask_grad=self.mask_grad,
        )
        theirs = dict(
            permute=bool(options.get('permute')),
            permute_pairs=options.get('permute_pairs'),
            permute_search=dict(options.get('permute_search') or {}) or None,
            mask_grad=bool(options.get('mask_grad')),
        )
        if asked and mine != theirs:
            raise ValueError(
                f'SparsityHook: model.sparsity sets {asked}, which this hook '
                'would ignore; use gpusq_mm.GPUSQHook (it reads them)'
            )
        if has_masks(student) and self.cfg != SparsityConfig():
            raise ValueError(
                f'SparsityHook: the layer selection {self.cfg} would be '
                'ignored: the model already carries 2:4 masks chosen by its '
                'own config (set it there, e.g. model.sparsity)'
            )
        if has_masks(student):
            runner.logger.info(
                f'SparsityHook: the model already carries '
                f'{len(masked_layers(student))} 2:4 mask buffers'
            )
            return
        decisions = select_layers(student, self.cfg)
        names = attach_masks(
            student, [d.name for d in decisions if d.eligible]
        )
        if self.log_selection:
            runner.logger.info(
                'SparsityHook: 2:4 layer selection\n'
                + format_selection(decisions, student)
            )
        for ema_student in _ema_students(runner):  # copied before us
            attach_masks(ema_student, names)
        if not names:
            raise ValueError(
                'SparsityHook: no layer of '
                f'{type(student).__name__} is selected for 2:4, nothing to '
                f'prune (include={list(self.cfg.include)}, '
                f'exclude={list(self.cfg.exclude)}, '
                f'exclude_types={list(self.cfg.exclude_types)}, '
                f'in_align={self.cfg.in_align}, '
                f'out_align={self.cfg.out_align}); candidates are Linear / '
                'Conv2d layers with input % in_align == 0 and output % '
                'out_align == 0. The selection:\n'
                + format_selection(decisions, student)
            )

    def before_train(self, runner) -> None:
        """Compute missing masks from the loaded weights; start upkeep."""
        student = get_student(runner.model)
        if not has_masks(student):  # e.g. before_run was skipped
            attach_masks(student, cfg=self.cfg)
        check_loaded_masks(student, _source(runner))  # computed: 2:4
        layers = masked_layers(student)
        missing = [
            n for n, m in layers.items() if not bool(m._buffers[FLAG_NAME])
        ]
        world_size = get_world_size()
        if missing:
            permuted = False
            if get_rank() == 0:
                if self.permute:
                    report = permute_model(
                        student,
                        pairs=self.permute_pairs,
                        consumers=missing,
                        **self.permute_search,
                    )
                    permuted = bool(report['layers'])
                    runner.logger.info(
                        'SparsityHook: channel permutation kept magnitude '
                        f'{report["before"]:.4f} -> {report["after"]:.4f} '
                        f'on {len(report["layers"])} layers'
                    )
                compute_masks(student)
            if world_size > 1:
                if self.permute:  # permuted weights live on rank 0 only
                    _broadcast_state(student)
                else:
                    _broadcast_masks(student)
            self._sync_ema(runner, student)
            runner.logger.info(
                f'SparsityHook: computed {len(missing)} 2:4 masks'
                + (' (channels permuted)' if permuted else '')
            )
        elif layers:
            runner.logger.info(
                f'SparsityHook: {len(layers)} 2:4 masks loaded from the '
                'checkpoint, not recomputed'
            )
        self.upkeep = MaskUpkeep(student, mask_grad=self.mask_grad)
        self.upkeep.apply(check=False)
        self._log_state(runner, 'start of training')

    def before_test(self, runner) -> None:
        """Refuse a tested checkpoint whose masks are not 2:4."""
        check_loaded_masks(get_student(runner.model), _source(runner))

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs=None
    ) -> None:
        """Re-apply the masks right after the optimizer step."""
        if self.upkeep is not None:
            self.upkeep.apply()
            self._mask_ema(runner)

    def after_train_epoch(self, runner) -> None:
        """Log the sparsity state."""
        self._log_state(runner, f'epoch {runner.epoch}')

    def after_train(self, runner) -> None:
        """Log the final state and drop gradient hooks."""
        self._log_state(runner, 'end of training')
        if self.upkeep is not None:
            self.upkeep.remove_grad_hooks()

    def _sync_ema(self, runner, student: nn.Module) -> None:
        """Give averaged models (EMAHook) the new masks and weights."""
        for hook in getattr(runner, 'hooks', []):
            ema_model = getattr(hook, 'ema_model', None)
            module = getattr(ema_model, 'module', None)
            if not isinstance(module, nn.Module):
                continue
            ema_student = getattr(module, 'architecture', module)
            attach_masks(ema_student, list(masked_layers(student)))
            ema_student.load_state_dict(student.state_dict())

    def _mask_ema(self, runner) -> None:
        """Zero the pruned weights of averaged models (EMAHook) too.

        Whichever hook runs first after the step (an ``EMAHook`` with
        priority ``ABOVE_NORMAL`` registered before this hook averages the
        not yet re-masked weights), the averaged copy that checkpoints hold
        stays 2:4.
        """
        emas = _ema_students(runner)
        if not emas:
            return
        student = get_student(runner.model)
        layers = [
            (name, m._buffers[MASK_NAME])
            for name, m in masked_layers(student).items()
            if bool(m._buffers[FLAG_NAME])
        ]
        with torch.no_grad():
            for ema_student in emas:
                weights = [
                    ema_student.get_submodule(name).weight
                    for name, _ in layers
                ]
                masks = [
                    mask.to(w.dtype) for w, (_, mask) in zip(weights, layers)
                ]
                if weights:
                    torch._foreach_mul_(weights, masks)

    def _log_state(self, runner, when: str) -> None:
        state = mask_summary(get_student(runner.model))
        runner.logger.info(
            f'SparsityHook ({when}): {state["compliant"]}/{state["layers"]} '
            f'layers 2:4 ({state["computed"]} computed), '
            f'{state["share_2to4"]:.2%} of the model weights 2:4'
        )
        if hasattr(runner, 'message_hub'):
            runner.message_hub.update_info(
                'sparsity_share_2to4', state['share_2to4']
            )
