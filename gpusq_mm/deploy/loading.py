"""Build the student of a config and load a checkpoint of any stage.

No teacher is built: a gpusq config's ``model.teacher`` is set to None
(the teacher only matters for training). The checkpoint may be the
student-only ``student_final.pth``, a full training checkpoint of any
stage (``architecture.`` keys; the ``qat_teacher.`` snapshot and the
distillation state are ignored) or a
plain dense checkpoint of the upstream model. Missing mask / quantizer
buffers are allowed (they keep their placeholders: dense, quantizers off);
a plain config's checkpoint trained with ``gpusq_mm.SparsityHook`` loads
without its mask buffers once each weight is checked to be zero where its
mask is (the weights are the 2:4 model);
any other missing or unexpected key is an error naming the keys, so a
checkpoint of another model never exports silently.
"""

import os.path as osp
from typing import Optional, Tuple

import torch.nn as nn

__all__ = ['load_student']

#: buffers that may be absent from a checkpoint (placeholders stay)
_OPTIONAL = (
    'sparsity_mask',
    'sparsity_mask_computed',
    '_amax',
    '_calibrated',
    '_enabled',
    'gpusq_stage',
)


def _drop_applied_masks(state: dict, unexpected: list, checkpoint: str):
    """Drop the 2:4 mask buffers a plain config's ``SparsityHook`` saved.

    The plain model has no mask buffers, but the hook keeps each masked
    weight's pruned entries at zero, so the weights alone are the 2:4
    model: a mask is dropped only when its weight is zero wherever the
    mask is. A weight that breaks its mask is an error.
    """
    rest = []
    for key in unexpected:
        if key.endswith('.sparsity_mask_computed'):
            continue
        if key.endswith('.sparsity_mask'):
            weight = state.get(key[: -len('sparsity_mask')] + 'weight')
            mask = state[key]
            if weight is not None and weight.shape == mask.shape:
                if bool((weight[mask == 0] == 0).all()):
                    state.pop(key)
                    continue
                raise KeyError(
                    f'checkpoint {checkpoint}: {key} is not applied to its '
                    'weight (pruned entries are not zero)'
                )
        rest.append(key)
    for key in unexpected:
        if key.endswith('.sparsity_mask_computed'):
            state.pop(key, None)
    return rest


def _check_keys(missing, unexpected, checkpoint: str) -> None:
    missing = [k for k in missing if not k.endswith(_OPTIONAL)]
    problems = []
    if missing:
        problems.append(f'missing keys {missing[:5]} ({len(missing)})')
    if unexpected:
        problems.append(
            f'unexpected keys {unexpected[:5]} ({len(unexpected)})'
        )
    if problems:
        raise KeyError(
            f"checkpoint {checkpoint} does not match the config's model: "
            + '; '.join(problems)
        )


def load_student(
    config: str,
    checkpoint: str,
    cfg_options: Optional[dict] = None,
) -> Tuple[nn.Module, object]:
    """The config's (student) model with ``checkpoint`` loaded, in eval.

    Args:
        config (str): an mmdet / mmseg / mmpretrain or gpusq config file.
        checkpoint (str): the checkpoint file.
        cfg_options (dict, optional): config overrides. Defaults to None.

    Returns:
        tuple: the upstream model (``GPUSQ.architecture`` for gpusq
        configs) and the loaded :class:`mmengine.config.Config`.
    """
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.runner.checkpoint import _load_checkpoint
    from mmengine.utils import import_modules_from_strings

    import gpusq_mm  # noqa: F401  (registries, safe checkpoint loading)
    from gpusq_mm.registry import MODELS

    for path, what in ((config, 'config'), (checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} file not found: {path}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('custom_imports', None):
        import_modules_from_strings(**cfg.custom_imports)
    model_cfg = cfg.model.copy()
    is_gpusq = 'architecture' in model_cfg
    if is_gpusq:
        model_cfg.teacher = None
    elif isinstance(model_cfg.get('backbone'), dict):
        model_cfg.backbone.pop('init_cfg', None)  # no pretrained download
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(
        cfg.get('default_scope', 'mmengine')
    ):
        model = MODELS.build(model_cfg)
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt)
    state = {
        (k[len('module.') :] if k.startswith('module.') else k): v
        for k, v in state.items()
        if not k.startswith('qat_teacher.')
    }
    if is_gpusq and not any(k.startswith('architecture.') for k in state):
        # a student-only or plain dense checkpoint: upstream keys
        state = {
            (k if k == 'gpusq_stage' else f'architecture.{k}'): v
            for k, v in state.items()
        }
    # checked before loading: some upstream loaders (mmpretrain's Swin)
    # try to resize mismatching tensors instead of failing
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if is_gpusq:  # training-only state: KD statistics, connectors
        unexpected = [k for k in unexpected if k.startswith('architecture.')]
        state = {k: v for k, v in state.items() if k in own}
    else:  # a plain config trained with gpusq_mm.SparsityHook
        unexpected = _drop_applied_masks(state, unexpected, checkpoint)
    _check_keys(missing, unexpected, checkpoint)
    wrong = [
        f'{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})'
        for k, v in state.items()
        if hasattr(v, 'shape') and tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise KeyError(
            f"checkpoint {checkpoint} does not match the config's model: "
            f'shapes differ for {wrong[:3]} ({len(wrong)})'
        )
    model.load_state_dict(state, strict=False)
    model.eval()
    if is_gpusq:
        model = model.architecture
    return model, cfg
