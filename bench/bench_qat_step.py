"""Cost of a QAT training step against a dense one (not a test).

A Swin-T backbone (mmdet ``SwinTransformer``, default Swin-T settings) at
batch 2, 224x224, forward + backward + AdamW step, on CPU by default:

- dense: the plain model;
- QAT: the same weights with 2:4 masks (``gpusq_mm.sparsity``), every
  Linear quantized by ``gpusq_mm.quantization`` (INT8 per-channel weights,
  per-tensor inputs; patch embedding skipped), calibrated and enabled, and
  the masks re-applied after each step as ``SparsityHook`` does.

Steps of the two models alternate so that machine noise hits both alike;
the ratios of the median and of the minimum wall / process-CPU times are
printed (on a shared, loaded machine the minima estimate the undisturbed
step best). Target: <= 1.15x.

Usage::

    python bench/bench_qat_step.py [--steps 6] [--device cpu] [--w-bits 8]
        [--threads N] [--no-masks] [--attention] [--foreach-adamw]
"""

import argparse
import copy
import statistics
import time

import torch


def _build():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    return MODELS.build(dict(type='mmdet.SwinTransformer'))


def _step(model, optimizer, x, upkeep=None):
    start, cpu = time.perf_counter(), time.process_time()
    outs = model(x)
    loss = sum(o.float().mean() for o in outs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if upkeep is not None:
        upkeep.apply()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=6)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--w-bits', type=int, default=8)
    parser.add_argument('--no-masks', action='store_true')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument(
        '--foreach-adamw',
        action='store_true',
        help="AdamW's default foreach implementation instead of fused",
    )
    parser.add_argument(
        '--attention',
        action='store_true',
        help='also quantize the attention matmul operands',
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from gpusq_mm.quantization import (
        calibrate,
        enable_fake_quant,
        quantize_model,
    )
    from gpusq_mm.sparsity import MaskUpkeep, attach_masks, compute_masks

    torch.manual_seed(0)
    device = torch.device(args.device)
    dense = _build().to(device)
    dense.train()  # mmdet's Swin.train() returns None
    qat = copy.deepcopy(dense)
    upkeep = None
    if not args.no_masks:
        attach_masks(qat)
        compute_masks(qat)
        upkeep = MaskUpkeep(qat)
    names = quantize_model(
        qat, dict(w_bits=args.w_bits, quantize_attention=args.attention)
    )
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    calibrate(qat, qat, [x], calib=dict(method='max'))
    enable_fake_quant(qat)
    fused = not args.foreach_adamw and device.type in ('cpu', 'cuda')
    opt_dense = torch.optim.AdamW(dense.parameters(), lr=1e-4, fused=fused)
    opt_qat = torch.optim.AdamW(qat.parameters(), lr=1e-4, fused=fused)

    times = {'dense': [], 'qat': [], 'dense_cpu': [], 'qat_cpu': []}
    for i in range(args.warmup + args.steps):
        t_dense = _step(dense, opt_dense, x)
        t_qat = _step(qat, opt_qat, x, upkeep)
        if i >= args.warmup:
            times['dense'].append(t_dense[0])
            times['dense_cpu'].append(t_dense[1])
            times['qat'].append(t_qat[0])
            times['qat_cpu'].append(t_qat[1])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f'Swin-T batch {args.batch} {args.size}^2 on {device} '
        f'({torch.get_num_threads()} threads), {len(names)} quantized '
        f'layers, W{args.w_bits}A8, masks {"off" if upkeep is None else "on"}'
        f'{", attention matmuls quantized" if args.attention else ""}, '
        f'AdamW {"fused" if fused else "foreach"}'
    )
    for key, values in times.items():
        print(
            f'  {key:9s} median {med[key] * 1e3:8.1f} ms  '
            f'(min {min(values) * 1e3:.1f}, max {max(values) * 1e3:.1f})'
        )
    low = {k: min(v) for k, v in times.items()}
    for name, stat in (('median', med), ('min', low)):
        print(
            f'  ratio qat/dense ({name}): wall '
            f'{stat["qat"] / stat["dense"]:.3f}x, process CPU '
            f'{stat["qat_cpu"] / stat["dense_cpu"]:.3f}x (target <= 1.15x)'
        )


if __name__ == '__main__':
    main()
