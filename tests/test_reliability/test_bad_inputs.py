"""The bad-input catalogue: each input fails with an error that names the
file / key / layer and what is accepted, and nothing on disk changes."""

import hashlib
import os
import os.path as osp
import sys
import types

import pytest
import torch
import torch.nn as nn
from test_engine.toy import ToyModel, toy_runner

import gpusq_mm  # noqa: F401
from gpusq_mm.engine.hooks.calibration_data import (
    calibration_loader,
    check_calibration_set,
)
from gpusq_mm.models.student import apply_compression
from gpusq_mm.models.teacher import build_teacher
from gpusq_mm.sparsity import attach_masks

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CLS_DENSE = osp.join(
    REPO_ROOT, 'configs', 'gpusq', 'demo', 'swin_cls_tiny_dense.py'
)


def _digest(path) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _tree(root) -> dict:
    return {
        osp.relpath(osp.join(d, n), root): _digest(osp.join(d, n))
        for d, _, names in os.walk(root)
        for n in names
    }


# -- teacher checkpoints ----------------------------------------------------
def test_missing_teacher_checkpoint(tmp_path):
    path = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match='teacher checkpoint not'):
        build_teacher(CLS_DENSE, path)


def test_garbled_teacher_checkpoint(tmp_path):
    path = str(tmp_path / 'dense.pth')
    with open(path, 'wb') as f:
        f.write(b'PK\x03\x04 this is not a checkpoint' * 50)
    before = _digest(path)
    with pytest.raises(ValueError) as info:
        build_teacher(CLS_DENSE, path)
    text = str(info.value)
    assert text.startswith(f'model.teacher.checkpoint: checkpoint {path!r}')
    assert 'not a readable PyTorch checkpoint' in text
    assert _digest(path) == before


def test_teacher_checkpoint_of_another_architecture(tmp_path):
    path = str(tmp_path / 'other.pth')
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 6))
    torch.save({'state_dict': other.state_dict()}, path)
    with pytest.raises(ValueError) as info:
        build_teacher(CLS_DENSE, path)
    text = str(info.value)
    assert path in text and 'does not match the teacher config' in text
    assert 'ImageClassifier' in text and 'missing keys' in text


# -- layer selection ----------------------------------------------------------
class _WithDepthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(16, 16, 3, groups=16)
        self.up = nn.ConvTranspose2d(16, 16, 2)
        self.fc = nn.Linear(30, 8)
        self.norm = nn.LayerNorm(16)


@pytest.mark.parametrize(
    'name,why',
    [
        ('dw', 'grouped / depth-wise'),
        ('up', 'transposed'),
        ('fc', 'not a multiple of 4'),
        ('norm', 'no 2-d / 4-d weight'),
    ],
)
def test_2to4_forced_on_ineligible_layer(name, why):
    with pytest.raises(ValueError) as info:
        apply_compression(_WithDepthwise(), dict(names=[name]), None)
    text = str(info.value)
    assert f"2:4 forced on '{name}'" in text and why in text
    assert 'accepted: Linear and non-grouped' in text


def test_every_layer_excluded_in_model_config():
    with pytest.raises(ValueError) as info:
        apply_compression(ToyModel(), dict(exclude=['.*']), None)
    text = str(info.value)
    assert 'selects no layer for 2:4, nothing to prune' in text
    assert 'backbone.0' in text  # the listing says why each is skipped


def test_every_layer_excluded_in_hook(tmp_path):
    runner = toy_runner(
        tmp_path,
        'none',
        custom_hooks=[dict(type='gpusq_mm.SparsityHook', exclude=['.*'])],
    )
    with pytest.raises(ValueError, match='nothing to prune') as info:
        runner.train()
    assert "exclude=['.*']" in str(info.value)
    assert not os.listdir(runner.work_dir) or not any(
        n.endswith('.pth') for n in os.listdir(runner.work_dir)
    )


def test_unknown_module_in_distill_config():
    from gpusq_mm.models.feature_kd import FeatureDistiller

    with pytest.raises(Exception) as info:
        FeatureDistiller(ToyModel(), ToyModel(), ['backbone.9'])
    assert 'backbone.9' in str(info.value)


# -- calibration --------------------------------------------------------------
class _Loader:
    def __init__(self, dataset):
        self.dataset = dataset
        self.batch_size = 4
        self.collate_fn = None


def test_empty_calibration_set():
    loader = calibration_loader(_Loader([]))
    with pytest.raises(RuntimeError) as info:
        check_calibration_set(loader, 8)
    text = str(info.value)
    assert 'calibration set is empty' in text and 'list has 0' in text
    assert 'train_dataloader.dataset' in text


def test_small_calibration_set_is_used_with_a_warning(tmp_path):
    runner = toy_runner(
        tmp_path,
        'small',
        hooks=[
            dict(
                type='gpusq_mm.QATHook',
                begin_iter=2,
                num_batches=50,
                progress=False,
            )
        ],
        max_iters=3,
        log_level='WARNING',
    )
    runner.train()
    hook = next(h for h in runner.hooks if type(h).__name__ == 'QATHook')
    assert hook.active and hook.num_calibrations == 1


# -- NaN during QAT -----------------------------------------------------------
class _NaNAfter(ToyModel):
    """Returns a NaN loss from the 5th training step on; ``detached``:
    a NaN that reaches no gradient (the weights stay finite)."""

    def __init__(self, detached=False):
        super().__init__()
        self.steps = 0
        self.detached = detached

    def forward(self, inputs, labels=None, mode='tensor'):
        out = super().forward(inputs, labels, mode)
        if mode == 'loss':
            self.steps += 1
            if self.steps >= 5 and self.detached:
                out = dict(loss=out['loss'] + torch.tensor(float('nan')))
            elif self.steps >= 5:
                out = dict(loss=out['loss'] * float('nan'))
        return out


def test_nan_loss_during_qat_stops_and_keeps_last_checkpoint(tmp_path):
    runner = toy_runner(
        tmp_path,
        'nan',
        model=_NaNAfter(),
        hooks=[
            dict(
                type='gpusq_mm.QATHook',
                begin_iter=2,
                num_batches=2,
                progress=False,
            )
        ],
        max_iters=8,
        ckpt_interval=1,
    )
    with pytest.raises(FloatingPointError) as info:
        runner.train()
    text = str(info.value)
    assert 'non-finite loss at iter 5' in text and 'iter_4.pth' in text
    assert 'parameters now hold NaN / inf' in text
    names = sorted(os.listdir(runner.work_dir))
    assert 'iter_4.pth' in names and 'iter_5.pth' not in names
    with open(osp.join(runner.work_dir, 'last_checkpoint')) as f:
        assert f.read().endswith('iter_4.pth')
    saved = torch.load(osp.join(runner.work_dir, 'iter_4.pth'))
    assert all(
        torch.isfinite(v).all()
        for v in saved['state_dict'].values()
        if v.is_floating_point()
    )


def test_gpusq_hook_runs_the_qat_loss_check():
    """GPUSQHook (it needs a GPUSQ model, so no toy Runner here) hands
    every step's outputs to its QATHook's non-finite-loss check."""
    from gpusq_mm.engine.hooks import GPUSQHook

    calls = []

    class _Spy:
        def after_train_iter(self, *args):
            calls.append(args)

    hook = GPUSQHook(qat_begin_iter=2)
    hook.sparsity, hook.qat = None, _Spy()
    outputs = dict(loss=torch.tensor(float('nan')))
    hook.after_train_iter('runner', 3, None, outputs)
    assert calls == [('runner', 3, None, outputs)]


def test_nan_loss_with_finite_weights_goes_on(tmp_path):
    runner = toy_runner(
        tmp_path,
        'skipped',
        model=_NaNAfter(detached=True),
        hooks=[
            dict(
                type='gpusq_mm.QATHook',
                begin_iter=2,
                num_batches=2,
                progress=False,
            )
        ],
        max_iters=6,
    )
    runner.train()
    assert runner.iter == 6
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())


# -- tampered masks -----------------------------------------------------------
def test_checkpoint_with_non_2to4_masks_refused(tmp_path):
    runner = toy_runner(tmp_path, 'good', max_iters=2, ckpt_interval=2)
    runner.train()
    good = torch.load(osp.join(runner.work_dir, 'iter_2.pth'))
    good['state_dict']['neck.sparsity_mask'].fill_(True)  # 4 of 4 kept
    path = str(tmp_path / 'tampered.pth')
    torch.save(good, path)
    before = _digest(path)
    resumed = toy_runner(
        tmp_path, 'resume', load_from=path, resume=True, max_iters=4
    )
    with pytest.raises(ValueError) as info:
        resumed.train()
    text = str(info.value)
    assert f'the loaded checkpoint {path!r} holds 1 2:4 mask' in text
    assert 'keep more than 2 of every 4 weights: neck' in text
    assert 'at most 2 per group of 4' in text
    assert _digest(path) == before


# -- pytorch-quantization placeholder ----------------------------------------
def test_pytorch_quantization_placeholder(monkeypatch):
    from gpusq_mm.quantization.requirement import check_pytorch_quantization

    fake = types.ModuleType('pytorch_quantization')
    fake.__version__ = '2.2.1'
    fake.__file__ = '/site-packages/pytorch_quantization/__init__.py'
    fake.__path__ = []  # a package without submodules
    monkeypatch.setitem(sys.modules, 'pytorch_quantization', fake)
    for name in list(sys.modules):
        if name.startswith('pytorch_quantization.'):
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError) as info:
        check_pytorch_quantization()
    text = str(info.value)
    assert 'pytorch-quantization 2.2.1' in text
    assert 'empty placeholder' in text
    assert 'pip install pytorch-quantization==2.1.3' in text


# -- generated data never replaces a real dataset ----------------------------
def test_generate_data_refuses_a_real_dataset(tmp_path):
    import importlib.util

    real = tmp_path / 'data' / 'cls' / 'train' / 'cat'
    real.mkdir(parents=True)
    (real / 'img_0001.jpg').write_bytes(b'\xff\xd8 real image bytes')
    (tmp_path / 'data' / 'cls' / 'meta.txt').write_text('mine')
    before = _tree(tmp_path / 'data')
    spec = importlib.util.spec_from_file_location(
        '_gen', osp.join(REPO_ROOT, 'tools', 'generate_data.py')
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = str(tmp_path / 'data')
    with pytest.raises(FileExistsError) as info:
        tool.main(['--out', out, '--tasks', 'cls', '--num-train', '6'])
    text = str(info.value)
    assert osp.join(out, 'cls') in text and 'refusing to delete' in text
    assert _tree(tmp_path / 'data') == before


def test_ineligible_names_in_attach_masks_keep_model_untouched():
    model = _WithDepthwise()
    keys = sorted(model.state_dict())
    with pytest.raises(ValueError):
        attach_masks(model, ['fc', 'dw'])  # fc is fine, dw is not
    assert sorted(model.state_dict()) == keys  # no mask attached at all
