"""Idempotent generation of the demo datasets, recorded in a manifest.

``generate_datasets(out_dir, tasks)`` writes each task into its own folder
(``out_dir/coco``, ``out_dir/ade``, ``out_dir/cls``) and records what it
wrote in ``<folder>/gpusq_manifest.json``. A later call with the same
settings finds the manifest, checks the files are still there and skips
the work; other settings regenerate the folder from scratch. A folder
without our manifest (e.g. a real dataset) is never deleted: generation
into it is refused.
"""

import json
import os
import os.path as osp
import shutil
from typing import Dict, Iterable, Optional

from .ade_textures import generate_ade
from .cls_folders import generate_cls
from .coco_shapes import generate_coco

#: Bump when the generators change what they draw.
GENERATOR_VERSION = 4
MANIFEST = 'gpusq_manifest.json'

#: task -> (sub-folder, generator, default train count, default val count)
TASKS = {
    'det': ('coco', generate_coco, 160, 40),
    'seg': ('ade', generate_ade, 160, 40),
    'cls': ('cls', generate_cls, 3000, 600),
}


def _count_files(root: str) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def _read_manifest(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def generate_task(
    task: str,
    out_dir: str,
    num_train: Optional[int] = None,
    num_val: Optional[int] = None,
    seed: int = 0,
) -> str:
    """Generate one task's dataset unless an identical one exists.

    Args:
        task (str): ``'det'``, ``'seg'`` or ``'cls'``.
        out_dir (str): Parent folder; the task gets a sub-folder.
        num_train (int, optional): Train images; None for the default.
        num_val (int, optional): Val images; None for the default.
        seed (int): Generation seed. Defaults to 0.

    Returns:
        str: The dataset root (``out_dir/<sub-folder>``).
    """
    assert task in TASKS, f'task must be one of {sorted(TASKS)}, got {task!r}'
    folder, fn, def_train, def_val = TASKS[task]
    settings = dict(
        task=task,
        version=GENERATOR_VERSION,
        num_train=def_train if num_train is None else int(num_train),
        num_val=def_val if num_val is None else int(num_val),
        seed=int(seed),
    )
    assert settings['num_train'] > 0 and settings['num_val'] > 0, (
        f'need at least one train and one val image, got {settings}'
    )
    root = osp.join(out_dir, folder)
    manifest_path = osp.join(root, MANIFEST)
    old = _read_manifest(manifest_path)
    if (
        old is not None
        and old.get('settings') == settings
        and _count_files(root) == old.get('num_files')
    ):
        return root
    if osp.isdir(root):
        if old is None and os.listdir(root):
            raise FileExistsError(
                f'{root} exists and was not written by gpusq_mm (no readable '
                f'{MANIFEST}): refusing to delete it (a real {folder!r} '
                'dataset?). Generate into another folder (--out) or move it '
                'away yourself; only folders holding our manifest are '
                'regenerated'
            )
        shutil.rmtree(root)
    os.makedirs(root)
    stats = fn(
        root,
        num_train=settings['num_train'],
        num_val=settings['num_val'],
        seed=settings['seed'],
    )
    manifest = dict(
        settings=settings, stats=stats, num_files=_count_files(root) + 1
    )
    tmp = manifest_path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, manifest_path)
    return root


def generate_datasets(
    out_dir: str,
    tasks: Iterable[str] = ('det', 'seg', 'cls'),
    num_train: Optional[int] = None,
    num_val: Optional[int] = None,
    seed: int = 0,
) -> Dict[str, str]:
    """Generate several tasks' datasets; see :func:`generate_task`.

    Returns:
        dict[str, str]: task -> dataset root.
    """
    return {
        t: generate_task(t, out_dir, num_train, num_val, seed) for t in tasks
    }
