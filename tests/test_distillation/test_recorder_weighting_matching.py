import pytest
import torch
import torch.nn as nn

from gpusq_mm.distillation import (
    FeatureConnector,
    FeatureRecorder,
    LossStatistics,
    compute_weight_factors,
    generalized_box_iou,
    match_queries,
)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 1)
        self.neck = nn.Linear(4, 4)

    def forward(self, x):
        y = self.backbone(x)
        return self.neck(y.mean((2, 3)))


def test_recorder_records_only_inside_context():
    net = _Net()
    rec = FeatureRecorder(net, ['backbone', 'neck'])
    net(torch.zeros(1, 3, 2, 2))
    assert rec.features == {}
    with rec:
        net(torch.zeros(1, 3, 2, 2))
    assert list(rec.features) == ['backbone', 'neck']
    assert rec.args('backbone')[0].shape == (1, 3, 2, 2)
    net(torch.ones(1, 3, 2, 2))  # outside: not overwritten
    expected = net.backbone(torch.zeros(1, 3, 2, 2))
    assert torch.allclose(rec.raw('backbone'), expected)
    rec.detach()
    assert not net.backbone._forward_hooks


def test_recorder_tuple_outputs_and_typos():
    class Tup(nn.Module):
        def forward(self, x):
            return (x, x * 2)

    net = nn.Sequential()
    net.add_module('stages', Tup())
    rec = FeatureRecorder(net, ['stages'])
    with rec:
        net(torch.ones(2))
    assert list(rec.features) == ['stages.0', 'stages.1']
    with pytest.raises(KeyError, match="'stagse'.*stages"):
        FeatureRecorder(net, ['stagse'])


def test_weight_factors_modes():
    losses = torch.tensor([1.0, 2.0, 4.0])
    inv = compute_weight_factors(losses, 'inverse')
    assert torch.allclose(inv.sum(), torch.tensor(1.0))
    assert inv[0] > inv[1] > inv[2]  # larger loss, smaller factor
    assert torch.allclose(inv, torch.tensor([4.0, 2.0, 1.0]) / 7)
    prop = compute_weight_factors(losses, 'proportional')
    assert torch.allclose(prop, losses / 7)
    uni = compute_weight_factors(losses, 'uniform')
    assert torch.allclose(uni, torch.full((3,), 1 / 3))
    with pytest.raises(AssertionError, match='bogus'):
        compute_weight_factors(losses, 'bogus')


def test_loss_statistics_running_mean_freeze_and_reload():
    stats = LossStatistics()
    stats.update(['a', 'b'], [torch.tensor(1.0), torch.tensor(4.0)])
    stats.update(['a', 'b'], [torch.tensor(3.0), torch.tensor(8.0)])
    assert torch.allclose(stats.mean, torch.tensor([2.0, 6.0]).double())
    factors = stats.freeze('inverse')
    assert torch.allclose(factors, torch.tensor([0.75, 0.25]))
    fresh = LossStatistics()
    fresh.load_state_dict(stats.state_dict())
    assert bool(fresh.frozen)
    assert torch.equal(fresh.factors, stats.factors)
    assert torch.equal(fresh.mean, stats.mean)


def test_connector_kinds():
    conv = FeatureConnector(4, 8, 'conv')
    assert conv(torch.zeros(1, 4, 3, 3)).shape == (1, 8, 3, 3)
    lin = FeatureConnector(4, 8, 'linear')
    assert lin(torch.zeros(2, 5, 4)).shape == (2, 5, 8)


def test_giou_and_matching_recovers_permutation():
    boxes = torch.tensor([[0.0, 0, 1, 1], [0, 0, 2, 2]])
    giou = generalized_box_iou(boxes, boxes)
    assert torch.allclose(giou.diag(), torch.ones(2))
    torch.manual_seed(0)
    t_boxes = torch.rand(6, 4) * 0.5 + 0.25
    t_probs = torch.softmax(torch.randn(6, 3) * 3, -1)
    perm = torch.randperm(6)
    s_idx, t_idx = match_queries(
        t_probs[perm], t_boxes[perm], t_probs, t_boxes
    )
    assert torch.equal(perm[s_idx], t_idx)
    # fewer teacher queries: min(Q_s, Q_t) pairs
    s_idx, t_idx = match_queries(t_probs, t_boxes, t_probs[:4], t_boxes[:4])
    assert len(s_idx) == len(t_idx) == 4
