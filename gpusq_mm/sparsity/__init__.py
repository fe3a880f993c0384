"""2:4 structured sparsity (pure torch; never imports mmengine).

Masks follow the NVIDIA ASP ``m4n2_1d`` convention used by sparse Tensor
Cores and GPUSQ-ViT (Yu et al., CVPR 2023, arXiv 2305.10727): 2 of every 4
consecutive weights along the input-channel axis are kept.
"""

from .eligibility import (
    DEFAULT_EXCLUDE,
    LayerDecision,
    SparsityConfig,
    format_selection,
    layer_kind,
    select_layers,
)
from .mask import compute_2to4_mask, is_2to4, kept_magnitude_ratio
from .masking import (
    FLAG_NAME,
    MASK_NAME,
    MaskUpkeep,
    apply_masks,
    attach_masks,
    compute_masks,
    has_masks,
    mask_summary,
    masked_layers,
)
from .permutation import (
    PermutationPair,
    find_permutable_pairs,
    permute_channels,
    permute_model,
    search_permutation,
)

__all__ = [
    'DEFAULT_EXCLUDE',
    'FLAG_NAME',
    'LayerDecision',
    'MASK_NAME',
    'MaskUpkeep',
    'PermutationPair',
    'SparsityConfig',
    'apply_masks',
    'attach_masks',
    'compute_2to4_mask',
    'compute_masks',
    'find_permutable_pairs',
    'format_selection',
    'has_masks',
    'is_2to4',
    'kept_magnitude_ratio',
    'layer_kind',
    'mask_summary',
    'masked_layers',
    'permute_channels',
    'permute_model',
    'search_permutation',
    'select_layers',
]
