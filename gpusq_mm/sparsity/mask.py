"""2:4 structured-sparsity masks (the NVIDIA ASP ``m4n2_1d`` convention).

Sparse Tensor Cores (Ampere and later) multiply a matrix whose every group of
4 consecutive elements along the reduction (input-channel) axis holds at most
2 non-zeros. For a ``Linear`` weight ``(out, in)`` the groups run along
``in``; for a ``Conv2d`` weight ``(K, C, R, S)`` they run along ``C`` for each
``(k, r, s)``, which is how TensorRT and NVIDIA ASP (apex.contrib.sparsity,
``m4n2_1d``) lay the implicit GEMM out. GPUSQ-ViT (Yu et al., CVPR 2023,
arXiv 2305.10727) prunes with exactly this magnitude criterion: keep the 2
largest ``|w|`` of every group, once, then fine-tune with the mask fixed.

Ties are broken deterministically: among equal magnitudes the element with
the lower input-channel index is kept, on every device.
"""

from typing import Optional, Tuple

import torch

__all__ = [
    'compute_2to4_mask',
    'is_2to4',
    'kept_magnitude_ratio',
    'to_groups',
    'from_groups',
]

GROUP = 4
KEEP = 2


def _check_weight(weight: torch.Tensor) -> None:
    if weight.dim() < 2:
        raise ValueError(
            'a 2:4 weight needs an input-channel axis (dim >= 2), got shape '
            f'{tuple(weight.shape)}'
        )
    if weight.shape[1] % GROUP:
        raise ValueError(
            f'the input-channel axis (dim 1) of shape {tuple(weight.shape)} '
            f'is not a multiple of {GROUP}'
        )


def to_groups(weight: torch.Tensor) -> torch.Tensor:
    """View or copy ``weight`` as ``(num_groups, 4)`` along input channels.

    Axis 1 (the input-channel axis of Linear and Conv weights) is moved last,
    so each row of the result is 4 consecutive input channels of one output
    channel (and one kernel position for convs).

    Args:
        weight (Tensor): ``(out, in)`` or ``(K, C, *kernel)``, with the
            input-channel count a multiple of 4.

    Returns:
        Tensor: shape ``(weight.numel() // 4, 4)``.
    """
    _check_weight(weight)
    if weight.dim() > 2:
        weight = weight.movedim(1, -1)
    return weight.reshape(-1, GROUP)


def from_groups(groups: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """Invert :func:`to_groups` for a weight of shape ``shape``."""
    if len(shape) > 2:
        moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
        return groups.reshape(moved).movedim(-1, 1).contiguous()
    return groups.reshape(shape)


def compute_2to4_mask(weight: torch.Tensor) -> torch.Tensor:
    """Magnitude 2:4 mask along the input-channel axis.

    Keeps the 2 largest-magnitude values of every group of 4 consecutive
    input channels (``Linear (out, in)``: along ``in``; ``Conv2d
    (K, C, R, S)``: along ``C`` for each ``(k, r, s)``). Among equal
    magnitudes the lower channel index wins.

    Args:
        weight (Tensor): the weight, input-channel count a multiple of 4.

    Returns:
        Tensor: a bool mask of ``weight``'s shape and device, ``True`` where
        the value is kept; exactly 2 ``True`` per group.

    Raises:
        ValueError: if ``weight`` has no input-channel axis or its size is
            not a multiple of 4.
    """
    with torch.no_grad():
        mag = to_groups(weight.detach()).abs().float()
        # rank[i] = #{j : |w_j| > |w_i| or (|w_j| == |w_i| and j < i)}:
        # a strict total order, so exactly 2 elements get rank < 2.
        greater = mag.unsqueeze(1) > mag.unsqueeze(2)  # [g, i, j]: j > i
        equal = mag.unsqueeze(1) == mag.unsqueeze(2)
        lower = torch.ones(
            GROUP, GROUP, dtype=torch.bool, device=mag.device
        ).tril(-1)  # [i, j] True where j < i
        rank = (greater | (equal & lower)).sum(dim=2)
        keep = rank < KEEP
    return from_groups(keep, tuple(weight.shape))


def is_2to4(weight: torch.Tensor) -> bool:
    """Whether every input-channel group of 4 has at most 2 non-zeros.

    Args:
        weight (Tensor): a Linear or Conv weight.

    Returns:
        bool: ``False`` as well when the input-channel axis is missing or its
        size is not a multiple of 4 (such a weight cannot run sparse).
    """
    if weight.dim() < 2 or weight.shape[1] % GROUP:
        return False
    with torch.no_grad():
        nonzero = (to_groups(weight.detach()) != 0).sum(dim=1)
    return bool((nonzero <= KEEP).all())


def kept_magnitude_ratio(
    weight: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> float:
    """Share of the total ``|w|`` that ``mask`` keeps.

    Args:
        weight (Tensor): the dense weight.
        mask (Tensor, optional): a bool mask; the magnitude 2:4 mask of
            ``weight`` if ``None``. Defaults to None.

    Returns:
        float: ``sum(|w| * mask) / sum(|w|)`` (1.0 for an all-zero weight).
    """
    with torch.no_grad():
        if mask is None:
            mask = compute_2to4_mask(weight)
        mag = weight.detach().abs().double()
        total = float(mag.sum())
        if total == 0.0:
            return 1.0
        return float((mag * mask).sum()) / total
