"""The one-shot 2:4 row: the dense weights with magnitude masks, no training.

:func:`oneshot_checkpoint` builds the GPUSQ student of the task's gpusq
config (the same layer selection as the GPUSQ run), loads the dense
teacher's weights into it, computes the 2:4 magnitude masks with
:mod:`gpusq_mm.sparsity` and saves the result as a checkpoint of that
config, so ``tools/test.py GPUSQ_CONFIG oneshot.pth`` evaluates it with the
same evaluator as every other row. It shows the damage 2:4 does before the
fine-tune recovers it.
"""

import os.path as osp


def oneshot_checkpoint(gpusq_config: str, dense_ckpt: str, out: str) -> str:
    """Save the dense weights, 2:4-pruned, as a ``gpusq_config`` checkpoint.

    Args:
        gpusq_config (str): the task's (prepared) gpusq config.
        dense_ckpt (str): the dense teacher's checkpoint.
        out (str): the checkpoint to write.

    Returns:
        str: ``out``.

    Raises:
        RuntimeError: the dense checkpoint does not fit the student (one of
            its parameters is missing, an extra key or another shape).
    """
    import io

    import torch
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.runner.checkpoint import _load_checkpoint

    import gpusq_mm  # noqa: F401  (registries)
    from gpusq_mm.registry import MODELS
    from gpusq_mm.sparsity import compute_masks
    from gpusq_mm.utils.checkpoint import _atomic_write_bytes

    cfg = Config.fromfile(gpusq_config)
    cfg.model.teacher = None  # the student alone is pruned and saved
    if cfg.get('data_preprocessor') is not None:
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(
        cfg.get('default_scope', 'mmengine')
    ):
        model = MODELS.build(cfg.model)
    ckpt = _load_checkpoint(dense_ckpt, map_location='cpu')
    state = ckpt.get('state_dict', ckpt)
    # checked before loading: a model's own load hooks (e.g. Swin's
    # relative-position resizing) fail obscurely on a foreign checkpoint.
    # Masks and quantizer state are the student's own, not the dense one's.
    own = model.architecture.state_dict()
    params = dict(model.architecture.named_parameters())
    missing = sorted(k for k in params if k not in state)
    extra = sorted(k for k in state if k not in own)
    shapes = sorted(
        k for k in state if k in own and own[k].shape != state[k].shape
    )
    if missing or extra or shapes:
        raise RuntimeError(
            f'{dense_ckpt} does not fit the student of {gpusq_config}: '
            f'missing {missing[:5]}, unexpected {extra[:5]}, other shapes '
            f'{shapes[:5]}'
        )
    model.architecture.load_state_dict(state, strict=False)
    pruned = compute_masks(model.architecture)
    if not pruned:
        raise RuntimeError(f'{gpusq_config} selects no layer for 2:4')
    model.begin_sparse()
    buf = io.BytesIO()
    torch.save(
        dict(
            state_dict=model.state_dict(),
            meta=dict(
                oneshot_from=osp.basename(dense_ckpt), pruned=len(pruned)
            ),
        ),
        buf,
    )
    _atomic_write_bytes(buf.getvalue(), out)
    return out
