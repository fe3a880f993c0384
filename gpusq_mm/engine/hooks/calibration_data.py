"""This rank's calibration batches for ``QATHook`` (one concern: data).

A separate, finite loader over the training dataset: under DDP each rank
takes its own shard of a seeded permutation (the split a
``DistributedSampler`` makes), so the amax all-reduce combines different
batches; an empty shard on any rank stops every rank with a clear error.
"""

import torch
from mmengine.dist import all_reduce, get_rank, get_world_size
from torch.utils.data import DataLoader, Subset

from gpusq_mm.utils.dist import shard_indices

__all__ = ['calibration_loader', 'check_calibration_set']


def calibration_loader(train_loader: DataLoader) -> DataLoader:
    """A separate, finite loader over this rank's calibration shard.

    Iterating the training loader itself would reset the iterator the
    training loop holds when workers are persistent, and never ends (or
    yields nothing) with an InfiniteSampler. The calibration loader shares
    the dataset, batch size and collate function and loads in the main
    process. Its order is a permutation seeded with 0; under DDP each rank
    takes every ``world_size``-th item of it from its rank (the split a
    ``DistributedSampler`` makes), so ranks calibrate on disjoint batches
    and the amax all-reduce combines them.
    """
    dataset = train_loader.dataset
    indices = shard_indices(len(dataset), get_rank(), get_world_size())
    batch_size = train_loader.batch_size or getattr(
        train_loader.batch_sampler, 'batch_size', 1
    )
    return DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=0,
        collate_fn=train_loader.collate_fn,
        drop_last=False,
    )


def check_calibration_set(loader: DataLoader, num_batches: int) -> None:
    """Refuse an empty calibration shard on any rank (names the dataset).

    Raises:
        RuntimeError: some rank has no calibration sample.
    """
    have = torch.tensor([len(loader.dataset)], dtype=torch.float64)
    lowest = have.clone()
    if get_world_size() > 1:
        all_reduce(lowest, op='min')
    if lowest.item() > 0:
        return
    dataset = loader.dataset.dataset
    raise RuntimeError(
        f'QATHook: the calibration set is empty: the training dataset '
        f'{type(dataset).__name__} has {len(dataset)} samples for '
        f'{get_world_size()} rank(s), and every rank needs at least one '
        f'(num_batches={num_batches}); check train_dataloader.dataset '
        '(data_root, ann_file, filter_cfg)'
    )
