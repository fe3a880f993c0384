"""Every user config in configs/gpusq/ builds, trains and evaluates.

Each config is loaded as a user would load it, its teacher checkpoint is
replaced by a generated one (the seeded, randomly initialised teacher
model), and its data are pointed at small generated datasets laid out the
standard way (COCO ``annotations/instances_*2017.json``, ADE20K
``images/ + annotations/``, class folders). The real MMEngine Runner then
trains 2 iterations -- the QAT switch at iteration 1, so both stages run --
and evaluates once with the config's own evaluator. Images are shrunk and
the schedule shortened; the architectures are the configs' own.
"""

import os.path as osp

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CFG_DIR = osp.join(REPO_ROOT, 'configs', 'gpusq')

pytestmark = pytest.mark.slow


def _set_pipeline_scale(pipeline, scale):
    for t in pipeline:
        if t['type'] in ('Resize', 'RandomResize', 'RandomChoiceResize'):
            t.clear()
            t.update(type='Resize', scale=scale, keep_ratio=True)
        if t['type'] == 'RandomChoice':
            t.clear()
            t.update(type='Resize', scale=scale, keep_ratio=True)


@pytest.fixture(scope='module')
def coco80_root(coco_data_root, tmp_path_factory) -> str:
    """The generated COCO data under the real 80-category COCO label set.

    The upstream configs predict 80 classes; the generated shape classes
    are renamed to the first COCO names and the other 74 categories are
    listed without instances, as in a real COCO annotation file.
    """
    import json
    import os

    from mmdet.datasets import CocoDataset

    root = tmp_path_factory.mktemp('coco80')
    os.makedirs(root / 'annotations')
    names = CocoDataset.METAINFO['classes']
    for split in ('train2017', 'val2017'):
        os.symlink(osp.join(coco_data_root, split), root / split)
        src = osp.join(
            coco_data_root, 'annotations', f'instances_{split}.json'
        )
        with open(src) as f:
            ann = json.load(f)
        old = {c['id']: i for i, c in enumerate(ann['categories'])}
        for a in ann['annotations']:
            a['category_id'] = old[a['category_id']] + 1
        ann['categories'] = [
            dict(id=i + 1, name=n, supercategory='thing')
            for i, n in enumerate(names)
        ]
        with open(root / 'annotations' / f'instances_{split}.json', 'w') as f:
            json.dump(ann, f)
    return str(root)


def _det_data(cfg, root, scale=(256, 192)):
    for split, ann, prefix in (
        ('train_dataloader', 'instances_train2017.json', 'train2017/'),
        ('val_dataloader', 'instances_val2017.json', 'val2017/'),
        ('test_dataloader', 'instances_val2017.json', 'val2017/'),
    ):
        ds = cfg[split].dataset
        ds.update(
            data_root=root + '/',
            ann_file='annotations/' + ann,
            data_prefix=dict(img=prefix),
        )
        _set_pipeline_scale(ds.pipeline, scale)
        ds.pipeline = [t for t in ds.pipeline if t['type'] != 'RandomCrop']
        if split != 'train_dataloader':
            ds.indices = 2
    for key in ('val_evaluator', 'test_evaluator'):
        cfg[key].ann_file = osp.join(
            root, 'annotations', 'instances_val2017.json'
        )
        cfg[key].pop('outfile_prefix', None)


def _seg_data(cfg, root, size=(128, 128)):
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        ds = cfg[split].dataset
        ds.data_root = root
        pipeline = []
        for t in ds.pipeline:
            if t['type'] in ('RandomResize', 'Resize'):
                t = dict(type='Resize', scale=size, keep_ratio=False)
            if t['type'] == 'RandomCrop':
                continue
            pipeline.append(t)
        ds.pipeline = pipeline
        if split != 'train_dataloader':
            ds.indices = 2
    cfg.model.architecture.data_preprocessor.size = size
    cfg.train_dataloader.batch_size = 2  # BatchNorm in the PPM needs 2


def _cls_data(cfg, root, size=224):
    for split, prefix in (
        ('train_dataloader', 'train'),
        ('val_dataloader', 'val'),
        ('test_dataloader', 'val'),
    ):
        ds = cfg[split].dataset
        pipeline = []
        for t in ds.pipeline:
            if t['type'] in ('RandAugment', 'RandomErasing'):
                continue
            if t['type'] in ('RandomResizedCrop', 'ResizeEdge'):
                t = dict(type='Resize', scale=(size, size))
            if t['type'] == 'CenterCrop':
                continue
            pipeline.append(t)
        cfg[split].dataset = dict(
            type='CustomDataset',
            data_root=root,
            data_prefix=prefix,
            pipeline=pipeline,
            indices=None if split == 'train_dataloader' else 4,
        )
    cfg.model.architecture.backbone.img_size = size
    cfg.val_evaluator = dict(type='Accuracy', topk=(1,))
    cfg.test_evaluator = cfg.val_evaluator


def _short_schedule(cfg, work_dir, task):
    cfg.work_dir = str(work_dir)
    cfg.train_cfg = dict(
        type='IterBasedTrainLoop', max_iters=2, val_interval=2
    )
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', by_epoch=False, interval=2
    )
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.log_processor = dict(by_epoch=False)
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if split != 'train_dataloader' or task != 'seg':
            cfg[split].batch_size = 1
        cfg[split].num_workers = 0
        cfg[split].persistent_workers = False
        cfg[split].sampler = dict(type='DefaultSampler', shuffle=False)
        cfg[split].pop('batch_sampler', None)
    for hook in cfg.custom_hooks:
        if hook['type'].endswith('GPUSQHook'):
            for key in ('qat_ratio', 'qat_begin_epoch'):
                hook.pop(key, None)
            hook.update(qat_begin_iter=1, num_batches=1, progress=False)
    cfg.pop('auto_scale_lr', None)
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]


CASES = {
    'swin_maskrcnn_coco.py': ('det', 'coco/bbox_mAP'),
    'detr_r50_coco.py': ('det', 'coco/bbox_mAP'),
    'dino_swin_coco.py': ('det', 'coco/bbox_mAP'),
    'upernet_swin_ade20k.py': ('seg', 'mIoU'),
    'swin_tiny_in1k.py': ('cls', 'accuracy/top1'),
}


def test_every_config_is_covered():
    import glob

    found = {osp.basename(p) for p in glob.glob(osp.join(CFG_DIR, '*.py'))}
    assert found == set(CASES), f'untested configs: {found ^ set(CASES)}'


@pytest.mark.parametrize('name', sorted(CASES))
def test_config_trains_and_evaluates(
    name, tmp_path, coco80_root, ade_data_root, cls_data_root, dense_checkpoint
):
    from mmengine.config import Config
    from mmengine.runner import Runner

    import gpusq_mm  # noqa: F401

    task, metric = CASES[name]
    cfg = Config.fromfile(osp.join(CFG_DIR, name))
    # the teacher's config is the student's (GPUSQ's default)
    upstream = dict(
        model=cfg.model.architecture.to_dict(),
        default_scope=cfg.default_scope,
    )
    cfg.model.teacher.checkpoint = dense_checkpoint(
        upstream, str(tmp_path / 'teacher.pth')
    )[1]
    if task == 'det':
        _det_data(cfg, coco80_root)
        # a 2-iteration model scores below the default thresholds
        rcnn = cfg.model.architecture.get('test_cfg', {}).get('rcnn')
        if rcnn is not None:
            rcnn.score_thr = 0.0
    elif task == 'seg':
        _seg_data(cfg, ade_data_root)
    else:
        _cls_data(cfg, cls_data_root)
    _short_schedule(cfg, tmp_path / 'work', task)
    runner = Runner.from_cfg(cfg)
    runner.train()
    model = runner.model
    assert int(model.gpusq_stage) == 2, 'QAT stage not reached'
    metrics = runner.val_loop.run()
    assert metric in metrics, sorted(metrics)
    assert 0.0 <= float(metrics[metric]) <= 100.0
    from gpusq_mm.sparsity import is_2to4, masked_layers

    layers = list(masked_layers(model.architecture).items())
    assert layers, 'no 2:4 layers in the student'
    for _, module in layers:
        assert is_2to4(module.weight.detach())
