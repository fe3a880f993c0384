"""Build, load and freeze the teacher of a GPUSQ algorithm.

The teacher is an ordinary OpenMMLab model given by its own config (a file
path, ``'pkg::path'`` such as ``'mmdet::swin/...py'``, or a dict) and a
checkpoint. It is built under its own config's ``default_scope`` (so an
mmseg teacher can be built from an mmdet run), loaded once, frozen and kept
in eval mode.

Input normalization: the teacher sees the student's preprocessed batch
converted to its own normalization. Normalization is per-channel affine,
so ``((x_s * std_s + mean_s)[perm] - mean_t) / std_t`` equals the
teacher's normalization of the same raw (augmented, padded) batch, without
running random batch augmentations twice.
"""

import copy
import os.path as osp
import pickle
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import DefaultScope

__all__ = [
    'InputAdapter',
    'build_teacher',
    'check_same_parameters',
    'freeze',
    'load_teacher_config',
    'normalization_of',
    'own_config',
    'teacher_settings',
]


def load_teacher_config(config: Union[str, dict]) -> Tuple[dict, str]:
    """The teacher's model config and default scope.

    Args:
        config (str | dict): a config file path, ``'pkg::path'``, a full
            config dict (with ``model``) or a model dict (with ``type``; its
            optional key ``default_scope`` sets the scope).

    Returns:
        tuple[dict, str]: model config and default scope (may be None).
    """
    if isinstance(config, str):
        if '::' in config:
            from mmengine.hub import get_config

            cfg = get_config(config)
        else:
            if not osp.isfile(config):
                raise FileNotFoundError(
                    f'teacher config file not found: {config!r}'
                )
            cfg = Config.fromfile(config)
        model = cfg.model
        # as MMEngine's Runner does for the top-level model: mmpretrain
        # keeps normalization / num_classes in a top-level data_preprocessor
        if cfg.get('data_preprocessor') is not None:
            model.setdefault('data_preprocessor', cfg.data_preprocessor)
        return model, cfg.get('default_scope')
    if isinstance(config, (dict, Config, ConfigDict)):
        config = ConfigDict(config)
        if 'model' in config:
            return config.model, config.get('default_scope')
        scope = config.pop('default_scope', None)
        return config, scope
    raise TypeError(
        f'teacher config must be a path or a dict, got {type(config)}'
    )


def freeze(model: nn.Module) -> nn.Module:
    """Turn off gradients and put ``model`` in eval mode (in place)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()  # mmdet's SwinTransformer.train() returns None: no chaining
    return model


def build_teacher(
    config: Union[str, dict],
    checkpoint: Optional[str],
    strict: bool = True,
) -> nn.Module:
    """Build the teacher under its own scope, load its weights, freeze it.

    Args:
        config (str | dict): see :func:`load_teacher_config`.
        checkpoint (str, optional): the teacher's weights (required).
        strict (bool): fail on missing / unexpected keys. Defaults to True.

    Raises:
        FileNotFoundError: the checkpoint path does not exist.
    """
    if not checkpoint:
        raise ValueError(
            'teacher.checkpoint is required: the teacher must be a trained '
            'model (KD with random weights is never what you want)'
        )
    if '://' not in checkpoint and not osp.isfile(checkpoint):
        raise FileNotFoundError(
            f'teacher checkpoint not found: {checkpoint!r}; point '
            'model.teacher.checkpoint at the trained dense model, e.g. '
            '--cfg-options model.teacher.checkpoint=PATH'
        )
    model_cfg, scope = load_teacher_config(config)
    model_cfg = ConfigDict(model_cfg)
    # the teacher's weights come from its checkpoint; skip pretrained
    # backbone downloads of its config
    if isinstance(model_cfg.get('backbone'), dict):
        model_cfg.backbone.pop('init_cfg', None)
    if scope is not None:
        with DefaultScope.overwrite_default_scope(scope):
            teacher = ROOT_MODELS.build(model_cfg)
    else:
        teacher = ROOT_MODELS.build(model_cfg)
    from mmengine.runner.checkpoint import load_checkpoint

    try:
        load_checkpoint(
            teacher, checkpoint, map_location='cpu', strict=strict, logger=None
        )
    except pickle.UnpicklingError as e:
        raise ValueError(f'model.teacher.checkpoint: {e}') from e
    except RuntimeError as e:
        if 'state_dict' not in str(e) and 'size mismatch' not in str(e):
            raise
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        raise ValueError(
            f'teacher checkpoint {checkpoint!r} does not match the teacher '
            f'config {config if isinstance(config, str) else type(config)} '
            f'({type(teacher).__name__}); is it the dense model of another '
            f'architecture? {" | ".join(lines)[:600]}'
        ) from e
    check_finite(teacher, f'teacher checkpoint {checkpoint!r}')
    return freeze(teacher)


def check_finite(model: nn.Module, what: str) -> None:
    """Raise if a floating-point parameter or buffer holds NaN / inf.

    A teacher (and the student initialised from it) with non-finite
    weights only surfaces much later, as NaN losses or a Hungarian
    matcher refusing a NaN cost matrix; name the tensors up front.
    """
    bad = [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        shown = ', '.join(bad[:5]) + (' ...' if len(bad) > 5 else '')
        raise ValueError(
            f'{what}: {len(bad)} tensor(s) hold NaN or inf: {shown}'
        )


def normalization_of(
    preprocessor: Optional[nn.Module],
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], bool]:
    """``(mean, std, swap_channels)`` of an OpenMMLab data preprocessor."""
    if preprocessor is None:
        return None, None, False
    swap = bool(
        getattr(preprocessor, '_channel_conversion', False)
        or getattr(preprocessor, 'channel_conversion', False)
        or getattr(preprocessor, 'to_rgb', False)
    )
    if getattr(preprocessor, '_enable_normalize', False):
        return preprocessor.mean, preprocessor.std, swap
    return None, None, swap


def _same(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and torch.allclose(
        a.detach().double().cpu(), b.detach().double().cpu()
    )


class InputAdapter:
    """Convert student-normalized inputs to the teacher's normalization.

    Args:
        student_pre (nn.Module): the student's data preprocessor.
        teacher_pre (nn.Module): the teacher's data preprocessor.
    """

    def __init__(self, student_pre, teacher_pre) -> None:
        self.s_mean, self.s_std, s_swap = normalization_of(student_pre)
        self.t_mean, self.t_std, t_swap = normalization_of(teacher_pre)
        self.swap = s_swap != t_swap
        self.identity = (
            not self.swap
            and _same(self.s_mean, self.t_mean)
            and _same(self.s_std, self.t_std)
        )

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher inputs from the student's preprocessed ``inputs``."""
        if self.identity or inputs.dim() != 4:
            return inputs
        x = inputs.float()
        if self.s_mean is not None:
            x = x * self.s_std.to(x) + self.s_mean.to(x)
        if self.swap and x.shape[1] == 3:
            x = x.flip(1)
        if self.t_mean is not None:
            x = (x - self.t_mean.to(x)) / self.t_std.to(x)
        return x.to(inputs.dtype)


def teacher_settings(teacher: Optional[dict]) -> Optional[dict]:
    """Check ``GPUSQ.teacher``'s keys; fill ``config`` / ``strict``."""
    if teacher is None:
        return None
    if not isinstance(teacher, dict):
        raise TypeError(
            f'teacher must be dict(checkpoint=..., config=None, strict=True) '
            f'or None, got {teacher!r}'
        )
    unknown = sorted(set(teacher) - {'config', 'checkpoint', 'strict'})
    if unknown:
        raise KeyError(
            f'unknown teacher key(s) {unknown}; accepted: checkpoint, '
            'config, strict'
        )
    return dict(
        config=teacher.get('config'),
        checkpoint=teacher.get('checkpoint'),
        strict=teacher.get('strict', True),
    )


def own_config(architecture: dict) -> dict:
    """The teacher config that repeats the student's architecture."""
    from mmengine.registry import DefaultScope

    cfg = copy.deepcopy(dict(architecture))
    scope = DefaultScope.get_current_instance()
    if scope is not None:
        cfg['default_scope'] = scope.scope_name
    return cfg


def check_same_parameters(student: nn.Module, teacher: nn.Module) -> None:
    """A student started from the teacher must have its parameters."""
    t_state = teacher.state_dict()
    diff = [
        n
        for n, p in student.named_parameters()
        if n not in t_state or t_state[n].shape != p.shape
    ]
    if diff:
        shown = ', '.join(diff[:5]) + (' ...' if len(diff) > 5 else '')
        raise ValueError(
            f'teacher and student architectures differ ({len(diff)} student '
            f'parameter(s) missing or of another shape in the teacher: '
            f'{shown}); the student cannot start from the teacher. Set '
            "init_student='none' (and load_from=STUDENT.pth), or bridge "
            'the features with distill.features.connectors'
        )
