"""Cost of keeping 2:4 masks enforced, relative to one train step.

NVIDIA ASP / GPUSQ-ViT (arXiv 2305.10727) re-apply the fixed 2:4 masks
after every optimizer step; this measures that upkeep on a Swin-T classifier
(mmpretrain ``ImageClassifier``, ``SwinTransformer`` arch ``tiny``, linear
head), batch 2, 224x224 on CPU:

- train step: ``model.train_step(data, optim_wrapper)``, what the Runner's
  train loop calls each iteration (preprocessing, forward, loss, backward,
  AdamW step; median of ``--steps``);
- upkeep: :class:`gpusq_mm.sparsity.MaskUpkeep` ``apply()`` (one
  ``torch._foreach_mul_`` over all masked weights with cached float masks,
  including its staleness check), median of ``--reps``;
- for comparison the naive per-layer ``weight.mul_(bool_mask)`` loop.

Usage::

    python bench/bench_mask_upkeep.py [--steps 5] [--reps 30] [--device cpu]

Not a test: it prints the measured ratios (median over interleaved rounds,
and fastest upkeep over fastest step, the least disturbed by other load).
"""

import argparse
import statistics
import time

import torch

from gpusq_mm.sparsity import (
    MaskUpkeep,
    attach_masks,
    compute_masks,
    masked_layers,
)


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def _median_time(fn, reps: int, device: str) -> float:
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--reps', type=int, default=10)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()

    from mmengine.optim import OptimWrapper
    from mmpretrain.models import ImageClassifier
    from mmpretrain.structures import DataSample

    torch.manual_seed(0)
    device = args.device
    model = ImageClassifier(
        backbone=dict(type='mmpretrain.SwinTransformer', arch='tiny'),
        neck=dict(type='mmpretrain.GlobalAveragePooling'),
        head=dict(
            type='mmpretrain.LinearClsHead', num_classes=1000, in_channels=768
        ),
        data_preprocessor=dict(
            type='mmpretrain.ClsDataPreprocessor',
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
        ),
    ).to(device)
    model.train()
    names = attach_masks(model)
    compute_masks(model)
    layers = masked_layers(model)
    pruned = sum(m.weight.numel() for m in layers.values())
    total = sum(p.numel() for p in model.parameters())
    optim = OptimWrapper(
        torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    )
    data = dict(
        inputs=[
            torch.randint(0, 255, (3, 224, 224), dtype=torch.uint8)
            for _ in range(args.batch)
        ],
        data_samples=[DataSample().set_gt_label(i) for i in range(args.batch)],
    )
    upkeep = MaskUpkeep(model)

    def train_step() -> None:
        model.train_step(data, optim)

    pairs = [(m.weight, m.sparsity_mask) for m in layers.values()]

    def naive() -> None:
        with torch.no_grad():
            for weight, mask in pairs:
                weight.mul_(mask)

    train_step()  # warm-up (allocations, optimizer state)
    # Interleave the measurements so that a busy machine slows all alike.
    steps, fast, slow = [], [], []
    for _ in range(args.steps):
        steps.append(_median_time(train_step, 1, device))
        fast.append(_median_time(upkeep.apply, args.reps, device))
        slow.append(_median_time(naive, args.reps, device))
    step = statistics.median(steps)
    fast_ratio = statistics.median(f / s for f, s in zip(fast, steps))
    slow_ratio = statistics.median(f / s for f, s in zip(slow, steps))
    # the fastest runs are the least disturbed by other processes
    best = min(fast) / min(steps), min(slow) / min(steps)
    fast, slow = statistics.median(fast), statistics.median(slow)
    print(
        f'Swin-T classifier, batch {args.batch}, {device}, '
        f'{torch.get_num_threads()} threads: {len(names)} masked layers, '
        f'{pruned / 1e6:.1f}M of {total / 1e6:.1f}M weights'
    )
    print(f'train step (median of {args.steps}): {step * 1e3:.1f} ms')
    print(
        f'MaskUpkeep.apply (foreach, cached float masks): {fast * 1e3:.2f} '
        f'ms = {fast_ratio:.2%} of a train step'
    )
    print(
        f'naive per-layer weight.mul_(bool mask): {slow * 1e3:.2f} ms = '
        f'{slow_ratio:.2%} of a train step'
    )
    print(
        f'fastest upkeep / fastest step: MaskUpkeep {best[0]:.2%}, '
        f'naive {best[1]:.2%}'
    )


if __name__ == '__main__':
    main()
