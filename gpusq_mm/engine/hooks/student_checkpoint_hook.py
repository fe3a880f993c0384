"""Write the student-only checkpoint at the end of training."""

import os.path as osp
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from gpusq_mm.registry import HOOKS

from .model_access import unwrap

__all__ = ['StudentCheckpointHook']


@HOOKS.register_module()
class StudentCheckpointHook(Hook):
    """Save the GPUSQ student (no teacher, no connectors) after training.

    The file holds the upstream model's keys plus 2:4 masks and quantizer
    state, written atomically on rank 0.

    Args:
        filename (str): file name in ``out_dir``. Defaults to
            ``'student_final.pth'``.
        out_dir (str, optional): folder; default: the runner's work_dir.
    """

    priority = 'VERY_LOW'

    def __init__(
        self,
        filename: str = 'student_final.pth',
        out_dir: Optional[str] = None,
    ) -> None:
        assert isinstance(filename, str) and filename, (
            f'filename must be a non-empty str, got {filename!r}'
        )
        self.filename = filename
        self.out_dir = out_dir

    def after_train(self, runner) -> None:
        model = unwrap(runner.model)
        if not hasattr(model, 'save_student_checkpoint'):
            runner.logger.warning(
                'StudentCheckpointHook: the model is not a GPUSQ algorithm; '
                'nothing written'
            )
            return
        if not is_main_process():
            return
        path = osp.join(self.out_dir or runner.work_dir, self.filename)
        model.save_student_checkpoint(
            path, meta=dict(epoch=runner.epoch, iter=runner.iter)
        )
        runner.logger.info(f'student-only checkpoint saved to {path}')
