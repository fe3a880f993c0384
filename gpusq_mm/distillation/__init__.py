"""Distillation cores of GPUSQ (pure torch; never imports mmengine).

Feature recorders (forward hooks by module name), the KD losses of
GPUSQ-ViT (Yu et al., CVPR 2023, arXiv 2305.10727), channel connectors,
DETR query matching, and the per-layer weight factors that turn stage-1
feature-KD losses into QAT weights.
"""

from .connectors import FeatureConnector, align_spatial
from .losses import feature_loss, kl_div_sigmoid, kl_div_softmax, masked_mean
from .matching import box_cxcywh_to_xyxy, generalized_box_iou, match_queries
from .recorder import FeatureRecorder, check_module_names, flatten_output
from .weighting import WEIGHT_MODES, LossStatistics, compute_weight_factors

__all__ = [
    'FeatureConnector',
    'FeatureRecorder',
    'LossStatistics',
    'WEIGHT_MODES',
    'align_spatial',
    'box_cxcywh_to_xyxy',
    'check_module_names',
    'compute_weight_factors',
    'feature_loss',
    'flatten_output',
    'generalized_box_iou',
    'kl_div_sigmoid',
    'kl_div_softmax',
    'masked_mean',
    'match_queries',
]
