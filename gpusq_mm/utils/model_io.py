"""Build a model from a config and load a checkpoint into it (any stage)."""

import os.path as osp

from torch import nn


def load_model(
    config: str, checkpoint: str, student: bool = True, device: str = 'cpu'
) -> nn.Module:
    """Build ``config``'s model, load ``checkpoint`` and return it in eval.

    Works for plain mmdet / mmseg / mmpretrain configs and for gpusq
    configs; for the latter the teacher is not built (only the student's
    keys, masks and quantizer state are needed) and, with ``student=True``,
    the upstream student model is returned.

    Args:
        config (str): config file.
        checkpoint (str): full training or student-only checkpoint.
        student (bool): return ``model.architecture`` for GPUSQ models.
            Defaults to True.
        device (str): map location. Defaults to 'cpu'.
    """
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.runner.checkpoint import (
        _load_checkpoint,
        _load_checkpoint_to_model,
    )

    import gpusq_mm  # noqa: F401
    from gpusq_mm.registry import MODELS

    for path, what in ((config, 'config'), (checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} file not found: {path}')
    cfg = Config.fromfile(config)
    model_cfg = cfg.model
    if 'architecture' in model_cfg:
        model_cfg.teacher = None
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    scope = cfg.get('default_scope', 'mmengine')
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(model_cfg)
    ckpt = _load_checkpoint(checkpoint, map_location=device)
    state = ckpt.get('state_dict', ckpt)
    # the QAT teacher snapshot is training state, not part of the model
    state = {
        k: v for k, v in state.items() if not k.startswith('qat_teacher.')
    }
    _load_checkpoint_to_model(model, state, strict=False)
    model.eval()
    if student and hasattr(model, 'architecture'):
        model = model.architecture
    return model
