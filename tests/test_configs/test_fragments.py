"""The ``_base_/gpusq`` fragments for plain (no KD) configs combine."""

import os.path as osp

from mmengine.config import Config

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BASE = osp.join(REPO_ROOT, 'configs', '_base_', 'gpusq')


def test_sparse_and_int4_fragments_combine(tmp_path):
    for bits in ('int8', 'int4'):
        path = tmp_path / f'plain_{bits}.py'
        path.write_text(
            f'_base_ = [{osp.join(BASE, "sparse_2to4.py")!r}, '
            f'{osp.join(BASE, f"qat_{bits}.py")!r}]\n'
            'custom_hooks = [*_base_.custom_hooks,\n'
            '                dict(_base_.gpusq_qat_hook, begin_epoch=3)]\n'
        )
        cfg = Config.fromfile(str(path))  # no duplicate base keys
        hooks = cfg.custom_hooks
        assert [h['type'] for h in hooks] == [
            'gpusq_mm.SparsityHook',
            'gpusq_mm.QATHook',
        ]
        assert hooks[1]['quantization'] == bits
        assert hooks[1]['begin_epoch'] == 3
