"""``type='gpusq_mm.X'`` resolves from every OpenMMLab library's scope."""

import importlib

import pytest
import torch.nn as nn
from mmengine.registry import DefaultScope

import gpusq_mm
from gpusq_mm.registry import SCOPE


@gpusq_mm.MODELS.register_module(force=True)
class _RegistryProbe(nn.Module):
    """A dummy model registered in gpusq_mm's MODELS registry."""

    def __init__(self, width: int = 2):
        super().__init__()
        self.fc = nn.Linear(width, width)


SCOPES = ['mmdet', 'mmseg', 'mmpretrain']


def _registry(scope: str, name: str):
    return getattr(importlib.import_module(f'{scope}.registry'), name)


def test_registries_are_children_of_mmengine():
    for reg in (gpusq_mm.MODELS, gpusq_mm.HOOKS):
        assert reg.scope == SCOPE
        assert reg.parent is not None and reg.parent.scope == 'mmengine'
    # only registries that hold something are declared
    from gpusq_mm import registry

    declared = sorted(registry.__all__)
    assert declared == ['HOOKS', 'MODELS', 'SCOPE'], declared
    assert 'GPUSQ' in gpusq_mm.MODELS.module_dict
    assert {
        'GPUSQHook',
        'SparsityHook',
        'QATHook',
        'StudentCheckpointHook',
    } <= set(gpusq_mm.HOOKS.module_dict)


@pytest.mark.parametrize('scope', SCOPES)
def test_build_gpusq_model_under_default_scope(scope):
    models = _registry(scope, 'MODELS')
    with DefaultScope.overwrite_default_scope(scope):
        model = models.build(dict(type='gpusq_mm._RegistryProbe', width=3))
    assert isinstance(model, _RegistryProbe)
    assert model.fc.in_features == 3


@pytest.mark.parametrize('scope', SCOPES)
def test_real_hook_resolves_under_default_scope(scope):
    from gpusq_mm.engine.hooks.sparsity_hook import SparsityHook

    hooks = _registry(scope, 'HOOKS')
    with DefaultScope.overwrite_default_scope(scope):
        assert hooks.get('gpusq_mm.SparsityHook') is SparsityHook


def test_unknown_type_is_not_resolved():
    models = _registry('mmdet', 'MODELS')
    with DefaultScope.overwrite_default_scope('mmdet'):
        assert models.get('gpusq_mm.NoSuchThing') is None
        with pytest.raises(KeyError):
            models.build(dict(type='gpusq_mm.NoSuchThing'))


def test_upstream_types_still_resolve_with_gpusq_imported():
    models = _registry('mmdet', 'MODELS')
    with DefaultScope.overwrite_default_scope('mmdet'):
        assert models.get('MaskRCNN') is not None
