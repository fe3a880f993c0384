"""Tests of mask buffers, computation and fast enforcement."""

import torch
import torch.nn as nn

from gpusq_mm.sparsity import (
    FLAG_NAME,
    MASK_NAME,
    MaskUpkeep,
    attach_masks,
    compute_masks,
    is_2to4,
    mask_summary,
    masked_layers,
)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 8)
    )


def test_attach_compute_apply():
    model = _model()
    names = attach_masks(model, cfg=dict(exclude=[r'^3$']))
    assert names == ['0']
    keys = model.state_dict().keys()
    assert f'0.{MASK_NAME}' in keys and f'0.{FLAG_NAME}' in keys
    assert model[0].sparsity_mask.all() and not model[0].sparsity_mask_computed
    assert compute_masks(model) == ['0']
    assert is_2to4(model[0].weight)
    assert bool(model[0].sparsity_mask_computed)
    # computed masks are not recomputed unless forced
    model[0].weight.data.normal_()
    assert compute_masks(model) == []
    assert compute_masks(model, force=True) == ['0']


def test_placeholders_make_checkpoints_load_into_fresh_models():
    model = _model()
    attach_masks(model, ['0', '3'])
    compute_masks(model)
    fresh = _model()
    attach_masks(fresh, ['0', '3'])
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh[0].sparsity_mask, model[0].sparsity_mask)
    assert mask_summary(fresh)['computed'] == 2


def test_upkeep_reapplies_and_tracks_reloads():
    model = _model()
    attach_masks(model, ['0', '3'])
    compute_masks(model)
    upkeep = MaskUpkeep(model)
    assert upkeep.num_layers == 2
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    upkeep.apply()
    assert all(is_2to4(m.weight) for m in masked_layers(model).values())
    # a load_state_dict that changes the masks invalidates the cache
    other = _model()
    attach_masks(other, ['0', '3'])
    with torch.no_grad():
        other[0].weight.normal_()
    compute_masks(other)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    upkeep.apply()
    assert torch.equal(model[0].weight != 0, other[0].sparsity_mask)


def test_gradient_masking():
    model = _model()
    attach_masks(model, ['0'])
    compute_masks(model)
    upkeep = MaskUpkeep(model, mask_grad=True)
    model(torch.randn(2, 16, 3, 3)).sum().backward()
    grad = model[0].weight.grad
    assert not grad[~model[0].sparsity_mask].any()
    upkeep.remove_grad_hooks()
