"""Name the annotation file behind a JSON error raised while a dataset loads.

pycocotools (and any dataset reading JSON annotations) raises a bare
:class:`json.JSONDecodeError` ("Expecting value: line 1 column 1") that
says nothing about which file is broken. The entry tools catch it and call
:func:`explain_annotation_error`, which re-reads the config's annotation
files (only on that failure path: a real COCO ``instances_train2017.json``
takes seconds to parse, so nothing is checked up front) and returns an
error naming the config key and the path of each unreadable one.
"""

import contextlib
import json
import os.path as osp
from typing import Iterator, List, Optional, Tuple

__all__ = [
    'annotation_errors_named',
    'annotation_files',
    'explain_annotation_error',
]

_LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def _walk(node, key: str, data_root: Optional[str]) -> Iterator:
    if isinstance(node, dict):
        root = node.get('data_root', data_root)
        ann = node.get('ann_file')
        if isinstance(ann, str) and ann:
            path = ann if osp.isabs(ann) or not root else osp.join(root, ann)
            yield f'{key}.ann_file', path
        for k, v in node.items():
            if isinstance(v, (dict, list, tuple)):
                yield from _walk(v, f'{key}.{k}', root)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk(v, f'{key}[{i}]', data_root)


def annotation_files(cfg) -> List[Tuple[str, str]]:
    """``(config key, path)`` of every ``ann_file`` of the dataloaders.

    ``data_root`` is joined as MMEngine's ``BaseDataset`` does (a relative
    ``ann_file`` is taken under the nearest ``data_root``); wrapped
    datasets (``dataset=``, ``datasets=[...]``) are followed.
    """
    out = []
    for loader in _LOADERS:
        section = cfg.get(loader) if hasattr(cfg, 'get') else None
        if isinstance(section, dict):
            out.extend(
                _walk(section.get('dataset'), f'{loader}.dataset', None)
            )
    return out


def explain_annotation_error(
    cfg, error: json.JSONDecodeError
) -> Optional[ValueError]:
    """An error naming the unreadable JSON annotation file(s), if found.

    Args:
        cfg: the Config the Runner was built from.
        error (json.JSONDecodeError): what the dataset raised.

    Returns:
        ValueError | None: None when every annotation file parses (then the
        JSON error came from elsewhere and is re-raised as it is).
    """
    bad = []
    for key, path in annotation_files(cfg):
        if not path.endswith('.json') or not osp.isfile(path):
            continue
        try:
            with open(path, 'rb') as f:
                json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            bad.append(f'{key} = {path!r} ({type(e).__name__}: {e})')
    if not bad:
        return None
    return ValueError(
        'annotation file is not valid JSON (truncated or garbled?): '
        + '; '.join(dict.fromkeys(bad))
        + '. Re-download or regenerate it; nothing was written.'
    )


@contextlib.contextmanager
def annotation_errors_named(cfg):
    """Re-raise a JSON error of the block naming the broken annotation file.

    Example::

        with annotation_errors_named(cfg):
            runner.train()
    """
    try:
        yield
    except json.JSONDecodeError as e:
        named = explain_annotation_error(cfg, e)
        if named is None:
            raise
        raise named from e
