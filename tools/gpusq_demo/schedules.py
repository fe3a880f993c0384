"""The demo's tasks, their configs and the stage lengths."""

import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CFG = osp.join(ROOT, 'configs', 'gpusq', 'demo')

# The extra training rows (full demo only, or --all-rows): each is the
# task's gpusq config with these ``model`` overrides; ``qat``: the run has
# the QAT stage (stage 1 + QAT, as ``sparse24_int8``) or stops after stage 1
# (as ``sparse24``), so that each row has the budget of the row it is
# compared with. ``branch``: the row resumes the GPUSQ run from its
# stage-1 checkpoint (``resume=True``, ``load_from=`` it: MMEngine's
# resume, as ``tools/train.py --resume PATH``) and trains only its own
# QAT stage: the INT4 rows share the 2:4 + KD stage with ``sparse24_int8``
# (the factors are about the INT4 QAT; the shared stage costs nothing
# twice and the rows differ only where they are compared).
EXTRA_RUNS = {
    # label-free: the teacher's predictions replace the ground truth
    'sparse24_labelfree': dict(
        model=dict(distill=dict(hard='teacher'), quantization=None),
        qat=False,
        branch=False,
    ),
    # INT4 QAT with the per-layer feature-KD weight factors (the default)
    'sparse24_int4': dict(
        model=dict(quantization='int4'), qat=True, branch=True
    ),
    # the same without them (every layer weighted 1)
    'sparse24_int4_uniform': dict(
        model=dict(
            quantization='int4', distill=dict(weighting=dict(mode='uniform'))
        ),
        qat=True,
        branch=True,
    ),
}
EXTRA_ROWS = tuple(EXTRA_RUNS)

# task -> (dense config, gpusq config, main metric, data subfolder)
TASKS = {
    'det': dict(
        dense='swin_maskrcnn_tiny_dense.py',
        gpusq='swin_maskrcnn_tiny_gpusq.py',
        metric='coco/bbox_mAP',
        data='coco',
        # the full demo's dense teacher should reach this (see
        # teacher_check): below it, the compressed rows are measured
        # against an unconverged teacher
        teacher_target=0.40,
        # the dense detector's backbone starts from the dense seg model's
        # (the same tiny Swin): our stand-in for the ImageNet-pretrained
        # backbone every real Mask R-CNN starts from, which cannot be
        # downloaded here. From scratch, 400-600 CPU iterations leave the
        # detector at 0.001-0.014 bbox mAP (its loss stalls); from the seg
        # backbone it learns.
        backbone_from='seg',
        # no extra rows: the full demo is already past 30 min on a 2-core
        # CPU, and rows of the slowest model would add to it
        extra_rows=(),
        # paired comparisons on the same val images: COCO bbox mAP of any
        # resample, from each image's pycocotools matches
        paired=True,
        # the exported part of the final student and its input shape
        deploy=dict(part='backbone+neck', shape=(1, 3, 320, 320)),
    ),
    'seg': dict(
        dense='swin_upernet_tiny_dense.py',
        gpusq='swin_upernet_tiny_gpusq.py',
        metric='mIoU',
        data='ade',
        teacher_target=80.0,
        extra_rows=EXTRA_ROWS,
        # paired comparisons of rows on the same val images
        paired=True,
        # UperNet's pyramid pooling (1, 2, 3, 6) needs the stride-32 map to
        # be a multiple of 6 for the ONNX exporter: 192 = 6 x 32
        deploy=dict(part='full', shape=(1, 3, 192, 192)),
    ),
    'cls': dict(
        dense='swin_cls_tiny_dense.py',
        gpusq='swin_cls_tiny_gpusq.py',
        metric='accuracy/top1',
        data='cls',
        teacher_target=90.0,
        extra_rows=EXTRA_ROWS,
        paired=True,
        # the same tiny Swin as the seg model's, window 7 included
        backbone_from='seg',
        deploy=dict(part='full', shape=(1, 3, 56, 56)),
    ),
}
# row -> short label (plot), in table order
STAGE_LABELS = {
    'dense': 'dense',
    'sparse24_oneshot': '2:4 one-shot',
    'sparse24_nokd': '2:4 no KD',
    'sparse24': '2:4+KD',
    'sparse24_labelfree': '2:4+KD no labels',
    'sparse24_int8': '2:4+INT8',
    'sparse24_int4': '2:4+INT4',
    'sparse24_int4_uniform': '2:4+INT4 uniform',
}
STAGES = tuple(STAGE_LABELS)
# seg first: its dense model initialises the detector's backbone
RUN_ORDER = ('seg', 'det', 'cls')


# Lengths in the config's own unit (iterations for det/seg, epochs for cls)
# and data sizes, per mode (the full lengths are the demo configs' own
# defaults). The dense teachers get most of the time: GPUSQ assumes a
# trained dense model, and a teacher still far from converged makes the
# ablation meaningless (the student fine-tuned without KD simply keeps
# training past it). Stage 1 (2:4 + KD) is 1/20-1/12 of the dense schedule
# for seg and cls and 1/3 for det (whose one-shot drop is far larger),
# QAT 1/24-1/6 of it (pytorch-quantization suggests ~10 %). Val sets are larger
# than the minimum so that stage-to-stage differences are not one or two
# images. ``score``: the rows are scored on that many images after training
# (the val set's and more from the same generator; ``paired_rows``): one det
# image moved the bbox mAP of the 80 val images by up to 0.0066, of 400 by
# 0.0015; the learning curve and the runs' own validations keep the val set
# (each det validation of 400 images would cost 5x its time).
SCHEDULES = {
    'full': {
        # det stage 1 is a third of its dense schedule: one-shot 2:4 costs
        # the detector ~27 % of its mAP (seg / cls: 2 %)
        'det': dict(dense=600, stage1=200, qat=100, data=(160, 80), score=400),
        'seg': dict(dense=2000, stage1=100, qat=100, data=(160, 160)),
        # kd_seeds: sparse24 and sparse24_nokd over this many seeds
        'cls': dict(dense=24, stage1=2, qat=1, data=(3000, 600), kd_seeds=3),
    },
    'quick': {
        'det': dict(dense=60, stage1=30, qat=10, data=(32, 8), score=16),
        'seg': dict(dense=60, stage1=30, qat=10, data=(32, 8)),
        'cls': dict(dense=6, stage1=3, qat=1, data=(120, 30)),
    },
}

# timed onnxruntime runs (median) of each ONNX export of the final student
DEPLOY_RUNS = {'full': 20, 'quick': 5}
