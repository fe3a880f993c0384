"""ONNX export of DETR-family detectors up to the transformer encoder.

Tiny DETR and DINO students (``test_models.conftest.tiny_detr``: ResNet-18
with 16 base channels, one encoder layer) are compressed to stage 2 (2:4 +
INT8) without a Runner, saved as ``student_final.pth`` would be, exported
with ``--part backbone+neck+encoder`` and run in onnxruntime.
"""

import os.path as osp

import numpy as np
import onnx
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from test_models.conftest import tiny_detr

from gpusq_mm.deploy import PartModule, export_and_verify
from gpusq_mm.deploy.prepare import weight_integers
from gpusq_mm.deploy.qdq import integer_initializers

from .helpers import CONFIGS, SHAPE, make_student
from .test_export import _quiet
from .test_report_trt import _tool

PART = 'backbone+neck+encoder'


def _detr_student(tmp_path, name: str, size: int):
    """A GPUSQ config of a tiny ``name`` model and its stage-2 student."""
    import gpusq_mm  # noqa: F401
    from gpusq_mm.models.student import student_checkpoint
    from gpusq_mm.quantization import calibrate, enable_fake_quant
    from gpusq_mm.registry import MODELS
    from gpusq_mm.sparsity import apply_masks, compute_masks

    config = str(tmp_path / f'{name}_gpusq.py')
    Config(
        dict(
            default_scope='mmdet',
            model=dict(
                type='gpusq_mm.GPUSQ',
                architecture=tiny_detr(name),
                teacher=None,
            ),
        )
    ).dump(config)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        gpusq = MODELS.build(Config.fromfile(config).model)
    model = gpusq.architecture.eval()
    compute_masks(model)
    apply_masks(model)
    part = PartModule(model, PART)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(1, 3, size, size, generator=gen) for _ in (0, 1)]
    calibrate(model, lambda batch: part(batch), batches)
    enable_fake_quant(model)
    ckpt = str(tmp_path / f'{name}.pth')
    student_checkpoint(model, ckpt)
    return model, config, ckpt


def _is_2to4(ints: np.ndarray) -> bool:
    # MatMul weights are [in, out]: groups of 4 along the input axis
    return bool(((ints.T.reshape(-1, 4) != 0).sum(1) <= 2).all())


@pytest.mark.parametrize(
    'name, size, levels, n_encoder',
    [
        # DETR: the last (1/32) level only; the FFN's two Linears are
        # quantized (nn.MultiheadAttention reads its weights directly)
        ('detr', 128, [[4, 4]], 2),
        # DINO: 4 levels down to 1 x 1 (its reference point comes from a
        # one-step linspace, which the exporter alone would make NaN);
        # deformable attention's 4 Linears + the FFN's 2
        ('dino', 64, [[8, 8], [4, 4], [2, 2], [1, 1]], 6),
    ],
)
def test_detr_family_encoder_exports_int8_2to4(
    tmp_path, capsys, name, size, levels, n_encoder
):
    model, config, ckpt = _detr_student(tmp_path, name, size)
    out = str(tmp_path / f'{name}.onnx')
    res = export_and_verify(
        config, ckpt, out, part=PART, shape=(1, 3, size, size), log=_quiet
    )
    assert res['mode'] == 'int8' and res['passed'], res['failure']
    assert res['encoder_levels'] == levels
    (row,) = res['parity']  # one output: the encoder memory
    assert row['cosine'] >= 0.999, row
    assert row['max_abs'] <= 0.05 * row['ref_max_abs'], row
    graph = onnx.load(out)
    onnx.checker.check_model(graph, full_check=True)
    (output,) = graph.graph.output
    dims = [d.dim_value for d in output.type.tensor_type.shape.dim]
    width = model.encoder.embed_dims
    assert dims == [1, sum(h * w for h, w in levels), width]
    # every quantized layer of backbone, neck and encoder has int8
    # weights (bit-identical to the student's integers), and only those
    wanted = {
        n
        for n, m in model.named_modules()
        if getattr(m, '_weight_quantizer', None) is not None
        and m._weight_quantizer.enabled
        and n.startswith(('backbone.', 'neck.', 'encoder.'))
    }
    assert set(res['quantized_layers']) == wanted
    encoder = sorted(n for n in wanted if n.startswith('encoder.'))
    assert len(encoder) == n_encoder
    assert all(res['quantized_layers'][n] == 'MatMul' for n in encoder)
    ints = integer_initializers(graph, bits=8)
    assert len(ints) == len(wanted)
    floats = {
        i.name
        for i in graph.graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT
    }
    assert not {f'model.{n}.weight' for n in wanted} & floats
    for layer in encoder:
        module = model.get_submodule(layer)
        assert bool(module.sparsity_mask_computed), layer
        values = ints[f'model.{layer}.weight_quantized']
        expect = weight_integers(module)[0].t().numpy()
        np.testing.assert_array_equal(values, expect.astype(np.int8))
        assert _is_2to4(values), layer
        assert (values == 0).mean() >= 0.5, layer
    ops = res['ops']
    # one per layer input (the exporter merges equal ones: DINO's
    # sampling_offsets and attention_weights quantize the same query)
    assert 0 < ops['QuantizeLinear'] <= len(wanted)
    if name == 'dino':  # mmcv's PyTorch deformable attention
        assert ops['GridSample'] == len(levels)
        with pytest.raises(ValueError, match='GridSample, which needs opset'):
            export_and_verify(
                config,
                ckpt,
                out,
                part=PART,
                shape=(1, 3, size, size),
                opset=15,
                log=_quiet,
            )
    # the tool takes the part, writes the file and passes
    tool_res = _tool('deploy', 'export_onnx.py').main(
        [
            config,
            ckpt,
            '--out',
            out,
            '--part',
            PART,
            '--shape',
            f'1x3x{size}x{size}',
        ]
    )
    assert tool_res['passed'] and tool_res['encoder_levels'] == levels
    text = capsys.readouterr().out
    assert f'encoder memory of levels (h, w) {levels}' in text, text


def test_encoder_part_of_a_non_detr_model_is_refused(tmp_path, capsys):
    ckpt = str(tmp_path / 'det.pth')
    make_student('det', ckpt, stage=0)
    out = str(tmp_path / 'd.onnx')
    msg = (
        r'needs an mmdet DETR-family .* got MaskRCNN \(detector\); it '
        r'supports --part backbone, backbone\+neck$'
    )
    with pytest.raises(ValueError, match=msg):
        export_and_verify(
            CONFIGS['det'], ckpt, out, part=PART, shape=SHAPE, log=_quiet
        )
    with pytest.raises(SystemExit) as exc:
        _tool('deploy', 'export_onnx.py').main(
            [CONFIGS['det'], ckpt, '--out', out, '--part', PART]
        )
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert 'got MaskRCNN' in err and 'backbone+neck' in err
    assert not osp.exists(out)
