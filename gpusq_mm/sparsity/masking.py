"""Mask buffers and their enforcement (the NVIDIA ASP recipe).

As in NVIDIA ASP (apex.contrib.sparsity) and GPUSQ-ViT (Yu et al., CVPR
2023, arXiv 2305.10727), the 2:4 mask is computed once from the trained
dense weights and then kept fixed while fine-tuning: the optimizer updates
the dense weights and the mask is re-applied right after every step, so
momentum, Adam moments, weight decay or weight averaging never revive a
pruned weight.

Each pruned layer holds two buffers, so masks travel in every
``state_dict`` under stable names:

- ``<layer>.sparsity_mask``: bool, the weight's shape, ``True`` = kept.
  Attached as an all-``True`` placeholder when the model is built, so
  checkpoints of any stage load into a freshly built model.
- ``<layer>.sparsity_mask_computed``: bool scalar, set once the mask has
  been computed from real weights; a computed mask is never recomputed
  (resume keeps the checkpoint's mask).
"""

from functools import partial
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .eligibility import SparsityConfig, select_layers
from .mask import compute_2to4_mask, is_2to4

__all__ = [
    'FLAG_NAME',
    'MASK_NAME',
    'MaskUpkeep',
    'apply_masks',
    'attach_masks',
    'compute_masks',
    'has_masks',
    'mask_summary',
    'masked_layers',
]

MASK_NAME = 'sparsity_mask'
FLAG_NAME = 'sparsity_mask_computed'


def masked_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The modules of ``model`` that carry a 2:4 mask buffer, by name."""
    return {
        name: module
        for name, module in model.named_modules()
        if MASK_NAME in module._buffers
    }


def has_masks(model: nn.Module) -> bool:
    """Whether any module of ``model`` carries a 2:4 mask buffer."""
    return any(MASK_NAME in m._buffers for m in model.modules())


_ACCEPTED = (
    'accepted: Linear and non-grouped, non-transposed Conv2d layers whose '
    'input channels (per kernel position) are a multiple of 4'
)


def _check_maskable(name: str, module: nn.Module) -> None:
    """Raise a clear error if ``module`` cannot carry a 2:4 mask."""
    weight = getattr(module, 'weight', None)
    kind = type(module).__name__
    if not isinstance(weight, torch.Tensor) or weight.dim() not in (2, 4):
        raise ValueError(
            f'2:4 forced on {name!r} ({kind}), which has no 2-d / 4-d '
            f'weight to mask; {_ACCEPTED}'
        )
    if getattr(module, 'transposed', False):
        raise ValueError(
            f'2:4 forced on {name!r} ({kind}), a transposed convolution '
            f'(no sparse GEMM for it); {_ACCEPTED}'
        )
    groups = getattr(module, 'groups', 1)
    if groups != 1:
        raise ValueError(
            f'2:4 forced on {name!r} ({kind}), a grouped / depth-wise '
            f'convolution (groups={groups}, no sparse GEMM for it); '
            f'{_ACCEPTED}'
        )
    if weight.shape[1] % 4:
        raise ValueError(
            f'2:4 forced on {name!r} ({kind}): input channels '
            f'{weight.shape[1]} not a multiple of 4; {_ACCEPTED}'
        )


def attach_masks(
    model: nn.Module,
    names: Optional[Sequence[str]] = None,
    cfg: Optional[Union[SparsityConfig, dict]] = None,
) -> List[str]:
    """Register placeholder mask buffers (all ``True``, not computed).

    Call it when the model is built, before any checkpoint is loaded.
    Layers that already have a mask are left as they are.

    Args:
        model (nn.Module): the model to prune (the student).
        names (Sequence[str], optional): module names to mask; if ``None``
            the eligible layers of :func:`select_layers` with ``cfg``.
            Defaults to None.
        cfg (SparsityConfig | dict, optional): selection settings, used
            when ``names`` is None. Defaults to None.

    Returns:
        list[str]: the names of the layers that carry a mask.
    """
    if names is None:
        names = [d.name for d in select_layers(model, cfg) if d.eligible]
    modules = dict(model.named_modules())
    for name in names:  # check all first: all or nothing is attached
        if name not in modules:
            raise KeyError(f'no module named {name!r} to attach a mask to')
        _check_maskable(name, modules[name])
    for name in names:
        module = modules[name]
        weight = module.weight
        if MASK_NAME in module._buffers:
            continue
        module.register_buffer(
            MASK_NAME,
            torch.ones(weight.shape, dtype=torch.bool, device=weight.device),
        )
        module.register_buffer(
            FLAG_NAME, torch.zeros((), dtype=torch.bool, device=weight.device)
        )
    return list(names)


def compute_masks(model: nn.Module, force: bool = False) -> List[str]:
    """Compute the magnitude 2:4 masks not computed yet, and apply them.

    Args:
        model (nn.Module): a model with attached masks.
        force (bool): recompute computed masks too. Defaults to False.

    Returns:
        list[str]: the names of the layers whose mask was computed now.
    """
    done = []
    with torch.no_grad():
        for name, module in masked_layers(model).items():
            flag = module._buffers[FLAG_NAME]
            if bool(flag) and not force:
                continue
            module._buffers[MASK_NAME].copy_(compute_2to4_mask(module.weight))
            flag.fill_(True)
            done.append(name)
    apply_masks(model)
    return done


def apply_masks(model: nn.Module) -> None:
    """Zero the pruned weights of every computed mask (simple, per layer)."""
    with torch.no_grad():
        for module in masked_layers(model).values():
            if bool(module._buffers[FLAG_NAME]):
                module.weight.mul_(module._buffers[MASK_NAME])


def mask_summary(model: nn.Module) -> dict:
    """The sparsity state of ``model``, for logs and reports.

    Returns:
        dict: ``layers`` (with a mask), ``computed`` (masks computed),
        ``compliant`` (computed layers whose weight is 2:4), ``weights``
        (weights under a computed mask), ``share_2to4`` (share of all the
        model's parameters that sit in computed, compliant layers).
    """
    layers = masked_layers(model)
    computed = [m for m in layers.values() if bool(m._buffers[FLAG_NAME])]
    compliant = [m for m in computed if is_2to4(m.weight)]
    params = sum(p.numel() for p in model.parameters())
    covered = sum(m.weight.numel() for m in compliant)
    return dict(
        layers=len(layers),
        computed=len(computed),
        compliant=len(compliant),
        weights=sum(m.weight.numel() for m in computed),
        share_2to4=covered / params if params else 0.0,
    )


def _mul_grad(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return grad * mask


class MaskUpkeep:
    """Fast re-application of computed masks after each optimizer step.

    Keeps the masked weights and their masks, pre-converted to the weights'
    dtype, in two lists and re-applies them with one fused
    ``torch._foreach_mul_`` call. The cache is rebuilt automatically when a
    mask buffer, flag or weight of a masked layer is replaced or written
    (``load_state_dict``, ``model.to``), checked through tensor identity and
    version counters (no device synchronization). Call :meth:`refresh` after
    attaching masks to new layers.

    Args:
        model (nn.Module): the model (student) with attached masks.
        mask_grad (bool): also mask gradients (tensor hooks on the weights),
            so optimizer state of pruned weights stays zero. Defaults to
            False.
    """

    def __init__(self, model: nn.Module, mask_grad: bool = False) -> None:
        self.model = model
        self.mask_grad = mask_grad
        self._weights: List[torch.Tensor] = []
        self._masks: List[torch.Tensor] = []
        self._modules: List[nn.Module] = []
        self._keys: list = []
        self._handles: list = []
        self.refresh()

    def _signature(self) -> list:
        # Identity and version counters only: no device sync, no model scan.
        keys = []
        for module in self._modules:
            mask = module._buffers.get(MASK_NAME)
            flag = module._buffers.get(FLAG_NAME)
            weight = module._parameters.get('weight')
            keys.append(
                (id(weight), id(mask), id(flag), mask._version, flag._version)
            )
        return keys

    def refresh(self) -> None:
        """Rebuild the cached lists from the model's current buffers."""
        self.remove_grad_hooks()
        self._modules = list(masked_layers(self.model).values())
        self._weights, self._masks = [], []
        for module in self._modules:
            if not bool(module._buffers[FLAG_NAME]):
                continue
            weight = module.weight
            mask = module._buffers[MASK_NAME].to(weight.dtype)
            self._weights.append(weight)
            self._masks.append(mask)
            if self.mask_grad and weight.requires_grad:
                handle = weight.register_hook(partial(_mul_grad, mask=mask))
                self._handles.append(handle)
        self._keys = self._signature()

    def remove_grad_hooks(self) -> None:
        """Remove the gradient-masking hooks, if any."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def num_layers(self) -> int:
        """Number of layers whose computed mask is enforced."""
        return len(self._weights)

    def apply(self, check: bool = True) -> None:
        """Zero the pruned weights of all computed masks.

        Args:
            check (bool): rebuild the cache first if the model's masks
                changed since the last call. Defaults to True.
        """
        if check and self._signature() != self._keys:
            self.refresh()
        if not self._weights:
            return
        with torch.no_grad():
            torch._foreach_mul_(self._weights, self._masks)
