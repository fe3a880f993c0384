"""Safe checkpoint loading and atomic checkpoint writing.

torch >= 2.6 loads checkpoints with ``weights_only=True`` by default, and
MMEngine 0.10.x checkpoints hold a few non-tensor objects (the message hub's
``HistoryBuffer`` and the numpy arrays / scalars inside it), so resuming
fails (open-mmlab/mmengine#1655). We do not turn the safety off: we add
exactly those types to torch's allow-list, so an untrusted file still cannot
run arbitrary code when unpickled.

Writes go through a temporary file in the same folder, fsync'ed and renamed
over the target, so a crash or a full disk never leaves a truncated
checkpoint where a good one was.
"""

import io
import os
import tempfile
from typing import Any, Union

import torch

_ALLOWED = False


def _numpy_types() -> list:
    import numpy as np

    types: list = [np.ndarray, np.dtype]
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    types += [_reconstruct, scalar]
    for name in (
        'float64',
        'float32',
        'float16',
        'int64',
        'int32',
        'int16',
        'int8',
        'uint8',
        'bool_',
    ):
        t = getattr(np, name)
        types.append(type(np.dtype(t)))  # e.g. numpy.dtypes.Float64DType
    return types


def allow_mmengine_checkpoint_types() -> None:
    """Allow-list the non-tensor types MMEngine writes into checkpoints.

    Idempotent. Does nothing on torch versions without
    ``torch.serialization.add_safe_globals``.
    """
    global _ALLOWED
    if _ALLOWED or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    import codecs

    from mmengine.logging import HistoryBuffer

    # numpy arrays pickled with protocol 2 rebuild their raw data through
    # ``_codecs.encode(str, 'latin1')`` -> bytes: both are plain data.
    torch.serialization.add_safe_globals(
        [HistoryBuffer, bytes, codecs.encode] + _numpy_types()
    )
    _patch_history_buffer_pickling(HistoryBuffer)
    _ALLOWED = True


def _patch_history_buffer_pickling(cls) -> None:
    """Stop ``HistoryBuffer`` from pickling its statistics methods.

    MMEngine 0.10 stores ``{'min': HistoryBuffer.min, ...}`` in each buffer's
    pickled state; unpickling those needs the ``getattr`` global, which we
    will not allow-list (it would let a file reach arbitrary attributes).
    The methods are class-level registrations that ``__setstate__`` restores
    anyway, so the pickled state does not need them.
    """
    if getattr(cls, '_gpusq_pickle_patched', False):
        return

    def __getstate__(self) -> dict:
        return {
            k: v for k, v in self.__dict__.items() if k != 'statistics_methods'
        }

    cls.__getstate__ = __getstate__
    cls._gpusq_pickle_patched = True


def _atomic_write_bytes(data: bytes, filepath: str) -> None:
    folder = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder,
        prefix='.' + os.path.basename(filepath) + '.',
        suffix='.tmp',
    )
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj: Any, filepath: Union[str, os.PathLike]) -> None:
    """``torch.save`` that never leaves a partial file at ``filepath``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(buf.getvalue(), os.fspath(filepath))


_ATOMIC = False


def enable_atomic_local_writes() -> None:
    """Make MMEngine's local file backend write files atomically.

    MMEngine's ``save_checkpoint`` serializes into memory and then calls the
    file backend's ``put``; the stock local backend opens the target and
    writes into it, so an interruption leaves a truncated ``epoch_N.pth``.
    We register a subclass whose ``put`` writes a temp file and renames it.
    """
    global _ATOMIC
    if _ATOMIC:
        return
    from mmengine.fileio import LocalBackend, register_backend

    class AtomicLocalBackend(LocalBackend):
        """Local backend whose ``put`` is atomic (tmp file + rename)."""

        def put(self, obj: bytes, filepath) -> None:
            _atomic_write_bytes(obj, os.fspath(filepath))

    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    _ATOMIC = True
