"""Record named module outputs with forward hooks (pure torch).

Feature distillation in GPUSQ-ViT (Yu et al., CVPR 2023, arXiv 2305.10727)
compares intermediate feature maps of the student and the teacher. A
:class:`FeatureRecorder` hooks modules by their name in
``model.named_modules()`` and keeps their outputs of the last forward pass;
a module that returns a tuple / list (a backbone's stages, a neck's levels)
yields one feature per tensor element, named ``'<module>.<index>'``.
"""

import difflib
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

__all__ = ['FeatureRecorder', 'check_module_names', 'flatten_output']


def check_module_names(model: nn.Module, names: Sequence[str]) -> None:
    """Fail with close matches when a module name is not in ``model``.

    Args:
        model (nn.Module): the model to search.
        names (Sequence[str]): module names (``named_modules`` keys).

    Raises:
        KeyError: naming the first unknown module and its close matches.
    """
    available = [n for n, _ in model.named_modules() if n]
    known = set(available)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, available, n=5)
            raise KeyError(
                f'feature module {name!r} not found in '
                f'{type(model).__name__}; close matches: {close or "none"}'
            )


def flatten_output(output) -> List[Optional[torch.Tensor]]:
    """The tensors of a module output, in order (``None`` for non-tensors).

    A tensor gives ``[tensor]``; a tuple / list gives one entry per element
    (nested sequences are not flattened further: their entry is ``None``).
    """
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [o if isinstance(o, torch.Tensor) else None for o in output]
    return [None]


class FeatureRecorder:
    """Keep the outputs of named modules from the latest forward pass.

    Args:
        model (nn.Module): the model whose modules are hooked.
        names (Sequence[str]): module names; checked at construction.

    Example:
        >>> rec = FeatureRecorder(model, ['backbone', 'neck'])
        >>> with rec:
        ...     model(x)
        >>> rec.features  # {'backbone.0': t0, 'backbone.1': t1, 'neck': t}
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        check_module_names(model, names)
        self.names = list(names)
        self._modules = dict(model.named_modules())
        self._handles: list = []
        self._outputs: Dict[str, object] = {}
        self._inputs: Dict[str, tuple] = {}
        self.recording = False

    def _hook(self, name: str):
        def hook(module, args, output):
            if self.recording:
                self._outputs[name] = output
                self._inputs[name] = args

        return hook

    def attach(self) -> None:
        """Register the forward hooks (idempotent)."""
        if self._handles:
            return
        for name in self.names:
            module = self._modules[name]
            self._handles.append(
                module.register_forward_hook(self._hook(name))
            )

    def detach(self) -> None:
        """Remove the hooks and forget the recorded outputs."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def clear(self) -> None:
        """Forget the recorded outputs."""
        self._outputs = {}
        self._inputs = {}

    def __enter__(self) -> 'FeatureRecorder':
        self.attach()
        self.clear()
        self.recording = True
        return self

    def __exit__(self, *exc) -> None:
        self.recording = False

    def raw(self, name: str):
        """The unflattened output of module ``name`` (KeyError if absent)."""
        if name not in self._outputs:
            raise KeyError(
                f'module {name!r} did not run in the recorded forward pass'
            )
        return self._outputs[name]

    def has(self, name: str) -> bool:
        """Whether module ``name`` ran in the recorded forward pass."""
        return name in self._outputs

    def args(self, name: str) -> tuple:
        """The positional inputs of module ``name`` in its latest call."""
        self.raw(name)
        return self._inputs[name]

    @property
    def features(self) -> Dict[str, torch.Tensor]:
        """Recorded tensors by feature name, in the order of ``names``."""
        feats: Dict[str, torch.Tensor] = {}
        for name in self.names:
            if name not in self._outputs:
                continue
            parts = flatten_output(self._outputs[name])
            if len(parts) == 1 and isinstance(
                self._outputs[name], torch.Tensor
            ):
                feats[name] = parts[0]
                continue
            for i, part in enumerate(parts):
                if part is not None:
                    feats[f'{name}.{i}'] = part
        return feats
