"""Adapt a demo config to one run: data, schedule, teacher, ablation.

The gpusq demo configs have the three-statement shape of any GPUSQ config
(``gpusq_mm.GPUSQ`` + ``gpusq_mm.GPUSQHook``); the run only re-points the
data, sets the stage lengths and the teacher checkpoint, or, for the
ablation, keeps the upstream model with a plain ``SparsityHook``.
"""

import os.path as osp
from typing import Optional


def _inner_dataset(loader) -> tuple:
    """``(key under the loader, dataset cfg)`` of the dataset holding the
    loader's ``data_root`` (through dataset wrappers)."""
    key, ds = 'dataset', loader['dataset']
    while 'dataset' in ds and 'data_root' not in ds:  # wrappers
        key, ds = key + '.dataset', ds['dataset']
    return key, ds


def _set_data_root(cfg, data_root: str) -> None:
    """Point every dataset (and the COCO evaluator) at ``data_root``."""
    old = None
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(split)
        if loader is None:
            continue
        _, ds = _inner_dataset(loader)
        old = ds.get('data_root', old)
        ds['data_root'] = data_root
    for key in ('val_evaluator', 'test_evaluator'):
        ev = cfg.get(key)
        evs = ev if isinstance(ev, list) else [ev]
        for e in evs:
            if e is not None and 'ann_file' in e and old:
                rel = osp.relpath(e['ann_file'], old)
                e['ann_file'] = osp.join(data_root, rel)


def test_set_options(config: str, data_root: str) -> dict:
    """``cfg_options`` that point ``config``'s test split (dataset and
    COCO evaluator) at another folder of the same layout: the demo's
    scoring set."""
    from mmengine.config import Config

    cfg = Config.fromfile(config)
    key, ds = _inner_dataset(cfg.test_dataloader)
    if 'data_root' not in ds:
        raise KeyError(f'{config}: test_dataloader has no data_root to move')
    options = {f'test_dataloader.{key}.data_root': data_root}
    ev = cfg.get('test_evaluator')
    if isinstance(ev, (list, tuple)):
        raise ValueError(
            f'{config}: a list of test_evaluator entries; the scoring set '
            'moves one evaluator'
        )
    if ev is not None and 'ann_file' in ev:
        rel = osp.relpath(ev['ann_file'], ds['data_root'])
        if rel.startswith('..'):
            raise ValueError(
                f'{config}: test_evaluator.ann_file {ev["ann_file"]} is not '
                f'under the test data_root {ds["data_root"]}'
            )
        options['test_evaluator.ann_file'] = osp.join(data_root, rel)
    return options


def _iter_based(cfg) -> bool:
    return cfg.train_cfg.get('type') == 'IterBasedTrainLoop' or (
        'max_iters' in cfg.train_cfg
    )


#: validations over a dense run (its learning curve: has it plateaued?)
DENSE_VALIDATIONS = 4


def dense_val_interval(length: int) -> int:
    """Validate ``DENSE_VALIDATIONS`` times (the loop always validates at
    the end, so a length that does not divide gives one more)."""
    return max(1, length // DENSE_VALIDATIONS)


def _scale_dense(cfg, length: int) -> None:
    """Shorten/lengthen a dense config's schedule to ``length``."""
    key = 'max_iters' if _iter_based(cfg) else 'max_epochs'
    factor = length / cfg.train_cfg[key]
    cfg.train_cfg[key] = length
    cfg.train_cfg['val_interval'] = dense_val_interval(length)
    for sch in cfg.param_scheduler:
        for k in ('begin', 'end'):
            if k in sch and sch[k] is not None:
                sch[k] = max(1, int(round(sch[k] * factor))) if sch[k] else 0
    cfg.default_hooks.checkpoint['interval'] = length


def _set_gpusq_schedule(cfg, stage1: int, qat: int, use_qat: bool) -> None:
    by_epoch = not _iter_based(cfg)
    total = stage1 + (qat if use_qat else 0)
    key = 'max_epochs' if by_epoch else 'max_iters'
    cfg.train_cfg[key] = total
    cfg.train_cfg['val_interval'] = stage1
    extra = dict(convert_to_iter_based=True) if by_epoch else {}
    cfg.param_scheduler = [
        dict(
            type='CosineAnnealingLR',
            eta_min_ratio=0.05,
            by_epoch=by_epoch,
            begin=0,
            end=stage1,
            **extra,
        )
    ]
    if use_qat:
        cfg.param_scheduler.append(
            dict(
                type='CosineAnnealingLR',
                eta_min_ratio=0.0,
                by_epoch=by_epoch,
                begin=stage1,
                end=total,
                **extra,
            )
        )
    cfg.default_hooks.checkpoint['interval'] = stage1
    for hook in cfg.custom_hooks:
        if hook['type'].endswith('GPUSQHook'):
            for key in ('qat_ratio', 'qat_begin_epoch', 'qat_begin_iter'):
                hook.pop(key, None)
            if use_qat:  # else no QAT start (the model is not quantized)
                begin = 'qat_begin_epoch' if by_epoch else 'qat_begin_iter'
                hook[begin] = stage1


def prepare_config(
    src: str,
    dst: str,
    data_root: str,
    seed: int,
    dense_len: Optional[int] = None,
    stages: Optional[dict] = None,
    teacher_ckpt: Optional[str] = None,
    kd: bool = True,
    backbone_ckpt: Optional[str] = None,
    model: Optional[dict] = None,
    qat: Optional[bool] = None,
    resume_from: Optional[str] = None,
) -> str:
    """Load ``src``, adapt it to this demo run and dump it to ``dst``.

    ``backbone_ckpt``: a checkpoint whose ``backbone.*`` weights initialise
    the model's backbone (MMEngine ``Pretrained`` init). ``model``:
    overrides merged into the (gpusq) model config, e.g.
    ``dict(quantization='int4')``. ``qat``: the run has the QAT stage
    (default: with KD only; False: stage 1 alone, for an unquantized
    model). ``resume_from``: the run resumes from this checkpoint of
    another run with the same schedule (an INT4 row from the GPUSQ run's
    stage-1 checkpoint): MMEngine's resume, so the iteration, optimizer
    and scheduler states carry on and only the rest is trained.
    """
    from mmengine.config import Config

    cfg = Config.fromfile(src)
    _set_data_root(cfg, data_root)
    cfg.randomness = dict(seed=seed)
    if dense_len is not None:
        _scale_dense(cfg, dense_len)
    if backbone_ckpt is not None:
        cfg.model.backbone.init_cfg = dict(
            type='Pretrained', checkpoint=backbone_ckpt, prefix='backbone.'
        )
    if stages is not None:
        use_qat = kd if qat is None else qat
        if use_qat and not kd:
            raise ValueError('the QAT stage needs KD (the gpusq model)')
        _set_gpusq_schedule(
            cfg, stages['stage1'], stages['qat'], use_qat=use_qat
        )
        cfg.load_from = teacher_ckpt
        # the val loss (the dense configs' ValLossHook, which the gpusq
        # configs inherit) is the teachers' learning-curve check; a student
        # run's extra loss forwards would only add to the demo's time
        cfg.custom_hooks = [
            h
            for h in cfg.custom_hooks
            if not h['type'].endswith('ValLossHook')
        ]
        if kd:
            cfg.model.teacher.checkpoint = teacher_ckpt
        else:
            # the ablation: the same 2:4 fine-tune, student alone
            cfg.model = cfg.model.architecture
            cfg.custom_hooks = [
                h
                for h in cfg.custom_hooks
                if not h['type'].endswith('GPUSQHook')
            ] + [dict(type='gpusq_mm.SparsityHook')]
    if model:
        if not kd:
            raise ValueError('model overrides apply to the gpusq model only')
        cfg.merge_from_dict(dict(model=model))
    if resume_from is not None:
        if stages is None:
            raise ValueError('resume_from needs the gpusq schedule (stages)')
        cfg.load_from = resume_from
        cfg.resume = True
    cfg.dump(dst)
    return dst


def stage1_checkpoint(gpusq_cfg: str, run_dir: str, sched: dict) -> str:
    """The checkpoint a GPUSQ run (``gpusq_cfg`` in ``run_dir``) saves at
    the end of its stage 1 (2:4 + KD): ``iter_N.pth`` or ``epoch_N.pth``."""
    from mmengine.config import Config

    unit = 'iter' if _iter_based(Config.fromfile(gpusq_cfg)) else 'epoch'
    return osp.join(run_dir, f'{unit}_{sched["stage1"]}.pth')
