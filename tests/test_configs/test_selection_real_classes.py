"""The default layer selection of every shipped config, at its REAL class
count (80 COCO classes, 150 ADE20K, 1000 ImageNet-1k).

Each config's model is built on the CPU as ``tools/test.py`` builds it
(no teacher, no weights). The final prediction layers of every family
stay dense and in floating point; everything else eligible is 2:4 and
quantized. The per-config listing is printed (``pytest -s``).
"""

import os.path as osp

import pytest
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

import gpusq_mm  # noqa: F401
from gpusq_mm.apis import strip_teacher

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CFG_DIR = osp.join(REPO_ROOT, 'configs', 'gpusq')

DINO_PRED = [f'bbox_head.cls_branches.{i}' for i in range(7)] + [
    f'bbox_head.reg_branches.{i}.4' for i in range(7)
]
#: config -> (prediction layers and their output size, a hidden layer of
#: the heads that must be compressed)
CASES = {
    'swin_maskrcnn_coco.py': (
        {
            'rpn_head.rpn_cls': 3,
            'rpn_head.rpn_reg': 12,
            'roi_head.bbox_head.fc_cls': 81,
            'roi_head.bbox_head.fc_reg': 320,
            'roi_head.mask_head.conv_logits': 80,
        },
        'roi_head.bbox_head.shared_fcs.1',
    ),
    'detr_r50_coco.py': (
        {'bbox_head.fc_cls': 81, 'bbox_head.fc_reg': 4},
        'bbox_head.reg_ffn.layers.0.0',
    ),
    'dino_swin_coco.py': (
        {n: 80 if 'cls_branches' in n else 4 for n in DINO_PRED},
        'bbox_head.reg_branches.0.2',
    ),
    'upernet_swin_ade20k.py': (
        {'decode_head.conv_seg': 150, 'auxiliary_head.conv_seg': 150},
        'decode_head.fpn_bottleneck.conv',
    ),
    'swin_tiny_in1k.py': (
        {'head.fc': 1000},
        'backbone.stages.3.blocks.1.ffn.layers.1',
    ),
}


def _student(name: str):
    cfg = strip_teacher(Config.fromfile(osp.join(CFG_DIR, name)))
    model = dict(cfg.model)
    model.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return MODELS.build(model)


def _out(module: nn.Module) -> int:
    return getattr(module, 'out_features', getattr(module, 'out_channels', 0))


@pytest.mark.parametrize('name', sorted(CASES))
def test_prediction_layers_stay_dense_and_fp(name):
    pred, hidden = CASES[name]
    model = _student(name)
    student = model.architecture
    modules = dict(student.named_modules())
    sparse, quant = set(model.sparse_layers), set(model.quant_layers)
    print(f'\n{name}: {len(sparse)} 2:4 layers, {len(quant)} quantized')
    for layer, size in sorted(pred.items()):
        assert _out(modules[layer]) == size, layer  # the real class count
        assert layer not in sparse, f'{layer} is 2:4'
        assert layer not in quant, f'{layer} is quantized'
        print(f'  dense + FP: {layer} (out {size})')
    assert hidden in sparse and hidden in quant, hidden
    # every other Linear / Conv2d layer is quantized, bar the patch
    # embedding and nn.MultiheadAttention's out_proj (read directly)
    for layer, module in modules.items():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and layer not in pred:
            fp = 'patch_embed' in layer or 'out_proj' in layer
            assert (layer in quant) != fp, layer
