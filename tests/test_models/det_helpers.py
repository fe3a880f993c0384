"""Tiny mmdet detectors wrapped in GPUSQ, and synthetic batches (no Runner).

Helpers of the KD-part and label-free tests: a teacher checkpoint of a
seeded random model, the student built from the same config, and a batch
of already-preprocessed inputs with box / mask annotations.
"""

import copy

import torch
from mmengine.config import ConfigDict
from mmengine.registry import MODELS, DefaultScope

from gpusq_mm.models import GPUSQ

from .conftest import tiny_detr

NUM_CLASSES = 6


def tiny_mask_rcnn(channels: int = 32) -> dict:
    """A shrunk mmdet Mask R-CNN (ResNet-18 with 16 base channels, FPN)."""
    from mmengine.hub import get_config

    path = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
    model = get_config(path).model.to_dict()
    model['backbone'].update(
        depth=18, base_channels=16, init_cfg=None, frozen_stages=-1
    )
    model['neck'].update(in_channels=[16, 32, 64, 128], out_channels=channels)
    model['rpn_head'].update(in_channels=channels, feat_channels=channels)
    roi = model['roi_head']
    roi['bbox_roi_extractor']['out_channels'] = channels
    roi['mask_roi_extractor']['out_channels'] = channels
    roi['bbox_head'].update(
        in_channels=channels, fc_out_channels=64, num_classes=NUM_CLASSES
    )
    roi['mask_head'].update(
        in_channels=channels,
        conv_out_channels=channels,
        num_convs=1,
        num_classes=NUM_CLASSES,
    )
    model['train_cfg']['rpn_proposal'].update(nms_pre=200, max_per_img=100)
    model['train_cfg']['rcnn']['sampler']['num'] = 64
    model['test_cfg']['rpn'].update(nms_pre=200, max_per_img=50)
    return model


def tiny_detr_layers(name: str, layers: int = 2) -> dict:
    """:func:`tiny_detr` with ``layers`` decoder layers."""
    model = tiny_detr(name, NUM_CLASSES)
    model['decoder']['num_layers'] = layers
    return model


def build_gpusq(model_cfg: dict, tmp_path, seed: int = 1, **kwargs):
    """GPUSQ over a student of ``model_cfg`` (seed 0) and a saved teacher
    (seed ``seed``); ``kwargs`` go to ``GPUSQ`` (dense and FP unless
    given: these tests are about distillation)."""
    kwargs.setdefault('sparsity', None)
    kwargs.setdefault('quantization', None)
    model_cfg = copy.deepcopy(model_cfg)
    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.manual_seed(seed)
        teacher = MODELS.build(ConfigDict(model_cfg))
        teacher.init_weights()
        path = str(tmp_path / f'teacher_{seed}.pth')
        torch.save({'state_dict': teacher.state_dict()}, path)
        torch.manual_seed(0)
        student = MODELS.build(ConfigDict(model_cfg))
        student.init_weights()
    # dense and FP: these tests are about distillation
    kwargs.setdefault('sparsity', None)
    kwargs.setdefault('quantization', None)
    return GPUSQ(
        architecture=student,
        teacher=dict(
            config=dict(model=model_cfg, default_scope='mmdet'),
            checkpoint=path,
        ),
        **kwargs,
    )


def det_batch(n: int = 2, size: int = 64, seed: int = 0, masks=True):
    """Preprocessed inputs and ``DetDataSample`` s with 2 objects each."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, size, size, generator=g)
    samples = []
    for i in range(n):
        meta = dict(
            img_shape=(size, size),
            ori_shape=(size, size),
            pad_shape=(size, size),
            batch_input_shape=(size, size),
            scale_factor=(1.0, 1.0),
        )
        ds = DetDataSample(metainfo=meta)
        boxes = torch.tensor(
            [[4.0, 6.0, 30.0, 40.0], [20.0 + i, 18.0, 60.0, 58.0]]
        )
        gt = InstanceData(metainfo=meta)
        gt.bboxes = boxes  # the data preprocessor's output: a tensor
        gt.labels = torch.tensor([1, (2 + i) % NUM_CLASSES])
        if masks:
            m = torch.zeros(2, size, size, dtype=torch.uint8)
            for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
                m[k, y1:y2, x1:x2] = 1
            gt.masks = BitmapMasks(m.numpy(), size, size)
        ds.gt_instances = gt
        samples.append(ds)
    return inputs, samples
