"""The compression report (hand-counted toy) and the TensorRT no-GPU exit."""

import importlib.util
import json
import os.path as osp

import pytest
import torch
import torch.nn as nn

from gpusq_mm.deploy.report import layer_rows, summarize
from gpusq_mm.quantization import calibrate, enable_fake_quant, quantize_model
from gpusq_mm.sparsity import apply_masks, attach_masks, compute_masks

from .helpers import CONFIGS, make_student

TOOLS = osp.join(
    osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools'
)


def _tool(*parts):
    path = osp.join(TOOLS, *parts)
    spec = importlib.util.spec_from_file_location('_t_' + parts[-1][:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 4, stride=4)  # C_in 3: stays dense
        self.fc1 = nn.Linear(16, 32)  # 2:4 + INT8
        self.fc2 = nn.Linear(32, 16)  # 2:4, FP32

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)
        return (self.fc2(self.fc1(t)),)


class _Toy(nn.Module):
    """Duck-typed classifier: backbone + head, ``forward(x, mode=)``."""

    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.head = nn.Linear(16, 4)  # dense FP32

    def forward(self, x, data_samples=None, mode='tensor'):
        return self.head(self.backbone(x)[0].mean(1))


def test_report_counts_equal_a_hand_count():
    torch.manual_seed(0)
    model = _Toy().eval()
    attach_masks(model, ['backbone.fc1', 'backbone.fc2'])
    compute_masks(model)
    apply_masks(model)
    quantize_model(model, dict(include=[r'fc1$']))
    calibrate(model, model, [torch.randn(1, 3, 16, 16)])
    enable_fake_quant(model)
    rep = summarize(model, shape=(1, 3, 16, 16))
    t = rep['totals']
    # params: conv 3*16*16 + 16, fc1 16*32 + 32, fc2 32*16 + 16, head 68
    assert t['params'] == 784 + 544 + 528 + 68
    assert t['linear_conv_layers'] == 4
    assert t['masked_layers'] == t['sparse_2to4_layers'] == 2
    assert t['quantized_layers'] == 1
    assert t['sparse_2to4_params'] == 512 + 512
    rows = {r['name']: r for r in rep['layers']}
    assert rows['backbone.fc1']['w_bits'] == 8
    assert rows['backbone.fc1']['a_bits'] == 8
    assert rows['backbone.fc2']['w_bits'] == 32
    # computed deploy bytes: 2:4 INT8 = 512 * (0.5 + 0.125); 2:4 FP32 =
    # 512 * (2 + 0.125); dense FP32 = 4 bytes per value; biases FP32
    assert rows['backbone.fc1']['deploy_bytes'] == 320
    assert rows['backbone.fc2']['deploy_bytes'] == 1088
    assert rows['backbone.conv']['deploy_bytes'] == 768 * 4
    assert rows['head']['deploy_bytes'] == 64 * 4
    biases = (16 + 32 + 16 + 4) * 4
    assert (
        rep['computed_size']['deploy_bytes']
        == 320 + 1088 + 3072 + 256 + biases
    )
    # FLOPs (one per multiply-add): conv 16 positions x 16 out x 48,
    # fc1 16 x 16 x 32, fc2 16 x 32 x 16, head 16 x 4
    assert t['flops'] == 12288 + 8192 + 8192 + 64
    assert rows['backbone.fc1']['kept_magnitude'] == pytest.approx(1.0)
    assert rows['head']['kept_magnitude'] < 1.0
    assert layer_rows(model)[0]['name'] == 'backbone.conv'


@pytest.mark.slow
def test_report_tool_on_a_demo_student(tmp_path):
    # a full training checkpoint's layout: student under architecture.,
    # stage, feature-KD statistics and the QAT teacher snapshot
    model = make_student('cls', str(tmp_path / 'student_final.pth'), 2)
    state = {f'architecture.{k}': v for k, v in model.state_dict().items()}
    state.update(
        {
            'gpusq_stage': torch.tensor(2),
            'feature_kd.stats.mean': torch.tensor(
                [0.5, 0.25], dtype=torch.float64
            ),
            'feature_kd.stats.count': torch.tensor([10, 10]),
            'feature_kd.stats.factors': torch.tensor([0.4, 1.6]),
            'feature_kd.stats.frozen': torch.tensor(True),
            'qat_teacher.head.fc.weight': torch.zeros(6, 256),
        }
    )
    ckpt = str(tmp_path / 'iter_8.pth')
    torch.save({'state_dict': state, 'meta': {}}, ckpt)
    export = _tool('deploy', 'export_onnx.py')
    onnx_file = str(tmp_path / 'm.onnx')
    export.main(
        [CONFIGS['cls'], ckpt, '--out', onnx_file, '--shape', '1x3x64x64']
    )
    report = _tool('analysis', 'report.py')
    out = str(tmp_path / 'report')
    rep = report.main(
        [
            CONFIGS['cls'],
            ckpt,
            '--onnx',
            onnx_file,
            '--out',
            out,
            '--shape',
            '1x3x64x64',
        ]
    )
    for ext in ('md', 'json', 'png'):
        assert osp.getsize(osp.join(out, f'report.{ext}')) > 0
    with open(osp.join(out, 'report.json')) as f:
        assert json.load(f)['totals'] == rep['totals']
    masked = sum(
        bool(m._buffers['sparsity_mask_computed'])
        for m in model.modules()
        if 'sparsity_mask_computed' in m._buffers
    )
    assert rep['totals']['masked_layers'] == masked > 0
    assert rep['totals']['sparse_2to4_layers'] >= masked
    measured = rep['measured_files'][0]
    assert measured['file_bytes'] == osp.getsize(onnx_file)
    assert (
        measured['integer_initializers'] == rep['totals']['quantized_layers']
    )
    assert [(r['stage1_loss'], r['factor']) for r in rep['feature_kd']] == [
        (0.5, pytest.approx(0.4)),
        (0.25, pytest.approx(1.6)),
    ]
    text = open(osp.join(out, 'report.md')).read()
    assert '**computed**' in text and '**measured**' in text


def test_build_trt_without_gpu_exits_with_one_line(tmp_path, capsys):
    from gpusq_mm.deploy.trt import tensorrt_unavailable

    reason = tensorrt_unavailable()
    if reason is None:
        pytest.skip('tensorrt and a sparse-capable GPU are present')
    path = tmp_path / 'm.onnx'
    path.write_bytes(b'not used')
    tool = _tool('deploy', 'build_trt.py')
    with pytest.raises(SystemExit) as exc:
        tool.main([str(path)])
    assert exc.value.code == 2
    out = capsys.readouterr()
    lines = (out.out + out.err).strip().splitlines()
    assert lines == [
        f'build_trt: cannot build a TensorRT engine here: {reason}'
    ]
    with pytest.raises(SystemExit) as exc:
        tool.main([str(tmp_path / 'missing.onnx')])
    assert exc.value.code == 1
