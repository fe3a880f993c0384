"""Channel permutations keep the network function and raise kept magnitude."""

import pytest
import torch
import torch.nn as nn

from gpusq_mm.sparsity import (
    attach_masks,
    compute_masks,
    find_permutable_pairs,
    is_2to4,
    permute_model,
    search_permutation,
)
from gpusq_mm.sparsity.mask import kept_magnitude_ratio


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(64, 32)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = _Mlp()
        self.conv1 = nn.Conv2d(32, 32, 1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 16, 3, padding=1)

    def forward(self, x):
        x = self.mlp(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv2(torch.relu(self.bn1(self.conv1(x))))


def test_search_raises_kept_magnitude():
    weight = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    perm = search_permutation(weight)
    assert sorted(perm.tolist()) == list(range(128))
    assert kept_magnitude_ratio(weight[:, perm]) > kept_magnitude_ratio(weight)


def test_permutation_keeps_function_toy():
    torch.manual_seed(0)
    model = _Block()
    with torch.no_grad():  # non-trivial BN statistics
        model.bn1.running_mean.normal_()
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.normal_()
    model.eval()
    x = torch.randn(2, 32, 5, 5)
    ref = model(x)
    assert [
        (p.producer, p.consumer) for p in find_permutable_pairs(model)
    ] == [('mlp.fc1', 'mlp.fc2')]
    pairs = [('mlp.fc1', 'mlp.fc2'), ('conv1', 'conv2', ['bn1'])]
    report = permute_model(model, pairs)
    assert set(report['layers']) == {'mlp.fc2', 'conv2'}
    assert report['after'] > report['before']
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_permutation_refuses_wrong_pairs():
    model = _Block()
    report = permute_model(model, [('mlp.fc1', 'conv2')])
    assert report['layers'] == {} and len(report['skipped']) == 1
    attach_masks(model, ['mlp.fc2'])
    compute_masks(model)
    report = permute_model(model)
    assert 'already computed' in next(iter(report['skipped'].values()))


def test_permutation_keeps_swin_function():
    mmpretrain = pytest.importorskip('mmpretrain')
    from mmpretrain.models import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(
        arch=dict(embed_dims=32, depths=[2, 2], num_heads=[2, 4]),
        img_size=64,
        window_size=4,
        out_indices=(1,),
    )
    model.eval()  # this train() override returns None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[0]
    pairs = find_permutable_pairs(model)
    assert len(pairs) == 4  # one FFN per block
    assert all(p.consumer.endswith('ffn.layers.1') for p in pairs)
    names = attach_masks(model)
    report = permute_model(model, consumers=names)
    assert report['after'] > report['before']
    with torch.no_grad():
        out = model(x)[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    compute_masks(model)
    assert all(is_2to4(dict(model.named_modules())[n].weight) for n in names)
    del mmpretrain
