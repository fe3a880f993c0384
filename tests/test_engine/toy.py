"""A toy model, its data and a real MMEngine Runner around them (CPU).

Shared by the SparsityHook and QATHook tests: three maskable Linear layers
(``backbone.0``, ``backbone.2``, ``neck``; ``head.fc`` is a prediction
layer, skipped by default) and a GPUSQ-like algorithm wrapper.
"""

import os
import socket

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

#: The layers the default 2:4 selection masks in :class:`ToyModel`.
MASKED = ['backbone.0', 'backbone.2', 'neck']


class ToyData(Dataset):
    """64 seeded samples; ``scaled``: samples of different ranges."""

    def __init__(self, scaled: bool = False):
        self.scaled = scaled

    def __len__(self):
        return 64

    def __getitem__(self, idx):
        gen = torch.Generator().manual_seed(idx)
        x = torch.randn(32, generator=gen)
        if self.scaled:
            x = x * (1.0 + (idx % 7))
        return dict(inputs=x, labels=idx % 4)


class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)
        )
        self.neck = nn.Linear(32, 32)
        self.head = nn.Module()
        self.head.fc = nn.Linear(32, 4)

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.head.fc(torch.relu(self.neck(self.backbone(inputs))))
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, labels))
        return logits


class ToyAlgorithm(BaseModel):
    """Looks like GPUSQ: a student ``architecture`` and a ``teacher``."""

    def __init__(self):
        super().__init__()
        self.architecture = ToyModel()
        self.teacher = ToyModel().requires_grad_(False)

    def forward(self, inputs, labels=None, mode='tensor'):
        return self.architecture(inputs, labels, mode)


def toy_runner(
    tmp_path,
    name,
    model=None,
    optimizer=None,
    hooks=(),
    max_iters=20,
    ckpt_interval=10,
    data=None,
    **kw,
) -> Runner:
    """A Runner training ``model`` (default a :class:`ToyModel`) with the
    ``SparsityHook`` and ``hooks``; ``kw`` overrides any Runner argument."""
    torch.manual_seed(0)
    optimizer = optimizer or dict(type='AdamW', lr=0.01, weight_decay=0.1)
    cfg = dict(
        model=model if model is not None else ToyModel(),
        work_dir=str(tmp_path / name),
        experiment_name=f'{name}_{os.getpid()}',
        train_dataloader=dict(
            dataset=data if data is not None else ToyData(),
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate'),
            batch_size=4,
            num_workers=0,
        ),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=optimizer),
        custom_hooks=[dict(type='gpusq_mm.SparsityHook'), *hooks],
        default_hooks=dict(
            checkpoint=dict(
                type='CheckpointHook', interval=ckpt_interval, by_epoch=False
            ),
            logger=dict(type='LoggerHook', interval=100),
        ),
        log_processor=dict(by_epoch=False),
        log_level='WARNING',
        default_scope='mmengine',
    )
    cfg.update(kw)
    return Runner(**cfg)


def init_gloo(rank: int, port: int) -> None:
    """Join a 2-process gloo group on localhost (inside a spawned worker)."""
    os.environ.update(
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE='2',
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group('gloo', rank=rank, world_size=2)


def run_two_ranks(worker, tmp_path) -> str:
    """Spawn ``worker(rank, port, tmp_path, out)`` on 2 CPU processes.

    Returns:
        str: ``out``, the folder the workers write their results to.
    """
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    out = str(tmp_path)
    torch.multiprocessing.spawn(
        worker, args=(port, tmp_path, out), nprocs=2, join=True
    )
    return out
