"""Per-layer feature-KD weight factors for sparse-aware QAT (pure torch).

GPUSQ-ViT (Yu et al., CVPR 2023, arXiv 2305.10727) weights each layer's
feature-distillation loss during QAT by a factor derived from that layer's
feature-KD loss during 2:4 sparse fine-tuning (stage 1): a layer the sparse
model found harder to match gets a *smaller* factor [secondary summary; no
formula is published]. Our default is the
normalized inverse ``w_i = (1 / L_i) / sum_j (1 / L_j)``; ``'proportional'``
(``L_i / sum_j L_j``) and ``'uniform'`` (``1 / N``) are options. Factors sum
to one, so uniform factors reproduce the stage-1 mean over layers.

:class:`LossStatistics` tracks the stage-1 running means in buffers, so they
travel in every checkpoint and survive resume.
"""

from typing import Dict, List, Sequence

import torch
import torch.nn as nn

__all__ = ['WEIGHT_MODES', 'LossStatistics', 'compute_weight_factors']

WEIGHT_MODES = ('inverse', 'proportional', 'uniform')


def compute_weight_factors(
    losses: torch.Tensor, mode: str = 'inverse', eps: float = 1e-12
) -> torch.Tensor:
    """Weight factors (summing to one) from per-layer stage-1 losses.

    Args:
        losses (Tensor): ``(N,)`` mean stage-1 feature-KD loss per layer.
        mode (str): ``'inverse'`` (larger loss, smaller factor; default),
            ``'proportional'`` or ``'uniform'``.
        eps (float): floor for losses in the inverse. Defaults to 1e-12.

    Returns:
        Tensor: ``(N,)`` float factors, summing to one.
    """
    assert mode in WEIGHT_MODES, (
        f'weight mode must be one of {WEIGHT_MODES}, got {mode!r}'
    )
    losses = losses.detach().double()
    n = losses.numel()
    if n == 0:
        return losses.float()
    if mode == 'uniform' or not torch.isfinite(losses).all():
        w = torch.ones_like(losses)
    elif mode == 'inverse':
        w = 1.0 / losses.clamp(min=eps)
    else:
        w = losses.clamp(min=0)
        if w.sum() <= 0:
            w = torch.ones_like(losses)
    return (w / w.sum()).float()


class LossStatistics(nn.Module):
    """Running means of per-layer losses, kept in resizable buffers.

    The number of layers is only known after the first forward pass, so
    the buffers start empty and grow on the first :meth:`update`; loading a
    checkpoint resizes them to the stored shape.

    Buffers: ``mean`` ``(N,)`` running mean per layer, ``count`` ``(N,)``
    number of updates, ``factors`` ``(N,)`` frozen weight factors (empty
    until :meth:`freeze`), ``frozen`` bool scalar.

    Args:
        momentum (float, optional): ``None`` for the exact cumulative mean
            over all updates, else an exponential moving average with this
            momentum. Defaults to None.
    """

    def __init__(self, momentum: float = None) -> None:
        super().__init__()
        assert momentum is None or 0 < momentum <= 1, (
            f'momentum must be None or in (0, 1], got {momentum}'
        )
        self.momentum = momentum
        self.names: List[str] = []
        self.register_buffer('mean', torch.zeros(0, dtype=torch.float64))
        self.register_buffer('count', torch.zeros(0, dtype=torch.int64))
        self.register_buffer('factors', torch.zeros(0))
        self.register_buffer('frozen', torch.zeros((), dtype=torch.bool))

    def _resize(self, n: int) -> None:
        if self.mean.numel() == n:
            return
        if self.mean.numel() != 0:
            raise ValueError(
                f'the number of distilled features changed from '
                f'{self.mean.numel()} to {n}'
            )
        # in place: a DDP wrapper holds references to these buffers
        self.mean.resize_(n).zero_()
        self.count.resize_(n).zero_()

    @torch.no_grad()
    def update(self, names: Sequence[str], losses: Sequence) -> None:
        """Add one observation per layer (detached)."""
        self.names = list(names)
        self._resize(len(names))
        if not len(names):
            return
        values = torch.stack(
            [torch.as_tensor(v).detach().double().reshape(()) for v in losses]
        ).to(self.mean.device)
        self.count += 1
        if self.momentum is None:
            self.mean += (values - self.mean) / self.count.double()
        else:
            first = self.count == 1
            ema = self.mean * (1 - self.momentum) + values * self.momentum
            self.mean.copy_(torch.where(first, values, ema))

    @torch.no_grad()
    def freeze(self, mode: str = 'inverse') -> torch.Tensor:
        """Compute and keep the weight factors; later updates are ignored.

        Layers never observed (or no statistics at all) fall back to
        uniform factors.
        """
        if self.mean.numel() and bool((self.count > 0).all()):
            factors = compute_weight_factors(self.mean, mode)
        else:
            n = self.mean.numel()
            factors = torch.full((n,), 1.0 / max(n, 1))
        self.factors.resize_(factors.numel()).copy_(factors)  # in place
        self.frozen.fill_(True)
        return self.factors

    def factor_dict(self) -> Dict[str, float]:
        """The frozen factors by layer name (empty if not frozen)."""
        if not bool(self.frozen):
            return {}
        return dict(zip(self.names, self.factors.tolist()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in ('mean', 'count', 'factors'):
            value = state_dict.get(prefix + key)
            current = getattr(self, key)
            if value is not None and value.shape != current.shape:
                with torch.no_grad():  # in place (DDP holds references)
                    current.resize_(value.shape).zero_()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
