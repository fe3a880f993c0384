"""Which part of an OpenMMLab model is exported, and its test input.

- classifiers (mmpretrain): ``full`` = ``model(x, mode='tensor')``, the
  class logits;
- segmentors (mmseg ``EncoderDecoder``): ``full`` = ``model._forward(x)``,
  the decode head's logits (at its own resolution, before resizing);
- detectors (mmdet): ``backbone`` or ``backbone+neck``. The rest
  (RPN proposals, RoIAlign, NMS, mask paste) is data-dependent
  post-processing that the TorchScript exporter does not trace reliably;
  the backbone and neck hold nearly all compressed weights;
- DETR-family detectors (mmdet ``DetectionTransformer``: DETR,
  Deformable DETR, DINO, ...) also ``backbone+neck+encoder``: mmdet's own
  ``extract_feat`` -> ``pre_transformer`` -> ``forward_encoder``, the
  output is the encoder's ``memory`` ``(N, sum of h * w over the levels,
  embed_dims)``. The image fills the input (no padding): the synthetic
  data sample's ``batch_input_shape`` and ``img_shape`` are the input's
  ``H, W``, so the key-padding masks are None (all valid) and the level
  sizes, start indices and valid ratios (all 1) are constants of the
  graph (``PartModule.encoder_levels`` after a forward). Deformable
  attention runs as mmcv's PyTorch ``multi_scale_deformable_attn_pytorch``
  (``GridSample``, opset >= 16). The deformable encoders' reference
  points are frozen on the export copy (:func:`freeze_reference_points`).

The graph input is the *preprocessed* image (normalized, padded): the
data preprocessor's mean / std are not part of the graph.
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = [
    'PARTS',
    'PartModule',
    'freeze_reference_points',
    'is_detr_family',
    'make_input',
    'model_family',
    'supported_parts',
]

PARTS = ('backbone', 'backbone+neck', 'backbone+neck+encoder', 'full')
ENCODER_PART = 'backbone+neck+encoder'


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


def is_detr_family(model: nn.Module) -> bool:
    """Whether ``model`` is an mmdet ``DetectionTransformer`` (DETR,
    Deformable DETR, DINO, ...)."""
    try:
        from mmdet.models.detectors import DetectionTransformer
    except ImportError:  # mmdet not installed: no DETR-family model
        return False
    return isinstance(model, DetectionTransformer)


def supported_parts(model: nn.Module) -> List[str]:
    """The parts of :data:`PARTS` that ``model`` can export."""
    family = model_family(model)
    parts = ['backbone']
    if getattr(model, 'neck', None):
        parts.append('backbone+neck')
    if family == 'detector':
        if is_detr_family(model):
            parts.append(ENCODER_PART)
    else:
        parts.append('full')
    return parts


def _encoder_inputs(model: nn.Module, x: torch.Tensor) -> tuple:
    """mmdet's encoder inputs for an unpadded batch ``x``, and the
    ``(h, w)`` of each level the encoder reads."""
    from mmdet.structures import DetDataSample

    hw = (int(x.shape[-2]), int(x.shape[-1]))
    # pre_transformer reads only batch_input_shape and img_shape: equal,
    # so every position is valid (no key-padding mask)
    meta = dict(batch_input_shape=hw, img_shape=hw, pad_shape=hw)
    samples = [DetDataSample(metainfo=meta) for _ in range(x.shape[0])]
    feats = model.extract_feat(x)
    encoder_inputs, _ = model.pre_transformer(feats, samples)
    # DETR's encoder reads the last level only, the deformable ones all
    levels = feats if hasattr(model, 'level_embed') else feats[-1:]
    sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in levels]
    return encoder_inputs, sizes


def freeze_reference_points(model: nn.Module) -> List[str]:
    """Make the deformable encoders' reference points graph constants.

    mmdet computes them with ``torch.linspace(0.5, h - 0.5, h)`` per
    level; the TorchScript exporter's ``linspace`` divides by ``steps - 1``
    and so exports a 1-pixel level (e.g. the 1/64 level of a 64-pixel
    input) as NaN: its queries silently read zeros in onnxruntime. The
    points depend only on the (fixed) level sizes and the valid ratios
    (all 1 without padding), so each encoder of the export copy ``model``
    gets a ``get_encoder_reference_points`` that runs mmdet's own method
    eagerly once per level-size key (the export's first, untraced forward)
    and returns the stored tensor afterwards (traced as a constant).

    Returns:
        list[str]: names of the changed encoders.
    """
    done = []
    for name, module in model.named_modules():
        original = getattr(type(module), 'get_encoder_reference_points', None)
        if original is None:
            continue
        cache = {}

        def frozen(
            spatial_shapes, valid_ratios, device, _f=original, _c=cache
        ):
            # ints: under the tracer, sizes and values are traced tensors
            key = (
                tuple(int(v) for v in spatial_shapes.reshape(-1)),
                tuple(int(d) for d in valid_ratios.shape),
            )
            if not bool((valid_ratios == 1).all()):
                raise ValueError(
                    'frozen reference points need valid ratios of 1 (an '
                    'unpadded input)'
                )
            if key not in _c:
                _c[key] = _f(spatial_shapes, valid_ratios, device).detach()
            return _c[key]

        module.get_encoder_reference_points = frozen
        done.append(name)
    return done


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
                'sampling, RoIAlign and NMS are data-dependent); '
                f'{type(model).__name__} exports --part '
                + ' or --part '.join(supported_parts(model))
            )
        if part == ENCODER_PART and not is_detr_family(model):
            raise ValueError(
                f'--part {ENCODER_PART} needs an mmdet DETR-family '
                '(DetectionTransformer: DETR, Deformable DETR, DINO) '
                f'detector, got {type(model).__name__} ({family}); it '
                'supports --part ' + ', '.join(supported_parts(model))
            )
        if part == 'backbone+neck' and not getattr(model, 'neck', None):
            raise ValueError(
                f'{type(model).__name__} has no neck; use --part backbone '
                'or --part full'
            )
        self.model = model
        self.part = part
        self.family = family
        #: backbone+neck+encoder: ``(h, w)`` of each level in the memory
        self.encoder_levels: List[Tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        model = self.model
        if self.part == 'backbone':
            return _flatten(model.backbone(x))
        if self.part == 'backbone+neck':
            return _flatten(model.neck(model.backbone(x)))
        if self.part == ENCODER_PART:
            inputs, self.encoder_levels = _encoder_inputs(model, x)
            return (model.forward_encoder(**inputs)['memory'],)
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
