"""Defaults and validation of the ``GPUSQ.distill`` settings."""

import copy
from typing import Optional

__all__ = ['distill_defaults']


def distill_defaults(distill: Optional[dict]) -> dict:
    """``GPUSQ.distill`` with every default filled in (see ``GPUSQ``).

    Defaults follow ``shared/METHOD.md``: alpha = 1 (hard), beta = 10
    (soft logits), gamma = 5 (features); temperature 1 and MSE are our
    documented choices where the paper is silent. Feature KD compares the
    later stages (``features.levels='later'``). ``hard='teacher'`` is the
    label-free mode: weight 1, the teacher's predictions as targets
    (``hard_targets='teacher'``; ``teacher_score_thr``: detectors only).

    Raises:
        KeyError: on an unknown top-level key.
    """
    distill = copy.deepcopy(dict(distill or {}))
    known = {'hard', 'logits', 'features', 'weighting'}
    known |= set(LABEL_FREE_KEYS)
    unknown = set(distill) - known
    if unknown:
        raise KeyError(
            f'unknown distill keys {sorted(unknown)}; known: '
            f'{", ".join(sorted(known))}'
        )
    logits = dict(weight=10.0, T=1.0, parts=None)
    logits.update(distill.get('logits') or {})
    feats = dict(
        weight=5.0,
        modules=None,
        teacher_modules=None,
        loss='mse',
        connectors=None,
        gate_on_agreement=False,
        log_per_layer=False,
        levels='later',  # 'later' | 'all' | {module: [output indices]}
    )
    feats.update(distill.get('features') or {})
    weighting = dict(mode='inverse', momentum=None)
    weighting.update(distill.get('weighting') or {})
    out = dict(
        hard=distill.get('hard', 1.0),
        logits=logits,
        features=feats,
        weighting=weighting,
    )
    out.update(_label_free(distill, out.pop('hard')))
    return out


#: label-free mode keys (``hard='teacher'`` is their shorthand)
LABEL_FREE_KEYS = dict(hard_targets='gt', teacher_score_thr=None)


def _label_free(distill: dict, hard) -> dict:
    """``hard`` (a weight), ``hard_targets`` and ``teacher_score_thr``."""
    targets = distill.get('hard_targets', LABEL_FREE_KEYS['hard_targets'])
    if hard == 'teacher':
        hard, targets = 1.0, 'teacher'
    if isinstance(hard, str) or targets not in ('gt', 'teacher'):
        raise ValueError(
            "distill.hard must be a weight or 'teacher' and "
            "distill.hard_targets 'gt' or 'teacher'; got "
            f'hard={hard!r}, hard_targets={targets!r}'
        )
    thr = distill.get('teacher_score_thr')
    if thr is not None and targets != 'teacher':
        raise ValueError(
            'distill.teacher_score_thr is the score threshold of the '
            "teacher's detections in label-free mode; set "
            "distill.hard='teacher' (or hard_targets='teacher') to use it"
        )
    return dict(
        hard=float(hard),
        hard_targets=targets,
        teacher_score_thr=None if thr is None else float(thr),
    )
