"""Small generated datasets in the standard on-disk formats.

Pure numpy / OpenCV / json: importable without mmdet, mmseg or mmpretrain.
The files are read by the upstream datasets unchanged (mmdet
``CocoDataset``, mmseg ``ADE20KDataset``, mmpretrain ``CustomDataset``).
"""

from .ade_textures import TEXTURE_CLASSES, generate_ade
from .cls_folders import generate_cls
from .coco_shapes import generate_coco
from .generate import generate_datasets, generate_task
from .shapes import SHAPE_CLASSES

__all__ = [
    'SHAPE_CLASSES',
    'TEXTURE_CLASSES',
    'generate_ade',
    'generate_cls',
    'generate_coco',
    'generate_datasets',
    'generate_task',
]
