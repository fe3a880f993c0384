"""Which part of an OpenMMLab model is exported, and its test input.

- classifiers (mmpretrain): ``full`` = ``model(x, mode='tensor')``, the
  class logits;
- segmentors (mmseg ``EncoderDecoder``): ``full`` = ``model._forward(x)``,
  the decode head's logits (at its own resolution, before resizing);
- detectors (mmdet): ``backbone`` or ``backbone+neck`` only. The rest
  (RPN proposals, RoIAlign, NMS, mask paste) is data-dependent
  post-processing that the TorchScript exporter does not trace reliably;
  the backbone and neck hold nearly all compressed weights.

The graph input is the *preprocessed* image (normalized, padded): the
data preprocessor's mean / std are not part of the graph.
"""

from typing import Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['PARTS', 'PartModule', 'make_input', 'model_family']

PARTS = ('backbone', 'backbone+neck', 'full')


def model_family(model: nn.Module) -> str:
    """``'classifier'``, ``'segmentor'`` or ``'detector'`` (duck-typed)."""
    if hasattr(model, 'decode_head'):
        return 'segmentor'
    if any(hasattr(model, k) for k in ('rpn_head', 'roi_head', 'bbox_head')):
        return 'detector'
    if hasattr(model, 'head') and hasattr(model, 'backbone'):
        return 'classifier'
    raise TypeError(
        f'cannot export {type(model).__name__}: not an mmpretrain '
        'classifier, mmseg segmentor or mmdet detector'
    )


def _flatten(out) -> Tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (list, tuple)):
        flat = []
        for item in out:
            flat.extend(_flatten(item))
        return tuple(flat)
    raise TypeError(f'cannot export an output of type {type(out).__name__}')


class PartModule(nn.Module):
    """The exported part of ``model``, as ``forward(x) -> tuple[Tensor]``.

    The model is registered as the child ``model``: initializer names of
    the graph are ``model.<parameter name>``.

    Args:
        model (nn.Module): the upstream student.
        part (str): one of :data:`PARTS`.
    """

    def __init__(self, model: nn.Module, part: str = 'full') -> None:
        super().__init__()
        if part not in PARTS:
            raise ValueError(f'part must be one of {PARTS}, got {part!r}')
        family = model_family(model)
        if family == 'detector' and part == 'full':
            raise ValueError(
                'full export of detectors is not supported (proposal '
                'sampling, RoIAlign and NMS are data-dependent); use '
                '--part backbone+neck or --part backbone'
            )
        if part == 'backbone+neck' and not getattr(model, 'neck', None):
            raise ValueError(
                f'{type(model).__name__} has no neck; use --part backbone '
                'or --part full'
            )
        self.model = model
        self.part = part
        self.family = family

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        model = self.model
        if self.part == 'backbone':
            return _flatten(model.backbone(x))
        if self.part == 'backbone+neck':
            return _flatten(model.neck(model.backbone(x)))
        if self.family == 'segmentor':
            return _flatten(model._forward(x))
        return _flatten(model(x, mode='tensor'))


def make_input(
    model: nn.Module, shape: Sequence[int], seed: int = 0
) -> torch.Tensor:
    """A random image, normalized like the model's data preprocessor.

    Args:
        model (nn.Module): the model (its ``data_preprocessor.mean`` /
            ``std`` are used when present).
        shape (Sequence[int]): ``(N, C, H, W)``.
        seed (int): random seed. Defaults to 0.
    """
    if len(shape) != 4:
        raise ValueError(f'input shape must be N x C x H x W, got {shape}')
    gen = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, tuple(shape), generator=gen).float()
    pre = getattr(model, 'data_preprocessor', None)
    mean = getattr(pre, 'mean', None)
    std = getattr(pre, 'std', None)
    if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
        if mean.numel() == shape[1]:
            return (img - mean.view(1, -1, 1, 1).float()) / std.view(
                1, -1, 1, 1
            ).float()
    return (img - 127.5) / 64.0
