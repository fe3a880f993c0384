"""Defaults and validation of the ``GPUSQ.distill`` settings.

:data:`DISTILL_DEFAULTS` is the one place the KD recipe's values live
(GPUSQ-ViT: alpha = 1 for the hard loss, beta = 10 for the soft logits,
gamma = 5 for the features). Validation is driven by that table: a key is
accepted if and only if it is in the table, at any depth, so a key added
there is accepted everywhere, and a typo (``logits.temperature``,
``features.layers``) is an error naming the key and the accepted ones.
A section (a dict in the table) is merged key by key; any other default
(``None``, a number, a string) is a leaf the user value replaces whole.
"""

import copy
from typing import Optional

__all__ = ['DISTILL_DEFAULTS', 'distill_defaults']

#: The KD recipe. The soft-logit temperature is 2.0: the paper does not
#: publish it (a range of 1..4 is usual); 2.0 is what the demo's reported
#: results were trained with.
DISTILL_DEFAULTS = dict(
    hard=1.0,  # weight of the student's own task loss
    logits=dict(
        weight=10.0,
        T=2.0,
        parts=None,  # adapter's logit parts and their weights
    ),
    features=dict(
        weight=5.0,
        modules=None,  # student module names; None: adapter's defaults
        teacher_modules=None,  # None: the same names
        loss='mse',  # 'mse' | 'nmse'
        connectors=None,  # {student module: connector cfg}
        gate_on_agreement=False,  # classifiers only
        log_per_layer=False,
        levels='later',  # 'later' | 'all' | {module: [output indices]}
    ),
    weighting=dict(
        mode='inverse',  # QAT per-layer factors: inverse|proportional|uniform
        momentum=None,
    ),
    # label-free mode (``hard='teacher'`` is the shorthand): the teacher's
    # predictions replace the ground truth; the score threshold is for
    # detectors' teacher detections
    hard_targets='gt',  # 'gt' | 'teacher'
    teacher_score_thr=None,
)


def _merge(defaults: dict, given, path: str) -> dict:
    if given is None:
        return copy.deepcopy(defaults)
    if not isinstance(given, dict):
        raise TypeError(
            f'{path} must be a dict of {sorted(defaults)}, got {given!r}'
        )
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        names = ', '.join(f'{path}.{k}' for k in unknown)
        raise KeyError(
            f'unknown key(s) {names}; accepted in {path}: '
            f'{", ".join(sorted(defaults))}'
        )
    out = {}
    for key, default in defaults.items():
        if isinstance(default, dict):
            out[key] = _merge(default, given.get(key), f'{path}.{key}')
        else:
            out[key] = copy.deepcopy(given.get(key, default))
    return out


def distill_defaults(distill: Optional[dict]) -> dict:
    """``GPUSQ.distill`` with every default of the table filled in.

    Feature KD compares the later stages (``features.levels='later'``).
    ``hard='teacher'`` is the label-free mode: weight 1, the teacher's
    predictions as targets (``hard_targets='teacher'``;
    ``teacher_score_thr``: detectors only).

    Args:
        distill (dict, optional): user settings (a subset of
            :data:`DISTILL_DEFAULTS`, any depth); None: the defaults.

    Returns:
        dict: the full settings.

    Raises:
        KeyError: a key not in :data:`DISTILL_DEFAULTS` (at any depth),
            named with its path and the accepted keys.
        TypeError: a section given as a non-dict.
    """
    out = _merge(DISTILL_DEFAULTS, distill, 'distill')
    out.update(_label_free(out))
    return out


def _label_free(out: dict) -> dict:
    """``hard`` (a weight), ``hard_targets`` and ``teacher_score_thr``."""
    hard, targets = out['hard'], out['hard_targets']
    if hard == 'teacher':
        hard, targets = 1.0, 'teacher'
    if isinstance(hard, str) or targets not in ('gt', 'teacher'):
        raise ValueError(
            "distill.hard must be a weight or 'teacher' and "
            "distill.hard_targets 'gt' or 'teacher'; got "
            f'hard={hard!r}, hard_targets={targets!r}'
        )
    thr = out['teacher_score_thr']
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
