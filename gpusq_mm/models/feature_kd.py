"""Feature distillation between named modules of student and teacher.

Each recorded tensor (a module output, or one element of a tuple output
such as a backbone stage or a neck level) is one *layer* ``i`` of
GPUSQ-ViT's ``sum_i w_i * L_feat,i``. Before the QAT stage the factors are
uniform (the loss is the mean over layers) and the per-layer losses of the
sparse stage are tracked in :class:`LossStatistics`; ``freeze`` turns them
into the QAT factors (see :mod:`gpusq_mm.distillation.weighting`).
"""

from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from gpusq_mm.distillation import (
    WEIGHT_MODES,
    FeatureConnector,
    FeatureRecorder,
    LossStatistics,
    align_spatial,
    feature_loss,
    flatten_output,
    masked_mean,
)

from .feature_levels import resolve_levels

__all__ = ['FeatureDistiller']


def _key(name: str) -> str:
    return name.replace('.', '__')


class FeatureDistiller(nn.Module):
    """Feature-KD losses, connectors and stage-1 statistics.

    Args:
        student (nn.Module): the student (hooked by module name).
        teacher (nn.Module): the teacher (hooked by module name).
        modules (Sequence[str]): student module names.
        teacher_modules (Sequence[str], optional): the teacher's module
            names, paired by position with ``modules``; default: the same.
        loss (str): ``'mse'`` or ``'nmse'``. Defaults to ``'mse'``.
        connectors (dict, optional): feature name (e.g. ``'backbone.3'``)
            -> ``dict(in_channels, out_channels, kind='conv'|'linear')``.
            Defaults to None.
        weight_mode (str): how QAT factors come from stage-1 losses:
            ``'inverse'`` (default), ``'proportional'``, ``'uniform'``.
        momentum (float, optional): EMA momentum of the statistics; None
            for the exact mean over stage 1. Defaults to None.
        levels (str | dict): which outputs of multi-output modules (a
            backbone's stages, a neck's levels) are compared:
            ``'later'`` (the last two backbone stages and the neck levels
            built from them or coarser), ``'all'``, or ``{module: [output
            indices]}`` (see :mod:`gpusq_mm.models.feature_levels`).
            Defaults to ``'later'``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        modules: Sequence[str],
        teacher_modules: Optional[Sequence[str]] = None,
        loss: str = 'mse',
        connectors: Optional[dict] = None,
        weight_mode: str = 'inverse',
        momentum: Optional[float] = None,
        levels: Union[str, Dict[str, Sequence[int]]] = 'later',
    ) -> None:
        super().__init__()
        assert loss in ('mse', 'nmse'), (
            f"features.loss must be 'mse' or 'nmse', got {loss!r}"
        )
        assert weight_mode in WEIGHT_MODES, (
            f'weighting mode must be one of {WEIGHT_MODES}, got '
            f'{weight_mode!r}'
        )
        modules = list(modules)
        teacher_modules = list(teacher_modules or modules)
        if len(teacher_modules) != len(modules):
            raise ValueError(
                f'features.teacher_modules ({len(teacher_modules)}) must '
                f'pair with features.modules ({len(modules)})'
            )
        self.loss_kind = loss
        self.weight_mode = weight_mode
        self.modules_s = modules
        self.modules_t = teacher_modules
        self.student_recorder = FeatureRecorder(student, modules)
        #: module -> kept output indices (modules absent: every output)
        self.levels = resolve_levels(student, modules, levels)
        self.teacher_recorder = FeatureRecorder(teacher, teacher_modules)
        self.connectors = nn.ModuleDict()
        for name, cfg in (connectors or {}).items():
            if name.split('.')[0] not in {m.split('.')[0] for m in modules}:
                raise KeyError(
                    f'connector {name!r} is for no distilled feature; '
                    f'features.modules = {modules}'
                )
            module, _, index = name.rpartition('.')
            kept = self.levels.get(module)
            if kept is not None and index.isdigit() and int(index) not in kept:
                raise KeyError(
                    f'connector {name!r} is for a feature that '
                    f'distill.features.levels leaves out (kept outputs of '
                    f'{module!r}: {kept})'
                )
            self.connectors[_key(name)] = FeatureConnector(**cfg)
        self.stats = LossStatistics(momentum)
        self.use_connectors = True

    def set_teacher(
        self, teacher: nn.Module, modules=None, use_connectors: bool = True
    ) -> None:
        """Hook a new teacher (the QAT snapshot) by module name.

        Args:
            teacher (nn.Module): the new teacher.
            modules (list[str], optional): its module names, paired with
                the student's; default: the current teacher names.
            use_connectors (bool): keep bridging channels (False for a
                teacher of the student's own architecture).
        """
        self.teacher_recorder.detach()
        self.teacher_recorder = FeatureRecorder(
            teacher, list(modules or self.modules_t)
        )
        self.modules_t = list(modules or self.modules_t)
        self.use_connectors = use_connectors

    def detach_student_hooks(self) -> None:
        """Remove the student hooks (before deep-copying the student)."""
        self.student_recorder.detach()

    def _pairs(self):
        pairs = []
        s_rec, t_rec = self.student_recorder, self.teacher_recorder
        for m_s, m_t in zip(self.modules_s, self.modules_t):
            if not s_rec.has(m_s):
                continue
            if not t_rec.has(m_t):
                raise KeyError(
                    f'teacher module {m_t!r} did not run (paired with '
                    f'student module {m_s!r})'
                )
            s_out, t_out = s_rec.raw(m_s), t_rec.raw(m_t)
            if isinstance(s_out, torch.Tensor):
                pairs.append((m_s, s_out, t_out))
                continue
            s_parts, t_parts = flatten_output(s_out), flatten_output(t_out)
            if len(s_parts) != len(t_parts):
                raise ValueError(
                    f'student {m_s!r} gives {len(s_parts)} outputs, teacher '
                    f'{m_t!r} {len(t_parts)}'
                )
            kept = self.levels.get(m_s)
            if kept is not None and kept and max(kept) >= len(s_parts):
                raise ValueError(
                    f'distill.features.levels keeps output {max(kept)} of '
                    f'{m_s!r}, which gives {len(s_parts)} outputs'
                )
            for i, (s, t) in enumerate(zip(s_parts, t_parts)):
                if s is not None and (kept is None or i in kept):
                    pairs.append((f'{m_s}.{i}', s, t))
        return pairs

    def forward(
        self,
        track: bool,
        sample_mask: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Weighted feature loss and per-layer losses of the last passes.

        Args:
            track (bool): add the per-layer losses to the statistics.
            sample_mask (Tensor, optional): ``(N,)`` bool, samples whose
                features are distilled (class-agreement gating).

        Returns:
            tuple[Tensor, dict]: ``sum_i w_i L_i`` and ``{name: L_i}``.
        """
        per_layer: Dict[str, torch.Tensor] = {}
        for name, s, t in self._pairs():
            key = _key(name)
            if self.use_connectors and key in self.connectors:
                s = self.connectors[key](s)
            s = align_spatial(s, t)
            if s.shape != t.shape:
                raise ValueError(
                    f'feature {name!r}: student {tuple(s.shape)} vs teacher '
                    f'{tuple(t.shape)}; declare a connector, e.g. '
                    f'distill.features.connectors={{{name!r}: dict('
                    'in_channels=..., out_channels=..., kind=...)}'
                )
            if sample_mask is not None:
                d = (s.float() - t.detach().float()).pow(2)
                per_sample = d.reshape(d.shape[0], -1).mean(1)
                per_layer[name] = masked_mean(per_sample, sample_mask)
            else:
                per_layer[name] = feature_loss(s, t, self.loss_kind)
        if not per_layer:
            raise RuntimeError(
                'no feature was recorded for feature KD; modules: '
                f'{self.modules_s}'
            )
        names = list(per_layer)
        values = torch.stack([per_layer[n] for n in names])
        if track and not bool(self.stats.frozen):
            self.stats.update(names, values)
        if bool(self.stats.frozen) and self.stats.factors.numel() == 0:
            # frozen before any stage-1 statistics: uniform factors, kept
            # in the buffer so checkpoints carry them
            self.stats.factors.resize_(len(names)).fill_(1.0 / len(names))
        if bool(self.stats.frozen):
            if self.stats.factors.numel() != len(names):
                raise RuntimeError(
                    f'{self.stats.factors.numel()} frozen factors for '
                    f'{len(names)} features {names}: the checkpoint comes '
                    'from a run that distilled other features (e.g. '
                    "before distill.features.levels='later' became the "
                    "default: set levels='all' to resume it)"
                )
            weights = self.stats.factors.to(values)
        else:
            weights = torch.full_like(values, 1.0 / len(names))
        self.stats.names = names
        return (weights * values).sum(), per_layer

    def freeze_factors(self) -> torch.Tensor:
        """Freeze the QAT weight factors from the stage-1 statistics."""
        return self.stats.freeze(self.weight_mode)
