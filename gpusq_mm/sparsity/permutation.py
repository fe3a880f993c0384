"""Channel-permutation search for 2:4 masks, without graph tracing.

Which 4 input channels share a 2:4 group is an accident of channel order.
Permuting a layer's input channels together with the output channels of the
layer that produces them (and of any per-channel op in between: activation,
BatchNorm) leaves the network function unchanged but can raise the
magnitude that the 2:4 mask keeps (Pool & Yu, "Channel Permutations for
N:M Sparsity", NeurIPS 2021, the method behind NVIDIA ASP's permutation
search). We find producer/consumer pairs from module names and types, not
torch.fx, so detectors and segmentors with dynamic control flow work:

- mmcv ``FFN`` (Swin / ViT blocks of mmdet, mmseg, mmpretrain):
  ``<x>.ffn.layers.0.0`` -> ``<x>.ffn.layers.1``;
- timm-style MLPs: ``<x>.mlp.fc1`` -> ``<x>.mlp.fc2``;
- ResNet ``Bottleneck`` blocks without plugins:
  ``conv1 -> bn1 -> conv2`` and ``conv2 -> bn2 -> conv3``;
- any pair given explicitly as ``(producer, consumer, [per-channel ops])``.

The search is a randomized parallel swap search on the consumer's column
groups: each pass pairs the groups at random and applies, per pair, the
best of the 16 single-column swaps if it raises the kept magnitude.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .eligibility import layer_kind
from .masking import FLAG_NAME, MASK_NAME

__all__ = [
    'PermutationPair',
    'find_permutable_pairs',
    'permute_channels',
    'permute_model',
    'search_permutation',
]


@dataclass
class PermutationPair:
    """A producer whose output channels are the consumer's input channels.

    Args:
        producer (str): name of the Linear / Conv2d producing the channels.
        consumer (str): name of the Linear / Conv2d consuming them.
        between (list[str]): per-channel modules in between (BatchNorm) whose
            parameters and statistics are permuted too.
    """

    producer: str
    consumer: str
    between: List[str] = field(default_factory=list)


def find_permutable_pairs(model: nn.Module) -> List[PermutationPair]:
    """Producer/consumer pairs that the known block patterns guarantee."""
    modules = dict(model.named_modules())
    pairs = []

    def add(producer: str, consumer: str, between=()) -> None:
        if producer in modules and consumer in modules:
            pairs.append(PermutationPair(producer, consumer, list(between)))

    for name, module in modules.items():
        prefix = f'{name}.' if name else ''
        if name.endswith('ffn') and hasattr(module, 'layers'):
            add(prefix + 'layers.0.0', prefix + 'layers.1')
        elif (
            name.endswith('mlp')
            and hasattr(module, 'fc1')
            and isinstance(getattr(module, 'norm', nn.Identity()), nn.Identity)
        ):
            add(prefix + 'fc1', prefix + 'fc2')
        elif (
            type(module).__name__ == 'Bottleneck'
            and not getattr(module, 'with_plugins', False)
            and not getattr(module, 'with_dcn', False)
            and hasattr(module, 'conv3')
        ):
            add(prefix + 'conv1', prefix + 'conv2', [prefix + 'bn1'])
            add(prefix + 'conv2', prefix + 'conv3', [prefix + 'bn2'])
    return pairs


def _magnitudes(weight: torch.Tensor) -> torch.Tensor:
    """``|W|`` as ``(rows, in_channels)``: one row per output/kernel pos."""
    mag = weight.detach().abs().float()
    if mag.dim() > 2:
        mag = mag.movedim(1, -1)
    return mag.reshape(-1, weight.shape[1])


def _kept(groups: torch.Tensor) -> torch.Tensor:
    """Sum of the 2 largest of 4 values laid out on dim 0: ``(4, ...)``.

    With ``p, q = max, min(x0, x1)`` and ``r, s = max, min(x2, x3)`` the
    top-2 sum is ``max(p + max(q, r), r + s)``: 7 elementwise ops on
    contiguous slices, much faster than ``topk`` over a last dim of 4.
    """
    a, b, c, d = groups.unbind(0)
    p, q = torch.maximum(a, b), torch.minimum(a, b)
    r, s = torch.maximum(c, d), torch.minimum(c, d)
    return torch.maximum(p + torch.maximum(q, r), r + s)


def _leave_one_out(x: torch.Tensor) -> tuple:
    """Top-1 and top-2 sums of the 3 values left when slot ``i`` is out.

    Args:
        x (Tensor): ``(4, ...)``.

    Returns:
        tuple[Tensor, Tensor]: both ``(4, ...)``, indexed by the slot left
        out.
    """
    top1, top2 = [], []
    for i in range(4):
        u, v, w = (x[k] for k in range(4) if k != i)
        low = torch.minimum(torch.minimum(u, v), w)
        top1.append(torch.maximum(torch.maximum(u, v), w))
        top2.append(u + v + w - low)
    return torch.stack(top1), torch.stack(top2)


def _grouped(mag: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``(4, rows, groups)``: slot ``k`` of every input-channel group."""
    rows = mag.shape[0]
    return mag[:, perm].reshape(rows, -1, 4).permute(2, 0, 1).contiguous()


def _kept_total(mag: torch.Tensor, perm: torch.Tensor) -> float:
    return float(_kept(_grouped(mag, perm)).sum())


def search_permutation(
    weight: torch.Tensor,
    num_passes: int = 100,
    patience: int = 10,
    seed: int = 0,
    max_elements: int = 1 << 22,
) -> torch.Tensor:
    """Search an input-channel permutation raising the 2:4 kept magnitude.

    Args:
        weight (Tensor): the consumer's weight ``(out, in, ...)``.
        num_passes (int): maximum number of passes. Defaults to 100.
        patience (int): stop after this many passes without a gain.
            Defaults to 10.
        seed (int): seed of the random group pairing. Defaults to 0.
        max_elements (int): memory bound of one evaluation chunk.

    Returns:
        Tensor: ``perm`` (int64), with ``weight[:, perm]`` the permuted
        weight; the identity if nothing better was found.
    """
    mag = _magnitudes(weight)
    rows, channels = mag.shape
    perm = torch.arange(channels)
    num_groups = channels // 4
    if channels % 4 or num_groups < 2:
        return perm
    gen = torch.Generator().manual_seed(seed)
    # swap k exchanges slot swap_i[k] of group A with slot swap_j[k] of B
    swap_i = torch.arange(4).repeat_interleave(4)
    swap_j = torch.arange(4).repeat(4)
    chunk = max(1, max_elements // (rows * 32))
    idle = 0
    for _ in range(num_passes):
        order = torch.randperm(num_groups, generator=gen)
        half = num_groups // 2
        ga_all, gb_all = order[:half], order[half : 2 * half]
        cur = _grouped(mag, perm)  # (4, rows, groups)
        improved = False
        for start in range(0, half, chunk):
            ga = ga_all[start : start + chunk]
            gb = gb_all[start : start + chunk]
            a, b = cur[:, :, ga], cur[:, :, gb]  # (4, rows, P)
            base = _kept(a).sum(0) + _kept(b).sum(0)  # (P,)
            # top-2 of (A without slot i) + b_j = max(top2', top1' + b_j)
            a1, a2 = _leave_one_out(a)
            b1, b2 = _leave_one_out(b)
            new_a = torch.maximum(a2[:, None], a1[:, None] + b[None])
            new_b = torch.maximum(b2[None], b1[None] + a[:, None])
            gain = (new_a + new_b).sum(2).reshape(16, -1).t() - base[:, None]
            best_gain, best = gain.max(dim=1)
            take = best_gain > 1e-6 * base.clamp_min(1e-12)
            if not bool(take.any()):
                continue
            improved = True
            pos_a = ga[take] * 4 + swap_i[best[take]]
            pos_b = gb[take] * 4 + swap_j[best[take]]
            new = perm.clone()
            new[pos_a], new[pos_b] = perm[pos_b], perm[pos_a]
            perm = new
        idle = 0 if improved else idle + 1
        if idle >= patience:
            break
    return perm


def _permute_(tensor: Optional[torch.Tensor], perm, dim: int) -> None:
    if tensor is None:
        return
    with torch.no_grad():
        tensor.copy_(tensor.index_select(dim, perm.to(tensor.device)))


def permute_channels(
    model: nn.Module, pair: PermutationPair, perm: torch.Tensor
) -> None:
    """Permute ``pair``'s channels in place; the model's function is kept.

    The consumer's input channels (weight dim 1, mask), the producer's
    output channels (weight dim 0, bias, mask) and every BatchNorm in
    ``pair.between`` (affine parameters, running statistics) are permuted
    together. Parameter objects are kept, so optimizers stay valid.

    Args:
        model (nn.Module): the model.
        pair (PermutationPair): the channels to permute.
        perm (Tensor): new channel ``j`` is old channel ``perm[j]``.
    """
    modules = dict(model.named_modules())
    producer, consumer = modules[pair.producer], modules[pair.consumer]
    _permute_(consumer.weight, perm, 1)
    _permute_(consumer._buffers.get(MASK_NAME), perm, 1)
    _permute_(producer.weight, perm, 0)
    _permute_(getattr(producer, 'bias', None), perm, 0)
    _permute_(producer._buffers.get(MASK_NAME), perm, 0)
    for name in pair.between:
        norm = modules[name]
        for attr in ('weight', 'bias', 'running_mean', 'running_var'):
            _permute_(getattr(norm, attr, None), perm, 0)


def _check_pair(modules: Dict[str, nn.Module], pair: PermutationPair) -> str:
    producer = modules.get(pair.producer)
    consumer = modules.get(pair.consumer)
    if producer is None or consumer is None:
        return 'module not found'
    if layer_kind(producer) is None or layer_kind(consumer) is None:
        return 'not a Linear / Conv2d pair'
    if getattr(producer, 'groups', 1) != 1:
        return 'grouped producer'
    if getattr(consumer, 'groups', 1) != 1:
        return 'grouped consumer'
    channels = consumer.weight.shape[1]
    if producer.weight.shape[0] != channels or channels % 4:
        return 'channel counts differ or not a multiple of 4'
    for name in pair.between:
        norm = modules.get(name)
        if not isinstance(norm, _BatchNorm) or norm.num_features != channels:
            return f'{name} is not a per-channel BatchNorm of the channels'
    flag = consumer._buffers.get(FLAG_NAME)
    if flag is not None and bool(flag):
        return 'consumer mask already computed'
    return ''


def permute_model(
    model: nn.Module,
    pairs: Optional[Sequence] = None,
    consumers: Optional[Sequence[str]] = None,
    **search_kwargs,
) -> dict:
    """Search and apply channel permutations before masks are computed.

    Args:
        model (nn.Module): the model (student).
        pairs (Sequence, optional): :class:`PermutationPair` or
            ``(producer, consumer[, between])`` tuples; the automatically
            found pairs if ``None``. Defaults to None.
        consumers (Sequence[str], optional): only permute pairs whose
            consumer is one of these (e.g. the masked layers). Defaults to
            None (all).
        **search_kwargs: passed to :func:`search_permutation`.

    Returns:
        dict: ``layers`` (per consumer: ``before`` / ``after`` kept
        magnitude ratio), ``skipped`` (pair -> reason), ``before`` and
        ``after`` (kept ratio over all permuted consumers).
    """
    if pairs is None:
        pairs = find_permutable_pairs(model)
    pairs = [
        p if isinstance(p, PermutationPair) else PermutationPair(*p)
        for p in pairs
    ]
    modules = dict(model.named_modules())
    report = dict(layers={}, skipped={}, before=1.0, after=1.0)
    kept_before = kept_after = total = 0.0
    for pair in pairs:
        if consumers is not None and pair.consumer not in consumers:
            continue
        reason = _check_pair(modules, pair)
        if reason:
            report['skipped'][f'{pair.producer}->{pair.consumer}'] = reason
            continue
        weight = modules[pair.consumer].weight
        mag = _magnitudes(weight)
        ident = torch.arange(mag.shape[1])
        perm = search_permutation(weight, **search_kwargs)
        before, after = _kept_total(mag, ident), _kept_total(mag, perm)
        whole = float(mag.sum()) or 1.0
        if after > before:
            permute_channels(model, pair, perm)
        else:
            after = before
        report['layers'][pair.consumer] = dict(
            before=before / whole, after=after / whole
        )
        kept_before, kept_after = kept_before + before, kept_after + after
        total += whole
    if total:
        report['before'] = kept_before / total
        report['after'] = kept_after / total
    return report
