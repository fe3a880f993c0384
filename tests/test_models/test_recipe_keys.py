"""Every key of sparsity / quantization / distill / teacher is read or
refused, naming the key and the accepted ones (no silent settings)."""

import pytest

import gpusq_mm  # noqa: F401
from gpusq_mm.models import distill_config
from gpusq_mm.models.distill_config import distill_defaults
from gpusq_mm.models.student import resolve_quantization, resolve_sparsity


@pytest.mark.parametrize(
    'distill, match',
    [
        (dict(logits=dict(temperature=2.0)), r'distill\.logits\.temperature'),
        (dict(features=dict(layers=['neck'])), r'distill\.features\.layers'),
        (dict(weighting=dict(modes='inverse')), r'distill\.weighting\.modes'),
        (dict(soft=10.0), r'distill\.soft'),
    ],
)
def test_unknown_distill_keys_are_named(distill, match):
    with pytest.raises(KeyError, match=match) as err:
        distill_defaults(distill)
    section = match.split(r'\.')[1] if match.count(r'\.') > 1 else None
    accepted = distill_config.DISTILL_DEFAULTS
    for key in accepted[section] if section else accepted:
        assert key in str(err.value)


def test_distill_defaults_are_the_table(monkeypatch):
    out = distill_defaults(dict(logits=dict(T=4.0)))
    assert out['logits'] == dict(weight=10.0, T=4.0, parts=None)
    assert out['hard'] == 1.0 and out['features']['weight'] == 5.0
    with pytest.raises(TypeError, match='distill.features must be a dict'):
        distill_defaults(dict(features=5.0))
    # a key added to the table (e.g. by a new KD mode) is accepted at once
    table = dict(distill_config.DISTILL_DEFAULTS)
    table['logits'] = dict(table['logits'], aux_layers=False)
    monkeypatch.setattr(distill_config, 'DISTILL_DEFAULTS', table)
    got = distill_config.distill_defaults(dict(logits=dict(aux_layers=True)))
    assert got['logits']['aux_layers'] is True


def test_sparsity_and_quantization_presets_and_keys():
    assert resolve_sparsity('2:4') == {}
    assert resolve_sparsity(None) is None
    assert resolve_quantization('int4') == dict(w_bits=4)
    assert resolve_quantization('int8') == {}
    with pytest.raises(ValueError, match=r"'int2'.*\['int4', 'int8'\]"):
        resolve_quantization('int2')
    with pytest.raises(ValueError, match="'1:4'"):
        resolve_sparsity('1:4')
    with pytest.raises(KeyError, match=r"\['skip'\].*exclude"):
        resolve_sparsity(dict(skip=['neck']))
    from gpusq_mm.quantization import QuantConfig

    with pytest.raises(KeyError, match=r"\['skip'\].*exclude"):
        QuantConfig.build(dict(skip=['neck']))
    assert QuantConfig.build('int4').w_bits == 4


def test_teacher_keys_are_checked():
    from gpusq_mm.models.teacher import teacher_settings

    with pytest.raises(KeyError, match=r"\['ckpt'\].*checkpoint, config"):
        teacher_settings(dict(ckpt='x.pth'))
    assert teacher_settings(dict(checkpoint='x.pth')) == dict(
        config=None, checkpoint='x.pth', strict=True
    )


def test_filter_fn_and_defaults_shared_by_sparsity_and_quantization():
    import torch.nn as nn

    from gpusq_mm.quantization import select_quant_layers
    from gpusq_mm.sparsity import select_layers

    net = nn.Module()
    net.body = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 32))
    net.bbox_head = nn.Module()
    net.bbox_head.cls_branches = nn.ModuleList([nn.Linear(32, 80)])
    net.bbox_head.reg_branches = nn.ModuleList(
        [nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))]
    )

    def keep(module, name):
        return name != 'body.1'

    sparse = [
        d.name for d in select_layers(net, dict(filter_fn=keep)) if d.eligible
    ]
    quant = select_quant_layers(net, dict(filter_fn=keep))
    # the hidden layer of the box MLP is compressed, its last layer and
    # the class branch are not; filter_fn drops body.1 in both
    assert sparse == quant == ['body.0', 'bbox_head.reg_branches.0.0']
