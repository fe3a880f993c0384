"""Export-time rewrites that keep the values and cut deployed work.

Applied to every export (FP32 and quantized alike, so latency ratios
compare the same graph structure):

- :func:`rewrite_patch_merging`: the Swin ``PatchMerging`` of mmcv,
  mmpretrain, mmdet and mmseg samples its 2x2 neighbourhoods with
  ``nn.Unfold``, which traces to Pad + several Gathers + Transposes over
  the whole stride-4 map (in onnxruntime ~1 GB/s, ~4 ms per Swin-T
  run). With kernel == stride, no dilation and no
  unfold padding the same output is the ``k * k`` strided slices
  ``x[:, i::k, j::k, :]`` of the ``(B, H, W, C)`` map stacked on a new
  last axis: ``(B, H/k, W/k, C, k * k)``, which is ``nn.Unfold``'s channel
  order (``c * k * k + i * k + j``; the 2:4 groups of the reduction
  Linear's input stay where they were).
- :func:`skip_zero_pads`: Swin's window attention pads its map to a
  multiple of the window size even when the padding is zero, and the
  exporter writes that as a Pad fed by a Shape / Concat chain that no
  later pass folds. While tracing, ``F.pad`` with all-zero integer pads
  returns its input (same values) and no Pad is written.
"""

import contextlib
import types
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

__all__ = ['rewrite_patch_merging', 'skip_zero_pads']


def _merge_forward(self, x: torch.Tensor, input_size):
    b, length, c = x.shape
    h, w = input_size
    if length != h * w:
        raise ValueError(
            f'{type(self).__name__}: {length} tokens for an input of {h}x{w}'
        )
    x = x.view(b, h, w, c)
    pad = getattr(self, 'adaptive_padding', None) or getattr(
        self, 'adap_padding', None
    )
    if pad is not None and any(pad.get_pad_shape((h, w))):
        x = pad(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        h, w = x.shape[1], x.shape[2]
    kh, kw = _pair(self.sampler.kernel_size)
    oh, ow = h // kh, w // kw
    if (oh * kh, ow * kw) != (h, w):  # Unfold drops the remainder
        x = x[:, : oh * kh, : ow * kw]
    # stacked strided slices: the (k*k, C) -> (C, k*k) interleave as a
    # Concat measured 5-7x faster in onnxruntime than a Transpose with an
    # inner dimension of k*k (and the 6-D Transpose slower still)
    x = torch.stack(
        [x[:, i::kh, j::kw, :] for i in range(kh) for j in range(kw)], dim=-1
    )
    x = x.reshape(b, oh * ow, c * kh * kw)
    if getattr(self, 'use_post_norm', False):
        x = self.reduction(x)
        return (self.norm(x) if self.norm else x), (oh, ow)
    x = self.norm(x) if self.norm else x
    return self.reduction(x), (oh, ow)


def _is_patch_merging(module: nn.Module) -> bool:
    sampler = getattr(module, 'sampler', None)
    if not isinstance(sampler, nn.Unfold):
        return False
    if not all(hasattr(module, a) for a in ('norm', 'reduction')):
        return False
    return (
        _pair(sampler.kernel_size) == _pair(sampler.stride)
        and _pair(sampler.dilation) == (1, 1)
        and _pair(sampler.padding) == (0, 0)
    )


def rewrite_patch_merging(model: nn.Module) -> List[str]:
    """Give each Unfold-based ``PatchMerging`` of an export copy a
    forward of stacked strided slices (same values; changed in place).

    Returns:
        list[str]: names of the rewritten modules.
    """
    done = []
    for name, module in model.named_modules():
        if _is_patch_merging(module):
            module.forward = types.MethodType(_merge_forward, module)
            done.append(name)
    return done


@contextlib.contextmanager
def skip_zero_pads():
    """While active, ``F.pad(x, pads)`` with all-zero integer ``pads``
    returns ``x`` (for tracing a static-shape export copy: no no-op Pad
    node)."""
    pad = F.pad

    def _pad(x, pads, *args, **kwargs):
        # traced sizes arrive as 0-dim tensors; the export is static-shape
        if all(
            isinstance(p, (int, torch.Tensor)) and int(p) == 0 for p in pads
        ):
            return x
        return pad(x, pads, *args, **kwargs)

    F.pad = _pad
    try:
        yield
    finally:
        F.pad = pad
