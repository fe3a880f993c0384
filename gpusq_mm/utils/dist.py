"""Distributed training on machines without a GPU (torchrun + gloo).

MMEngine 0.10's ``init_dist('pytorch')`` calls ``torch.cuda.set_device``
unconditionally, so ``tools/dist_train.sh CONFIG 2`` dies on a CPU-only
machine before training starts, and the Runner's default model wrapper
pins ``device_ids=[LOCAL_RANK]``, which DDP rejects for a CPU module.
:func:`setup_cpu_distributed` is called by our entry tools right after the
config is built: on a CPU-only machine with the ``pytorch`` launcher it
initialises the gloo process group itself (the Runner then skips its own
``init_dist``) and gives the DDP wrapper ``device_ids=None``. With CUDA
present it does nothing.
"""

import datetime
import logging
import os
from typing import Optional, Sequence

import torch
import torch.distributed as torch_dist

__all__ = ['setup_cpu_distributed']

_ENV = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


def _explicit_backend(cfg_options: Optional[dict]) -> Optional[str]:
    """The backend a user asked for on the command line, if any."""
    if not cfg_options:
        return None
    value = cfg_options.get('env_cfg.dist_cfg.backend')
    if value is None:
        value = (
            cfg_options.get('env_cfg', {}).get('dist_cfg', {}).get('backend')
            if isinstance(cfg_options.get('env_cfg'), dict)
            else None
        )
    return value


def setup_cpu_distributed(
    cfg, cfg_options: Optional[dict] = None, cuda: Optional[bool] = None
) -> Optional[str]:
    """Start a gloo process group for ``launcher='pytorch'`` without CUDA.

    Args:
        cfg (Config): the training / test config (``launcher`` set); its
            ``env_cfg.dist_cfg.backend`` and ``model_wrapper_cfg`` are
            updated in place for the CPU run.
        cfg_options (dict, optional): the ``--cfg-options`` the user gave,
            to tell an explicit ``env_cfg.dist_cfg.backend=nccl`` (an error
            without CUDA) from the config's inherited default (replaced by
            gloo). Defaults to None.
        cuda (bool, optional): override ``torch.cuda.is_available()``
            (tests). Defaults to None.

    Returns:
        str | None: the backend initialised here, or None when nothing was
        done (another launcher, CUDA present, group already running).

    Raises:
        RuntimeError: nccl was asked for explicitly on a machine without
            CUDA, or the torchrun environment variables are missing.
    """
    if cfg.get('launcher', 'none') != 'pytorch':
        return None
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda or torch_dist.is_initialized():
        return None
    env_cfg = dict(cfg.get('env_cfg') or {})
    dist_cfg = dict(env_cfg.get('dist_cfg') or {})
    asked = _explicit_backend(cfg_options)
    if asked is not None and asked != 'gloo':
        raise RuntimeError(
            f'env_cfg.dist_cfg.backend={asked!r} needs CUDA, and this '
            "machine has none: use env_cfg.dist_cfg.backend='gloo' (the "
            'default on CPU-only machines) or run on GPUs'
        )
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise RuntimeError(
            f'--launcher pytorch needs the torchrun environment variables '
            f'{list(_ENV)}; missing {missing}: start it with '
            'tools/dist_train.sh CONFIG NUM_PROCESSES (or torchrun)'
        )
    old = dist_cfg.get('backend', 'nccl')
    if old != 'gloo':
        from mmengine.logging import print_log

        print_log(
            f'no CUDA on this machine: env_cfg.dist_cfg.backend {old!r} '
            "(the config's default) replaced by 'gloo'",
            logger='current',
            level=logging.WARNING,
        )
    dist_cfg['backend'] = 'gloo'
    env_cfg['dist_cfg'] = dist_cfg
    cfg.env_cfg = env_cfg
    kwargs = {}
    timeout = dist_cfg.get('timeout')
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    torch_dist.init_process_group(
        backend='gloo',
        rank=int(os.environ['RANK']),
        world_size=int(os.environ['WORLD_SIZE']),
        **kwargs,
    )
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault(
        'find_unused_parameters', cfg.get('find_unused_parameters', False)
    )
    wrapper['device_ids'] = None  # a CPU module: DDP rejects device ids
    cfg.model_wrapper_cfg = wrapper
    return 'gloo'


def shard_indices(
    num: int, rank: int, world_size: int, seed: int = 0
) -> Sequence[int]:
    """This rank's share of a seeded permutation of ``range(num)``.

    The split a ``DistributedSampler`` with ``shuffle=True`` makes: a
    permutation seeded identically on every rank, then every
    ``world_size``-th element from ``rank``, so ranks see disjoint items
    (without padding: the last shards may hold one item fewer).

    Args:
        num (int): dataset length.
        rank (int): this process' rank.
        world_size (int): number of processes.
        seed (int): permutation seed, the same on every rank.

    Returns:
        list[int]: dataset indices of this rank.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    order = torch.randperm(num, generator=generator).tolist()
    return order[rank::world_size]


def _world() -> int:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_world_size()
    return 1


def all_reduce_loss_statistics(stats) -> bool:
    """Average stage-1 per-layer loss statistics over all ranks, in place.

    Each rank tracks the feature-KD losses of its own batches; before the
    QAT factors are frozen from them, every rank must hold the same means,
    or ranks train with different stage-2 objectives. The exact mean is
    the count-weighted mean over ranks (an EMA: the plain mean). Buffers
    are updated in place (``copy_``), so references a DDP wrapper holds
    stay valid.

    Args:
        stats (LossStatistics): buffers ``mean`` (float64) and ``count``
            (int64), ``momentum``.

    Returns:
        bool: whether an all-reduce ran (world size > 1, statistics
        present).

    Raises:
        RuntimeError: ranks tracked different numbers of layers.
    """
    world = _world()
    if world == 1:
        return False
    mean, count = stats.mean, stats.count
    size = torch.tensor(
        [mean.numel(), -mean.numel()], dtype=torch.float64, device=mean.device
    )
    torch_dist.all_reduce(size, op=torch_dist.ReduceOp.MAX)
    if int(size[0]) != -int(size[1]):
        raise RuntimeError(
            'stage-1 feature-KD statistics differ in size across ranks '
            f'(between {-int(size[1])} and {int(size[0])} layers; this rank '
            f'has {mean.numel()}): every rank must run the same distilled '
            'features'
        )
    if mean.numel() == 0:
        return False
    counts = count.double()
    if getattr(stats, 'momentum', None) is None:
        packed = torch.cat([mean * counts, counts])
    else:
        packed = torch.cat([mean, counts])
    torch_dist.all_reduce(packed, op=torch_dist.ReduceOp.SUM)
    n = mean.numel()
    total, counts = packed[:n], packed[n:]
    with torch.no_grad():
        if getattr(stats, 'momentum', None) is None:
            mean.copy_(total / counts.clamp(min=1))
        else:
            mean.copy_(total / world)
        count.copy_(counts.round().long())
    return True
