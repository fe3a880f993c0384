"""ValLossHook: the training loss on the val data, logged as ``val_loss``.

Real MMEngine Runners around toy models (the demo's dense runs log it on
the real Swin models: ``tests/test_tools/test_demo.py``).
"""

import json
import os.path as osp
from glob import glob

import pytest
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric

from .toy import ToyAlgorithm, ToyData, ToyModel, toy_runner


class ToyAccuracy(BaseMetric):
    def process(self, data_batch, data_samples):
        labels = data_batch['labels']
        for logits, label in zip(data_samples, labels):
            self.results.append(float(logits.argmax() == label))

    def compute_metrics(self, results):
        return dict(acc=100.0 * sum(results) / len(results))


class SampledLossModel(ToyModel):
    """Its loss scores a random half of the batch (as the RPN / RoI
    samplers of a two-stage detector draw their samples): every loss call
    advances the global torch generator, in eval mode too."""

    def forward(self, inputs, labels=None, mode='tensor'):
        if mode != 'loss':
            return super().forward(inputs, labels, mode)
        keep = torch.randperm(len(inputs))[: max(len(inputs) // 2, 1)]
        return super().forward(inputs[keep], labels[keep], mode)


def _runner(tmp_path, name, model, hook, epochs=3, val_batch=24):
    """3 epochs of 16 iterations, validation after each epoch (64 val
    samples in batches of ``val_batch``)."""
    return toy_runner(
        tmp_path,
        name,
        model=model,
        train_cfg=dict(by_epoch=True, max_epochs=epochs, val_interval=1),
        val_dataloader=dict(
            dataset=ToyData(scaled=True),
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
            batch_size=val_batch,
            num_workers=0,
        ),
        val_cfg=dict(),
        val_evaluator=[ToyAccuracy()],
        custom_hooks=[dict(type='gpusq_mm.ValLossHook')] if hook else [],
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=100),
            logger=dict(type='LoggerHook', interval=1),
        ),
        log_processor=dict(by_epoch=True),
        randomness=dict(seed=0),
    )


def _scalars(runner):
    (path,) = glob(osp.join(runner.work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    train = [r['loss'] for r in rows if 'lr' in r]
    val = [r for r in rows if 'lr' not in r]
    return train, val


def _val_losses_by_hand(model, val_batch=24) -> list:
    """``(loss, batch size)`` of each val batch, in eval mode."""
    data = ToyData(scaled=True)
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(data), val_batch):
            items = [data[i] for i in range(start, min(start + val_batch, 64))]
            x = torch.stack([it['inputs'] for it in items])
            y = torch.tensor([it['labels'] for it in items])
            out.append((float(model(x, y, mode='loss')['loss']), len(items)))
    return out


def _val_loss_by_hand(model, val_batch=24) -> float:
    """The sample-weighted mean training loss over the val data."""
    batches = _val_losses_by_hand(model, val_batch)
    return sum(v * n for v, n in batches) / sum(n for _, n in batches)


def test_val_loss_is_the_training_loss_on_the_val_data(tmp_path):
    # 64 val samples in batches of 24: the last batch (16) weighs less
    runner = _runner(tmp_path, 'value', ToyModel(), hook=True, epochs=1)
    runner.train()
    _, val = _scalars(runner)
    assert len(val) == 1 and 'acc' in val[0]
    expected = _val_loss_by_hand(runner.model)
    assert val[0]['val_loss'] == pytest.approx(expected, rel=1e-6)
    # per sample, not the plain mean over the 3 batches
    batches = _val_losses_by_hand(runner.model)
    plain = sum(v for v, _ in batches) / len(batches)
    assert abs(plain - expected) > 1e-3


def test_training_run_unchanged_by_the_hook(tmp_path):
    """The val loss's random draws do not leak into the training run."""
    runs = {}
    for name, hook in (('hook', True), ('plain', False)):
        torch.manual_seed(0)  # the same initial weights
        runs[name] = _runner(tmp_path, name, SampledLossModel(), hook=hook)
        runs[name].train()
    with_hook, without = runs['hook'], runs['plain']
    train_a, val_a = _scalars(with_hook)
    train_b, val_b = _scalars(without)
    assert len(train_a) == 48 and train_a == train_b
    assert [r['acc'] for r in val_a] == [r['acc'] for r in val_b]
    assert all('val_loss' in r for r in val_a)
    assert not any('val_loss' in r for r in val_b)
    # and the val losses track the run: one per validation, all finite
    losses = [r['val_loss'] for r in val_a]
    assert len(losses) == 3 and all(v == v and v > 0 for v in losses)


class KDToyAlgorithm(ToyAlgorithm):
    """Its training loss adds a distillation term from a teacher forward,
    as the GPUSQ algorithm's does."""

    def forward(self, inputs, labels=None, mode='tensor'):
        if mode != 'loss':
            return super().forward(inputs, labels, mode)
        losses = self.architecture(inputs, labels, mode)
        soft = self.teacher(inputs).softmax(-1)
        student = self.architecture(inputs).log_softmax(-1)
        losses['loss_kd'] = 10.0 * -(soft * student).sum(-1).mean()
        return losses


def test_gpusq_algorithm_logs_the_students_own_loss(tmp_path):
    """On a GPUSQ-like algorithm the val loss is its student's task loss
    (no distillation terms, no teacher forward)."""
    algo = KDToyAlgorithm()
    calls = []
    algo.teacher.register_forward_hook(lambda *a: calls.append(1))
    runner = _runner(tmp_path, 'algo', algo, hook=True, epochs=1)
    runner.train()
    _, val = _scalars(runner)
    assert val[0]['val_loss'] == pytest.approx(
        _val_loss_by_hand(algo.architecture), rel=1e-6
    )
    assert len(calls) == 16  # the 16 training steps only


def test_batch_augments_are_off_and_restored(tmp_path):
    """Batch augments of the data preprocessor (Mixup, ...) apply in
    training, not to the val loss, and are back in place afterwards."""
    from mmengine.model import BaseDataPreprocessor

    calls = []

    class Blackout(nn.Module):
        def forward(self, inputs):
            calls.append(len(inputs))
            return inputs * 0

    class Preprocessor(BaseDataPreprocessor):
        def __init__(self):
            super().__init__()
            self.batch_augments = nn.ModuleList([Blackout()])

        def forward(self, data, training=False):
            data = super().forward(data, training)
            if training and self.batch_augments is not None:
                for augment in self.batch_augments:
                    data['inputs'] = augment(data['inputs'])
            return data

    model = ToyModel()
    model.data_preprocessor = Preprocessor()
    augments = model.data_preprocessor.batch_augments
    runner = _runner(tmp_path, 'augment', model, hook=True, epochs=1)
    runner.train()
    _, val = _scalars(runner)
    assert calls == [4] * 16  # the 16 training batches only
    assert val[0]['val_loss'] == pytest.approx(
        _val_loss_by_hand(runner.model), rel=1e-6
    )
    assert model.data_preprocessor.batch_augments is augments


def test_model_without_the_interface_is_an_error(tmp_path):
    from gpusq_mm.engine.hooks import ValLossHook

    class Loop:
        val_loss = {}

    class Runner:
        val_loop = Loop()
        model = nn.Linear(2, 2)

    with pytest.raises(TypeError, match='no data_preprocessor'):
        ValLossHook().after_val_iter(Runner(), 0, dict(inputs=[1]))
    Runner.val_loop = object()
    with pytest.raises(RuntimeError, match='no val_loss record'):
        ValLossHook().after_val_iter(Runner(), 0, dict(inputs=[1]))
