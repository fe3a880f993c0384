"""Tiny students of the demo configs at any stage, without a Runner.

``make_student(task, path, stage)`` builds the demo gpusq config's model
without a teacher (seeded random weights), computes the 2:4 masks
(stage >= 1), calibrates the quantizers on random images and turns them on
(stage 2), and writes the student-only checkpoint, as
``StudentCheckpointHook`` would after training.
"""

import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO_ROOT, 'configs', 'gpusq', 'demo')
CONFIGS = {
    'cls': osp.join(DEMO, 'swin_cls_tiny_gpusq.py'),
    'seg': osp.join(DEMO, 'swin_upernet_tiny_gpusq.py'),
    'det': osp.join(DEMO, 'swin_maskrcnn_tiny_gpusq.py'),
}
#: the part each family exports
PART = {'cls': 'full', 'seg': 'full', 'det': 'backbone+neck'}
SHAPE = (1, 3, 64, 64)
#: input shape per task: UperNet's pyramid pooling (1, 2, 3, 6) needs the
#: last stage (1/32) to be a multiple of 6 for the ONNX exporter
SHAPES = {'cls': SHAPE, 'seg': (1, 3, 192, 192), 'det': SHAPE}


def build_student(task: str, cfg_options: Optional[dict] = None):
    """The student of the demo gpusq config (no teacher, seeded)."""
    import gpusq_mm  # noqa: F401
    from gpusq_mm.registry import MODELS

    cfg = Config.fromfile(CONFIGS[task])
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model_cfg = cfg.model.copy()
    model_cfg.teacher = None
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(model_cfg)
    return model.architecture.eval()


def part_forward(model, part: str):
    from gpusq_mm.deploy import PartModule

    module = PartModule(model, part)
    return lambda batch: module(batch)


def make_student(
    task: str,
    path: str,
    stage: int = 2,
    cfg_options: Optional[dict] = None,
):
    """Build, compress to ``stage`` and save a student; return it."""
    from gpusq_mm.models.student import student_checkpoint
    from gpusq_mm.quantization import calibrate, enable_fake_quant
    from gpusq_mm.sparsity import apply_masks, compute_masks

    model = build_student(task, cfg_options)
    if stage >= 1:
        compute_masks(model)
        apply_masks(model)
    if stage >= 2:
        gen = torch.Generator().manual_seed(1)
        batches = [torch.randn(SHAPES[task], generator=gen) for _ in range(2)]
        calibrate(model, part_forward(model, PART[task]), batches)
        enable_fake_quant(model)
    student_checkpoint(model, path)
    return model
