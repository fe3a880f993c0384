"""The commands in the demo configs' header comments, run as written.

Read from the configs at test time and run in scratch folders holding
``configs/`` and ``tools/`` (links to the repository), in this process
(``main(argv)`` of the tools, ``python`` being this interpreter):

- ``configs/gpusq/demo/*_dense.py``: ``python tools/generate_data.py
  --out data/gpusq_demo --tasks X``, exactly (the demo's default dataset
  sizes); the dense config then finds the data where it looks;
- ``configs/gpusq/demo/*_gpusq.py``: ``python tools/train.py
  configs/gpusq/demo/X_gpusq.py --cfg-options
  model.teacher.checkpoint=DENSE.pth``. Adapted: the placeholder
  ``DENSE.pth`` is ``dense.pth``, a seeded, randomly initialised model of
  the task's dense demo config (the demo trains it first);
  ``data/gpusq_demo/`` holds the session's small generated sets (a few
  images, not the default hundreds: the run validates every image with
  fake quantization); appended ``--cfg-options`` shorten the schedule only
  (2 epochs / iterations, QAT from the second, one validation and one
  checkpoint at the end).
"""

import json
import os
import os.path as osp

import pytest
import torch
from test_docs.commands import (
    argv_of,
    header_commands,
    link_repo,
    run_in_process,
    short_schedule,
)

pytestmark = pytest.mark.slow

DEMO = 'configs/gpusq/demo'
#: task -> (config stem, generated sub-folder, main metric)
TASKS = {
    'det': ('swin_maskrcnn_tiny', 'coco', 'coco/bbox_mAP'),
    'seg': ('swin_upernet_tiny', 'ade', 'mIoU'),
    'cls': ('swin_cls_tiny', 'cls', 'accuracy/top1'),
}


def test_generate_data_commands(tmp_path, monkeypatch):
    from mmengine.config import Config

    from gpusq_mm.datasets.generate import TASKS as SIZES

    link_repo(tmp_path)
    for task, (stem, folder, _) in sorted(TASKS.items()):
        dense = f'{DEMO}/{stem}_dense.py'
        (generate,) = header_commands(dense)
        assert generate == (
            'python tools/generate_data.py --out data/gpusq_demo --tasks '
            + task
        )
        roots = run_in_process(argv_of(generate), tmp_path, monkeypatch)
        assert roots == {task: osp.join('data/gpusq_demo', folder)}
        with open(tmp_path / roots[task] / 'gpusq_manifest.json') as f:
            settings = json.load(f)['settings']
        # the demo's default sizes, where the dense config reads them
        assert settings['num_train'] == SIZES[task][2]
        assert settings['num_val'] == SIZES[task][3]
        cfg = Config.fromfile(dense)
        root = cfg.train_dataloader.dataset.data_root
        assert osp.normpath(root) == osp.join('data/gpusq_demo', folder)


@pytest.mark.parametrize('task', sorted(TASKS))
def test_gpusq_header_command(
    task, tmp_path, request, dense_checkpoint, monkeypatch
):
    from gpusq_mm.sparsity import is_2to4, masked_layers

    stem, folder, metric = TASKS[task]
    fixture = dict(det='coco', seg='ade', cls='cls')[task] + '_data_root'
    root = request.getfixturevalue(fixture)  # generated_data_dir/<folder>
    link_repo(tmp_path)
    os.makedirs(tmp_path / 'data')
    os.symlink(osp.dirname(root.rstrip('/')), tmp_path / 'data' / 'gpusq_demo')
    assert osp.isdir(tmp_path / 'data' / 'gpusq_demo' / folder)
    dense_checkpoint(
        osp.join(tmp_path, DEMO, f'{stem}_dense.py'),
        str(tmp_path / 'dense.pth'),
    )
    config = f'{DEMO}/{stem}_gpusq.py'
    (train,) = header_commands(config)
    argv = argv_of(train, {'DENSE.pth': 'dense.pth'})
    runner = run_in_process(
        argv, tmp_path, monkeypatch, extra=short_schedule(config)
    )
    model = runner.model
    assert model.stage == 2
    assert runner.cfg.model.teacher.checkpoint == 'dense.pth'
    value = runner.message_hub.get_scalar(f'val/{metric}').current()
    assert 0.0 <= value <= 100.0
    layers = masked_layers(model.architecture)
    assert layers and all(is_2to4(m.weight) for m in layers.values())
    final = tmp_path / 'work_dirs' / f'{stem}_gpusq' / 'student_final.pth'
    assert torch.load(final)['meta']['gpusq_stage'] == 2
