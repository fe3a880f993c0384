"""Calibration and the fake-quantization switch (CPU and GPU).

The recipe of the pytorch-quantization user guide that GPUSQ-ViT (Yu et
al., CVPR 2023, arXiv 2305.10727) starts its QAT from: weights get
per-channel max ranges straight from the (2:4-masked) weights; activation
ranges come from a few batches run through the FP student in eval mode
with quantization off (max, histogram percentile, entropy or MSE). Under
``torch.distributed`` each rank calibrates on its own batches and the
ranges are all-reduced with ``max``, so every rank holds the same amax.
"""

from typing import Any, Callable, Dict, Iterable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from .config import normalize_calib
from .modules import _masked_weight, quantized_layers, quantizers

__all__ = [
    'calibrate',
    'calibrate_weights',
    'disable_fake_quant',
    'enable_fake_quant',
    'is_calibrated',
    'quant_state',
]


def calibrate_weights(model: nn.Module) -> int:
    """Set every weight quantizer's amax to the max of its masked weight.

    Args:
        model (nn.Module): a model with quantized layers.

    Returns:
        int: number of weight quantizers calibrated.
    """
    count = 0
    with torch.no_grad():
        for module in quantized_layers(model).values():
            quantizer = module._weight_quantizer
            weight = _masked_weight(module, module.weight).abs()
            if quantizer.axis is None:
                amax = weight.max()
            else:
                amax = weight.flatten(1).amax(1)
            quantizer.set_amax(amax)
            count += 1
    return count


def _sync_max(values: torch.Tensor) -> torch.Tensor:
    """All-reduce ``values`` with max when a process group is running."""
    if (
        dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size() > 1
    ):
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def calibrate(
    model: nn.Module,
    forward_fn: Callable[[Any], Any],
    batches: Iterable,
    calib: Optional[dict] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> Dict[str, Any]:
    """Calibrate all quantizers of ``model`` (fake quantization stays off).

    Args:
        model (nn.Module): the quantized student (or any model holding it).
        forward_fn (Callable): runs the model on one batch; called under
            ``torch.no_grad`` with the model in eval mode.
        batches (Iterable): calibration batches (already limited to N).
        calib (dict, optional): ``method``, ``percentile``, ``num_bins``,
            ``start_bin``, ``stride``; default: ``model.gpusq_quant_cfg``'s
            or percentile 99.99. Defaults to None.
        progress (Callable, optional): called with the batch index after
            each batch (e.g. to update a progress bar). Defaults to None.

    Returns:
        dict: ``batches`` (run), ``inputs`` (activation quantizers
        calibrated), ``weights`` (weight quantizers calibrated), ``unseen``
        (names of activation quantizers no batch reached; they stay off),
        ``method``.
    """
    if calib is None:
        cfg = getattr(model, 'gpusq_quant_cfg', None)
        calib = cfg.calib if cfg is not None else None
    calib = normalize_calib(calib)
    all_q = quantizers(model)
    # every activation quantizer: layer inputs and, when quantized, the
    # attention matmul operands
    inputs = {
        n: q
        for n, q in all_q.items()
        if not n.endswith('_weight_quantizer') and not q.frozen_off
    }
    enabled = [q for q in all_q.values() if q.enabled]
    for q in enabled:  # calibrate the FP model
        q._disabled = True
    for q in inputs.values():
        q.start_calib(calib['method'], calib['num_bins'])
    was_training = model.training
    model.eval()
    num = 0
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches):
                forward_fn(batch)
                num += 1
                if progress is not None:
                    progress(index)
    finally:
        for q in inputs.values():
            q.stop_calib()
        for q in enabled:
            q._disabled = False
        model.train(was_training)

    amaxes, seen = [], []
    for q in inputs.values():
        amax = q.compute_calib_amax(
            calib['method'],
            percentile=calib['percentile'],
            start_bin=calib['start_bin'],
            stride=calib['stride'],
        )
        ok = amax is not None and bool(torch.isfinite(amax).all())
        seen.append(1.0 if ok else 0.0)
        amaxes.append(amax.reshape(()) if ok else q._amax.new_zeros(()))
        q.reset_calib()
    if inputs:
        device = next(iter(inputs.values()))._amax.device
        flat = torch.stack([a.float().to(device) for a in amaxes])
        flat = _sync_max(torch.cat([flat, flat.new_tensor(seen)]))
        values, seen_all = flat[: len(amaxes)], flat[len(amaxes) :]
        with torch.no_grad():
            for q, value, ok in zip(inputs.values(), values, seen_all):
                if ok > 0:
                    q.set_amax(value)
    unseen = [n for n, q in inputs.items() if not q.calibrated]
    return dict(
        batches=num,
        inputs=len(inputs) - len(unseen),
        weights=calibrate_weights(model),
        unseen=unseen,
        method=calib['method'],
    )


def enable_fake_quant(model: nn.Module) -> int:
    """Turn on every calibrated quantizer (not ``frozen_off`` ones).

    Returns:
        int: number of quantizers enabled.
    """
    count = 0
    for q in quantizers(model).values():
        if q.calibrated and not q.frozen_off:
            q.enable()
            count += 1
    return count


def disable_fake_quant(model: nn.Module) -> None:
    """Turn off every quantizer of ``model``."""
    for q in quantizers(model).values():
        q.disable()


def is_calibrated(model: nn.Module) -> bool:
    """Whether ``model`` has quantizers and all weight ones are calibrated.

    (Input quantizers no calibration batch reached stay uncalibrated.)
    """
    qs = quantizers(model)
    weights = [q for n, q in qs.items() if n.endswith('_weight_quantizer')]
    return bool(weights) and all(q.calibrated for q in weights)


def quant_state(model: nn.Module) -> Dict[str, int]:
    """Counts for logs: ``layers``, ``quantizers``, ``calibrated``,
    ``enabled``."""
    qs = quantizers(model).values()
    return dict(
        layers=len(quantized_layers(model)),
        quantizers=len(qs),
        calibrated=sum(q.calibrated for q in qs),
        enabled=sum(q.enabled for q in qs),
    )
