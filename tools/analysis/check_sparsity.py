"""Check that a checkpoint's sparse layers really are 2:4.

Usage::

    python tools/analysis/check_sparsity.py CONFIG CHECKPOINT [--only-masked]
    python tools/analysis/check_sparsity.py CONFIG   # dry run, fresh model

Prints, per Linear / Conv2d layer of the (student) model: name, weight
shape, eligible (by the config's sparsity settings, the NVIDIA ASP
alignment rule), whether it carries a computed mask, whether its weight is
2:4 along the input channels (sparse Tensor Core / ASP ``m4n2_1d``
convention, GPUSQ-ViT, arXiv 2305.10727), and the share of ``|w|`` that a
magnitude 2:4 mask keeps (1.0 for a 2:4 weight). Exits with status 1 if a
layer with a computed mask is not 2:4 or has non-zeros outside its mask.

Works for a plain mmdet / mmseg / mmpretrain model trained with
``SparsityHook`` and for a GPUSQ checkpoint (student keys under
``architecture.``; the teacher is not built).
"""

import argparse
import sys

import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint
from mmengine.utils import import_modules_from_strings

from gpusq_mm.sparsity import (
    FLAG_NAME,
    MASK_NAME,
    SparsityConfig,
    attach_masks,
    is_2to4,
    kept_magnitude_ratio,
    select_layers,
)

_FIELDS = set(SparsityConfig.__dataclass_fields__)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the training config')
    parser.add_argument(
        'checkpoint',
        nargs='?',
        help='the checkpoint to check; without it, a dry run on the freshly '
        'built model (what would be pruned, and why the rest is skipped)',
    )
    parser.add_argument(
        '--only-masked',
        action='store_true',
        help='list only the layers that carry a mask',
    )
    return parser.parse_args()


def _sparsity_settings(cfg: Config) -> dict:
    """Selection settings from a SparsityHook or a GPUSQ ``sparsity``."""
    for hook in cfg.get('custom_hooks', None) or []:
        if str(hook.get('type', '')).endswith('SparsityHook'):
            return {k: v for k, v in hook.items() if k in _FIELDS}
    sparsity = cfg.model.get('sparsity', None)
    if isinstance(sparsity, dict):
        return {k: v for k, v in sparsity.items() if k in _FIELDS}
    return {}


def build_student(cfg: Config, state: dict):
    """Build the student and load ``state`` (masks attached as needed)."""
    if cfg.get('custom_imports', None):
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model_cfg = cfg.model
    if 'architecture' in model_cfg:  # a GPUSQ algorithm: the student only
        model_cfg = model_cfg.architecture
        prefix = 'architecture.'
        if any(k.startswith(prefix) for k in state):  # full checkpoint
            state = {
                k[len(prefix) :]: v
                for k, v in state.items()
                if k.startswith(prefix)
            }
        # else: a student-only checkpoint, already upstream keys
    model = MODELS.build(model_cfg)
    suffix = f'.{MASK_NAME}'
    names = [k[: -len(suffix)] for k in state if k.endswith(suffix)]
    attach_masks(model, names)
    model.load_state_dict(state, strict=False)
    return model


def check(model, settings: dict, only_masked: bool = False) -> int:
    """Print the table and totals; return the number of violations."""
    decisions = select_layers(model, SparsityConfig(**settings))
    modules = dict(model.named_modules())
    width = max([len(d.name) for d in decisions] + [5])
    print(
        f'{"layer":<{width}}  {"shape":<16} {"eligible":<8} {"masked":<6} '
        f'{"2:4":<4} kept'
    )
    bad, n_masked, n_ok = [], 0, 0
    weights = sparse = 0
    for d in decisions:
        module = modules[d.name]
        weight = module.weight.detach()
        flag = module._buffers.get(FLAG_NAME)
        masked = flag is not None and bool(flag)
        ok = is_2to4(weight)
        weights += weight.numel()
        sparse += weight.numel() if ok else 0
        if masked:
            n_masked += 1
            n_ok += ok
            outside = bool(weight[~module._buffers[MASK_NAME]].any())
            if not ok or outside:
                bad.append(d.name)
        kept = (
            f'{kept_magnitude_ratio(weight):.4f}'
            if weight.dim() >= 2 and weight.shape[1] % 4 == 0
            else '-'
        )
        if only_masked and not masked:
            continue
        shape = 'x'.join(str(s) for s in d.shape)
        print(
            f'{d.name:<{width}}  {shape:<16} '
            f'{"yes" if d.eligible else "no":<8} '
            f'{"yes" if masked else "no":<6} {"yes" if ok else "no":<4} '
            f'{kept}' + ('' if d.eligible else f'  ({d.reason})')
        )
    params = sum(p.numel() for p in model.parameters())
    print(
        f'\nlayers: {len(decisions)} Linear/Conv, '
        f'{sum(d.eligible for d in decisions)} eligible, {n_masked} masked, '
        f'{n_ok} masked and 2:4'
    )
    print(
        f'2:4 weights: {sparse} / {weights} Linear/Conv weights '
        f'({sparse / max(weights, 1):.2%}), '
        f'{sparse / max(params, 1):.2%} of all {params} parameters'
    )
    if bad:
        print(f'NOT 2:4 although masked: {", ".join(bad)}')
    return len(bad)


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    state = {}
    if args.checkpoint:
        ckpt = _load_checkpoint(args.checkpoint, map_location='cpu')
        state = ckpt.get('state_dict', ckpt)
    state = {
        (k[len('module.') :] if k.startswith('module.') else k): v
        for k, v in state.items()
    }
    with torch.no_grad():
        model = build_student(cfg, state)
        failures = check(model, _sparsity_settings(cfg), args.only_masked)
    sys.exit(1 if failures else 0)


if __name__ == '__main__':
    main()
