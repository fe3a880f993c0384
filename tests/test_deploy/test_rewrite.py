"""Export rewrites keep the values (Swin PatchMerging without nn.Unfold,
no zero Pad nodes); the bench's per-op profile."""

import collections

import onnx
import pytest
import torch
import torch.nn.functional as F

from gpusq_mm.deploy.rewrite import rewrite_patch_merging, skip_zero_pads


def _merging_classes():
    from mmcv.cnn.bricks.transformer import PatchMerging as McvMerging
    from mmdet.models.layers.transformer.utils import (
        PatchMerging as DetMerging,
    )
    from mmpretrain.models.utils.embed import PatchMerging as PretrainMerging
    from mmseg.models.utils.embed import PatchMerging as SegMerging

    return {
        'mmcv': McvMerging,
        'mmdet': DetMerging,
        'mmseg': SegMerging,
        'mmpretrain': PretrainMerging,
    }


@pytest.mark.parametrize('lib', ['mmcv', 'mmdet', 'mmseg', 'mmpretrain'])
@pytest.mark.parametrize('padding', ['corner', 'same'])
@pytest.mark.parametrize('hw', [(8, 12), (7, 9)])
def test_patch_merging_rewrite_gives_the_same_values(lib, padding, hw):
    torch.manual_seed(0)
    cls = _merging_classes()[lib]
    kwargs = dict(in_channels=6, out_channels=10, padding=padding)
    merging = cls(**kwargs).eval()
    torch.nn.init.normal_(merging.norm.weight)
    torch.nn.init.normal_(merging.norm.bias)
    x = torch.randn(2, hw[0] * hw[1], 6)
    want, want_hw = merging(x, hw)
    assert rewrite_patch_merging(merging) == ['']
    got, got_hw = merging(x, hw)
    assert got_hw == want_hw
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_patch_merging_rewrite_post_norm():
    """mmpretrain's Swin-v2 variant normalises after the reduction."""
    from mmpretrain.models.utils.embed import PatchMerging

    torch.manual_seed(0)
    merging = PatchMerging(6, 10, use_post_norm=True).eval()
    torch.nn.init.normal_(merging.norm.weight)
    x = torch.randn(1, 36, 6)
    want, _ = merging(x, (6, 6))
    rewrite_patch_merging(merging)
    torch.testing.assert_close(merging(x, (6, 6))[0], want, rtol=0, atol=1e-6)


def test_patch_merging_other_shapes_are_left_alone():
    from mmcv.cnn.bricks.transformer import PatchMerging

    overlapping = PatchMerging(4, 8, kernel_size=3, stride=2, padding=1)
    assert rewrite_patch_merging(overlapping) == []


def test_skip_zero_pads_only_skips_zero_pads():
    x = torch.randn(1, 2, 3)
    with skip_zero_pads():
        assert F.pad(x, (0, 0, 0, 0)) is x
        assert F.pad(x, (0, 1)).shape == (1, 2, 4)
    assert F.pad(x, (0, 0)) is not x  # restored on exit


def test_swin_export_has_no_unfold_gathers_or_zero_pads(tmp_path):
    """The tiny demo classifier (windows of 7 on maps of 14, 7, 4 and 2):
    the PatchMerging samplers and the zero window paddings are gone from
    the graph, the real paddings stay, the QDQ export matches PyTorch."""
    from gpusq_mm.deploy import (
        export_onnx,
        int8_kernels_saturate,
        make_input,
        parity,
        run_onnx,
    )
    from gpusq_mm.deploy.api import reference_outputs

    from .helpers import make_student

    model = make_student('cls', str(tmp_path / 'student.pth'))
    x = make_input(model, (1, 3, 56, 56))
    nonzero = []  # the paddings PyTorch really applies
    pad = F.pad

    def counting_pad(t, pads, *args, **kwargs):
        if any(pads):
            nonzero.append(tuple(pads))
        return pad(t, pads, *args, **kwargs)

    F.pad = counting_pad
    try:
        want = reference_outputs(model, x, 'full')
    finally:
        F.pad = pad
    assert nonzero  # the 4x4 and 2x2 maps are padded to a window
    res = export_onnx(model, x, str(tmp_path / 'm.onnx'), 'full', log=print)
    graph = onnx.load(res['path'])
    ops = collections.Counter(n.op_type for n in graph.graph.node)
    assert ops['Pad'] == len(nonzero)
    assert not [n.name for n in graph.graph.node if 'sampler' in n.name]
    # the rewritten graph as written; onnxruntime's fused kernels too
    # where they do not saturate (x86 AVX2 without VNNI)
    runs = [False] if int8_kernels_saturate() else [False, True]
    for optimize in runs:
        outs = run_onnx(res['path'], x.numpy(), optimize=optimize)
        for r in parity(want, outs):
            assert r['cosine'] > 0.9999, (optimize, r)


def test_op_profile_counts_kernels_per_op_type(tmp_path):
    """The bench's per-op profile: every node type of the optimized graph,
    with its node count, the warm-up run left out."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from gpusq_mm.deploy.verify import op_profile

    w = numpy_helper.from_array(np.ones((8, 8), np.float32), 'w')
    graph = helper.make_graph(
        [
            helper.make_node('MatMul', ['x', 'w'], ['a']),
            helper.make_node('Relu', ['a'], ['b']),
            helper.make_node('MatMul', ['b', 'w'], ['c']),
            helper.make_node('Sigmoid', ['c'], ['y']),
        ],
        'g',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [4, 8])],
        [w],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid('', 17)]
    )
    path = str(tmp_path / 'm.onnx')
    onnx.save(model, path)
    prof = op_profile(path, np.ones((4, 8), np.float32), threads=1, runs=3)
    # MatMul + Relu may run fused: at least 3 nodes ran
    assert sum(n for _, n in prof.values()) >= 3
    assert 'Sigmoid' in prof and prof['Sigmoid'][1] == 1
    assert all(ms >= 0 for ms, _ in prof.values())
    assert list(prof.values()) == sorted(prof.values(), key=lambda v: -v[0])


def test_timing_sessions_do_not_spin_wait(tmp_path, monkeypatch):
    """Sessions timed side by side in one process block between runs:
    an idle session's spinning threads would take the cores from the one
    being timed. A deployment session keeps onnxruntime's default."""
    import numpy as np
    from onnx import TensorProto, helper

    from gpusq_mm.deploy import verify

    graph = helper.make_graph(
        [helper.make_node('Relu', ['x'], ['y'])],
        'g',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [2, 4])],
    )
    path = str(tmp_path / 'relu.onnx')
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]),
        path,
    )
    key = 'session.intra_op.allow_spinning'

    def spin_of(sess):
        try:
            return sess.get_session_options().get_session_config_entry(key)
        except RuntimeError:  # not set: onnxruntime's default (spin)
            return None

    assert spin_of(verify.ort_session(path, 2)) in (None, '1')
    assert spin_of(verify.ort_session(path, 2, spin=False)) == '0'
    made = []
    real = verify.ort_session

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(verify, 'ort_session', recording)
    times = verify.ort_latencies_ms(
        [path, path], np.ones((2, 4), np.float32), threads=2, runs=2
    )
    assert len(times) == 2 and len(made) == 2
    assert all(spin_of(s) == '0' for s in made)
