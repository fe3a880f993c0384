"""Refuse a missing or placeholder pytorch-quantization with a clear error.

The pytorch-quantization 2.2.x releases on PyPI are empty placeholders (no
``pytorch_quantization.nn`` / ``calib`` / ``tensor_quant``); a user who
ran ``pip install pytorch-quantization`` gets one of them and, without
this check, a bare ``No module named 'pytorch_quantization.nn'`` deep in
our imports.
"""

import importlib

__all__ = ['REQUIRED', 'check_pytorch_quantization']

#: The release gpusq_mm is tested with (the last one with code on PyPI).
REQUIRED = '2.1.3'
_PARTS = ('nn', 'calib', 'tensor_quant')


def check_pytorch_quantization() -> str:
    """Import pytorch-quantization or explain what to install.

    Returns:
        str: the installed version.

    Raises:
        ImportError: it is missing, or it is a placeholder without code.
    """
    try:
        package = importlib.import_module('pytorch_quantization')
    except ImportError as e:
        raise ImportError(
            'gpusq_mm.quantization needs pytorch-quantization: '
            f'pip install pytorch-quantization=={REQUIRED} ({e})'
        ) from e
    version = getattr(package, '__version__', 'unknown')
    for part in _PARTS:
        try:
            importlib.import_module(f'pytorch_quantization.{part}')
        except ImportError as e:
            where = getattr(package, '__file__', None) or 'unknown location'
            raise ImportError(
                f'pytorch-quantization {version} ({where}) has no '
                f'pytorch_quantization.{part}: it is an empty placeholder '
                '(the 2.2.x releases on PyPI ship no code). Install the '
                f'real one: pip install pytorch-quantization=={REQUIRED}'
            ) from e
    return version


check_pytorch_quantization()
