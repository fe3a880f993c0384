"""Settings of GPUSQ-ViT's quantization (stage 2, sparse-aware QAT).

Defaults follow the pytorch-quantization user guide and TensorRT practice
as GPUSQ-ViT (Yu et al., CVPR 2023, arXiv 2305.10727) uses them: INT8
weights per output channel (axis 0, max calibration), INT8 activations per
tensor (histogram percentile 99.99 by default; entropy, MSE or max on
request). ``w_bits=4`` gives INT4 weights: a 2:4 mask already satisfies the
4:8 pattern of INT4 sparse kernels. LayerNorm, softmax, GELU and residual
adds are not quantized (they stay in higher precision in TensorRT too).

Skipped by default: the patch-embedding convolution (its input is the
normalized image, :data:`PATCH_EMBED`) and the final prediction layers of
task heads (class / box / mask / segmentation logits, every family), which
are sensitive and tiny. The selection keys (``include``, ``exclude``,
``exclude_types``, ``filter_fn``, ``use_default_exclude``) and the list of
prediction layers are shared with 2:4 sparsity
(:mod:`gpusq_mm.selection`). The attention matmul inputs (q, k, v and
the softmax output of Swin's ``WindowMSA``) are quantized only with
``quantize_attention=True`` (see :mod:`gpusq_mm.quantization.attention`):
TensorRT runs those matmuls in INT8 only where Q/DQ nodes are placed,
and the paper quantizes the Linear layers.
"""

from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Optional, Sequence, Tuple, Union

from gpusq_mm.selection import PREDICTION_LAYERS, TEACHER

from .quantizer import CALIB_METHODS

__all__ = ['DEFAULT_SKIP', 'PATCH_EMBED', 'PRESETS', 'QuantConfig']

#: Named recipes over the :class:`QuantConfig` defaults (which are INT8
#: weights and activations): the one place their values live.
PRESETS = {'int8': {}, 'int4': dict(w_bits=4)}

#: The patch embedding, kept in floating point by default.
PATCH_EMBED: Tuple[str, ...] = (r'(^|\.)patch_embed\.(projection|proj)$',)
#: Module-name regexes not quantized by default (the last layer of
#: DETR-family ``reg_branches`` MLPs too, by structure).
DEFAULT_SKIP: Tuple[str, ...] = PATCH_EMBED + PREDICTION_LAYERS + (TEACHER,)


@dataclass
class QuantConfig:
    """Quantization settings (``GPUSQ(quantization=dict(...))`` keys).

    Args:
        w_bits (int): weight bits, 8 or 4. Defaults to 8.
        a_bits (int): activation (input) bits. Defaults to 8.
        w_per_channel (bool): per-output-channel weight ranges (axis 0).
            Defaults to True.
        quantize_inputs (bool): fake-quantize layer inputs. Defaults to
            True.
        narrow_range (bool): symmetric integer range
            (``[-127, 127]``). Defaults to False (``[-128, 127]``).
        fast_fake_quant (bool): our vectorized in-place fake quantization
            (same numbers) instead of pytorch-quantization's
            ``fake_tensor_quant``. Defaults to True.
        exclude (Sequence[str]): extra module-name regexes
            (``re.search``) not to quantize. Defaults to ``()``.
        exclude_types (Sequence): module classes or class names not to
            quantize. Defaults to ``()``.
        use_default_exclude (bool): also skip the patch embedding and the
            final prediction layers. Defaults to True.
        include (Sequence[str]): when non-empty, only module names
            matching one of these regexes are quantized. Defaults to ``()``.
        filter_fn (Callable, optional): ``filter_fn(module, name)``;
            returning False keeps the layer in floating point. Defaults to
            None.
        quantize_attention (bool): also fake-quantize the operands of the
            attention matmuls (``q @ k^T``, ``attn @ v``) of every module
            with a ``qkv`` Linear and a ``softmax`` child (Swin's
            ``WindowMSA``), per tensor with ``a_bits``. Defaults to False.
        calib (dict): activation calibration: ``method`` (one of
            ``'max'``, ``'percentile'``, ``'entropy'``, ``'mse'``),
            ``percentile``, ``num_bins``, ``start_bin``, ``stride``.
            Defaults to percentile 99.99 over 2048 bins. ``'entropy'`` is
            pytorch-quantization's pure-Python KL search (about a second
            per quantizer at 2048 bins; raise ``stride`` to speed it up);
            ``'mse'`` is our vectorized, device-agnostic version of its
            search.
    """

    w_bits: int = 8
    a_bits: int = 8
    w_per_channel: bool = True
    quantize_inputs: bool = True
    narrow_range: bool = False
    fast_fake_quant: bool = True
    exclude: Sequence[str] = ()
    exclude_types: Sequence = ()
    use_default_exclude: bool = True
    include: Sequence[str] = ()
    filter_fn: Optional[Callable] = None
    quantize_attention: bool = False
    calib: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ('w_bits', 'a_bits'):
            bits = getattr(self, key)
            assert isinstance(bits, int) and 2 <= bits <= 16, (
                f'{key} must be an int in [2, 16], got {bits!r}'
            )
        self.calib = normalize_calib(self.calib)
        for key in ('include', 'exclude', 'exclude_types'):
            value = getattr(self, key)
            if isinstance(value, (str, type)):
                value = (value,)
            setattr(self, key, tuple(value))
        assert self.filter_fn is None or callable(self.filter_fn), (
            f'filter_fn must be callable(module, name), got {self.filter_fn!r}'
        )

    @classmethod
    def build(
        cls, cfg: Optional[Union['QuantConfig', dict, str]]
    ) -> 'QuantConfig':
        """A config from ``None``, a preset name (:data:`PRESETS`), a dict
        or a config (typos fail)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if isinstance(cfg, str):
            if cfg not in PRESETS:
                raise ValueError(
                    f'unknown quantization preset {cfg!r}; accepted: '
                    f'{sorted(PRESETS)}'
                )
            cfg = PRESETS[cfg]
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise KeyError(
                f'unknown quantization keys {unknown}; known: {sorted(names)}'
            )
        return cls(**dict(cfg))

    def to_dict(self) -> dict:
        """Plain-dict form (for logs)."""
        return asdict(self)


_CALIB_DEFAULTS = dict(
    method='percentile',
    percentile=99.99,
    num_bins=2048,
    start_bin=128,
    stride=1,
)


def normalize_calib(calib: Optional[dict]) -> dict:
    """Fill calibration defaults and check the keys and method."""
    calib = dict(calib or {})
    unknown = sorted(set(calib) - set(_CALIB_DEFAULTS))
    if unknown:
        raise KeyError(
            f'unknown calibration keys {unknown}; known: '
            f'{sorted(_CALIB_DEFAULTS)}'
        )
    out = dict(_CALIB_DEFAULTS, **calib)
    assert out['method'] in CALIB_METHODS, (
        f'calibration method must be one of {CALIB_METHODS}, got '
        f'{out["method"]!r}'
    )
    assert 0 < out['percentile'] <= 100, (
        f'percentile must be in (0, 100], got {out["percentile"]!r}'
    )
    return out
