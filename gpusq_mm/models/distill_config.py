"""Defaults and validation of the ``GPUSQ.distill`` settings."""

import copy
from typing import Optional

__all__ = ['distill_defaults']


def distill_defaults(distill: Optional[dict]) -> dict:
    """``GPUSQ.distill`` with every default filled in (see ``GPUSQ``).

    Defaults follow ``shared/METHOD.md``: alpha = 1 (hard), beta = 10
    (soft logits), gamma = 5 (features); temperature 1 and MSE are our
    documented choices where the paper is silent.

    Raises:
        KeyError: on an unknown top-level key.
    """
    distill = copy.deepcopy(dict(distill or {}))
    unknown = set(distill) - {'hard', 'logits', 'features', 'weighting'}
    if unknown:
        raise KeyError(
            f'unknown distill keys {sorted(unknown)}; known: hard, logits, '
            'features, weighting'
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
    )
    feats.update(distill.get('features') or {})
    weighting = dict(mode='inverse', momentum=None)
    weighting.update(distill.get('weighting') or {})
    return dict(
        hard=float(distill.get('hard', 1.0)),
        logits=logits,
        features=feats,
        weighting=weighting,
    )
