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
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        kept = (
            'the previous file is unchanged'
            if os.path.exists(filepath)
            else 'nothing was written'
        )
        raise OSError(
            e.errno,
            f'could not write {filepath} ({len(data)} bytes): '
            f'{e.strerror or e}; {kept}',
        ) from e
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
    _patch_last_checkpoint_writes()
    _register_safe_local_loader()
    _ATOMIC = True


class _AtomicTextFile(io.StringIO):
    """A text file opened for writing that lands atomically on close."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue().encode()
            super().close()
            _atomic_write_bytes(data, self._path)

    def __exit__(self, exc_type, *args) -> None:
        if exc_type is None:
            self.close()
        else:  # an interrupted write keeps the old file
            super().close()


def _patch_last_checkpoint_writes() -> None:
    """Write MMEngine's ``last_checkpoint`` pointer atomically.

    ``CheckpointHook`` writes it with a plain ``open(path, 'w')``: a
    process killed right then leaves it empty, and ``--resume auto`` then
    finds nothing. Only the ``open`` that module sees is replaced, and only
    for writes.
    """
    import builtins

    from mmengine.hooks import checkpoint_hook

    def _open(file, mode='r', *args, **kwargs):
        if mode == 'w' and not args and not kwargs:
            return _AtomicTextFile(os.fspath(file))
        return builtins.open(file, mode, *args, **kwargs)

    checkpoint_hook.open = _open


def safe_torch_load(filename: str, map_location=None) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file.

    Args:
        filename (str): a local checkpoint.
        map_location: as for ``torch.load``.

    Raises:
        FileNotFoundError: no such file.
        pickle.UnpicklingError: the file carries a pickled object outside
            the allow-list (tensors, containers, MMEngine's message-hub
            types), or it is not a readable checkpoint (truncated,
            garbled).
    """
    import pickle
    import struct
    import zipfile

    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename!r}')
    try:
        return torch.load(
            filename, map_location=map_location, weights_only=True
        )
    except pickle.UnpicklingError as e:
        text = str(e)
        found = [
            x.strip()
            for x in text.splitlines()
            if 'GLOBAL' in x or 'Unsupported global' in x
        ]
        if found:
            line = found[0]
            raise pickle.UnpicklingError(
                f'refusing to load checkpoint {filename!r}: it carries a '
                f'pickled object outside the allow-list ({line}). '
                'Checkpoints are loaded with weights_only=True, which allows '
                'tensors, plain containers and the MMEngine message-hub / '
                'numpy types only; re-save the file as a plain state_dict, '
                'or, if you trust it, add the type with '
                'torch.serialization.add_safe_globals'
            ) from e
        raise pickle.UnpicklingError(
            f'checkpoint {filename!r} is not a readable PyTorch checkpoint '
            f'(truncated or garbled: {_reason(text)})'
        ) from e
    except (
        EOFError,
        zipfile.BadZipFile,
        RuntimeError,
        ValueError,
        # what torch's weights-only unpickler raises on some garbled bytes
        # (an opcode popping an empty stack, an unknown memo key, ...)
        IndexError,
        KeyError,
        struct.error,
    ) as e:
        text = str(e)
        if isinstance(e, RuntimeError) and not any(
            m in text for m in _CORRUPT_MARKERS
        ):
            raise RuntimeError(f'loading checkpoint {filename!r}: {e}') from e
        raise pickle.UnpicklingError(
            f'checkpoint {filename!r} is not a readable PyTorch checkpoint '
            f'(truncated or garbled: {type(e).__name__}: {_reason(text)})'
        ) from e


#: RuntimeError texts of torch.load that mean a damaged file.
_CORRUPT_MARKERS = (
    'zip archive',
    'central directory',
    'PytorchStreamReader',
    'EOF',
    'invalid load key',
    'magic number',
)


def _reason(text: str) -> str:
    """The informative line of a torch.load error (not the boilerplate)."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    useful = [
        x
        for x in lines
        if not x.startswith(
            ('Weights only load failed', 'Check the doc', 'Please file')
        )
    ]
    return (useful or lines or [text])[0]


def _register_safe_local_loader() -> None:
    """Route MMEngine's local-path checkpoint loading through
    :func:`safe_torch_load` (clear errors, ``weights_only=True``)."""
    from mmengine.runner.checkpoint import CheckpointLoader

    def load_from_local(filename, map_location):
        return safe_torch_load(os.path.expanduser(filename), map_location)

    CheckpointLoader.register_scheme(prefixes='', force=True)(load_from_local)
