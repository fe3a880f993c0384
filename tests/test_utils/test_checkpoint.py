"""Safe checkpoint loading (torch weights_only) and atomic writes."""

import io
import os
import pickle

import numpy as np
import pytest
import torch
from mmengine.fileio import get_file_backend
from mmengine.logging import HistoryBuffer

import gpusq_mm  # noqa: F401
from gpusq_mm.utils.checkpoint import atomic_torch_save


def test_mmengine_types_load_with_weights_only(tmp_path):
    buf = HistoryBuffer()
    buf.update(1.5)
    buf.update(np.float64(2.5))
    ckpt = dict(
        state_dict={'w': torch.ones(2)},
        meta=dict(
            message_hub=dict(log_scalars={'train/loss': buf}),
            seed=np.int64(3),
            arr=np.arange(4, dtype=np.float32),
        ),
    )
    path = tmp_path / 'ckpt.pth'
    torch.save(ckpt, path)
    out = torch.load(path, map_location='cpu', weights_only=True)
    hb = out['meta']['message_hub']['log_scalars']['train/loss']
    assert isinstance(hb, HistoryBuffer)
    assert hb.mean() == pytest.approx(2.0)
    np.testing.assert_array_equal(out['meta']['arr'], np.arange(4))


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_untrusted_objects_still_refused(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'x': _Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location='cpu', weights_only=True)


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / 'epoch_1.pth'
    atomic_torch_save({'a': torch.zeros(3)}, path)

    class _Unpicklable:
        def __reduce__(self):
            raise RuntimeError('boom')

    with pytest.raises(RuntimeError):
        atomic_torch_save({'a': _Unpicklable()}, path)
    assert torch.load(path)['a'].shape == (3,)
    assert [p.name for p in tmp_path.iterdir()] == ['epoch_1.pth']


def test_mmengine_local_backend_put_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / 'ckpt.pth')
    backend = get_file_backend(path)
    backend.put(b'old', path)
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((src, dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, 'replace', spy)
    data = io.BytesIO()
    torch.save({'w': torch.ones(1)}, data)
    backend.put(data.getvalue(), path)
    assert calls and calls[0][1] == path
    assert torch.load(path)['w'].item() == 1.0
