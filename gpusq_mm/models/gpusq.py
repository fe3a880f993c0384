"""``GPUSQ``: the distillation algorithm wrapping an OpenMMLab student.

GPUSQ-ViT (Yu et al., CVPR 2023, arXiv 2305.10727) compresses a trained
dense model in two distillation stages: 2:4 sparse fine-tuning (stage 1,
teacher: the dense model) and sparse-distillation-aware QAT (stage 2,
teacher: a frozen snapshot of the sparse FP student, per-layer feature-KD
factors from stage-1 statistics). The loss is
``alpha * L_hard + beta * L_soft + gamma * sum_i w_i L_feat,i``
(defaults 1, 10, 5: :data:`~gpusq_mm.models.distill_config.DISTILL_DEFAULTS`).

The paper's recipe is the default: ``GPUSQ(architecture=cfg.model,
teacher=dict(checkpoint='dense.pth'))`` prunes to 2:4, quantizes to INT8,
distils with the weights above, takes the teacher's config from the
student's and starts the student from the teacher's weights (its own
pretrained initialization is skipped).

The teacher is kept out of ``_modules``: it is not in ``parameters()`` (so
never optimized or DDP-wrapped) nor in ``state_dict()``; ``_apply`` moves it
with the student. The QAT snapshot is saved in the full training
checkpoint under ``qat_teacher.`` and rebuilt on load, but never written to
the student-only checkpoint.
"""

import copy
import logging
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModel

from gpusq_mm.registry import MODELS
from gpusq_mm.sparsity import FLAG_NAME
from gpusq_mm.utils.dist import all_reduce_loss_statistics

from .adapters import adapter_class_for
from .distill_config import distill_defaults
from .feature_kd import FeatureDistiller
from .student import (
    apply_compression,
    disable_quantizers,
    drop_pretrained,
    resolve_sparsity,
    sparsity_options,
    student_checkpoint,
)
from .teacher import (
    InputAdapter,
    build_teacher,
    check_same_parameters,
    freeze,
    own_config,
    teacher_settings,
)

__all__ = ['GPUSQ']

QAT_PREFIX = 'qat_teacher.'
STAGES = {0: 'dense', 1: 'sparse', 2: 'qat'}


@MODELS.register_module()
class GPUSQ(BaseModel):
    """2:4 sparsity + QAT of an OpenMMLab model, recovered with KD.

    What is distilled beyond the weights (``distill`` keys, see
    :mod:`gpusq_mm.models.distill_config`): ``hard='teacher'`` is the
    label-free mode, the teacher's predictions replace the ground truth
    (argmax class; per-pixel argmax; detections scoring at least
    ``teacher_score_thr`` [0.5, detectors only]; long form
    ``hard_targets='teacher'``). ``logits.parts`` weighs the adapter's
    parts, e.g. DETR ``query`` (final decoder layer) and ``query_aux``
    (every earlier layer, each Hungarian-matched), Mask R-CNN ``rpn``,
    ``roi`` and ``mask`` (the teacher's mask head on the student's positive
    RoIs). ``features.levels`` ['later'] picks the outputs of multi-output
    feature modules: the last two backbone stages and the neck levels built
    from them; ``'all'`` or ``{module: [output indices]}``.

    Args:
        architecture (dict | nn.Module): the student, exactly the upstream
            model config (mmpretrain classifier, mmseg EncoderDecoder,
            mmdet two-stage or DETR-family detector).
        teacher (dict, optional): ``dict(checkpoint=path, config=None,
            strict=True)``; ``config`` (a path, ``'pkg::path'`` or a dict)
            defaults to the student's own architecture. Required for
            training; None only builds the student (test / export).
            Defaults to None.
        sparsity (str | dict, optional): ``'2:4'`` (the preset) or a dict
            of :class:`gpusq_mm.sparsity.SparsityConfig` keys (``include``,
            ``exclude``, ``exclude_types``, ``filter_fn``, alignment ...),
            ``names``, and the options the GPUSQHook reads (``permute``,
            ``permute_pairs``, ``permute_search``, ``mask_grad``); mask
            placeholders are attached now. None: dense. Defaults to '2:4'.
        quantization (str | dict, optional): ``'int8'`` / ``'int4'`` (the
            presets) or :class:`gpusq_mm.quantization.QuantConfig` keys;
            quantizers swapped in now, disabled. None: floating point.
            Defaults to 'int8'.
        distill (dict, optional): loss settings, any subset of
            :data:`~gpusq_mm.models.distill_config.DISTILL_DEFAULTS`
            (unknown keys at any depth are errors), defaults in brackets:
            ``hard`` [1.0] weight of the student's task loss, or
            ``'teacher'`` (label-free, above);
            ``logits=dict(weight [10], T [2.0], parts [adapter's])``;
            ``features=dict(weight [5], modules [backbone, neck(, encoder)],
            teacher_modules [same], loss ['mse'|'nmse'], connectors,
            gate_on_agreement [False], log_per_layer [False], levels
            ['later'])``;
            ``weighting=dict(mode ['inverse'|'proportional'|'uniform'],
            momentum [None])``. Defaults to None.
        data_preprocessor (dict, optional): the config's top-level one
            (the Runner passes it): it becomes the student's when
            ``architecture`` has none (mmpretrain keeps normalization and
            ``num_classes`` there); otherwise the student's own one
            preprocesses the batch. Defaults to None.
        init_cfg (dict, optional): initialization config.
        init_student (str): ``'teacher'``: ``init_weights()`` copies the
            teacher checkpoint's weights into the student when the two
            architectures match, so ``model.teacher.checkpoint`` is the one
            setting a user changes (``load_from`` / ``--resume`` still
            override it, as they load after ``init_weights``); ``'none'``:
            the student's own initialization. With ``'teacher'`` the
            student's pretrained initialization (``init_cfg`` of type
            Pretrained, ``pretrained``) is dropped, and a teacher whose
            parameters differ from the student's is an error unless
            ``distill.features.connectors`` bridge them. Defaults to
            'teacher'.
    """

    def __init__(
        self,
        architecture: Union[dict, nn.Module],
        teacher: Optional[dict] = None,
        sparsity: Union[str, dict, None] = '2:4',
        quantization: Union[str, dict, None] = 'int8',
        distill: Optional[dict] = None,
        data_preprocessor: Optional[dict] = None,
        init_cfg: Optional[dict] = None,
        init_student: str = 'teacher',
    ) -> None:
        assert init_student in ('teacher', 'none'), (
            f"init_student must be 'teacher' or 'none', got {init_student!r}"
        )
        teacher = teacher_settings(teacher)
        if isinstance(architecture, nn.Module):
            student = architecture
        else:
            architecture = copy.deepcopy(architecture)
            if architecture.get('data_preprocessor') is None and isinstance(
                data_preprocessor, dict
            ):
                architecture['data_preprocessor'] = data_preprocessor
            if teacher is not None and teacher['config'] is None:
                teacher['config'] = own_config(architecture)
            if teacher is not None and init_student == 'teacher':
                drop_pretrained(architecture)
            student = MODELS.build(architecture)
        adapter_cls = adapter_class_for(student)  # fail early, by name
        own = getattr(student, 'data_preprocessor', None)
        if isinstance(own, nn.Module):
            # The student's own preprocessing always wins: the Runner
            # injects a config's top-level ``data_preprocessor`` (mmseg
            # configs have one) into any model dict lacking one, which
            # would silently replace the student's (e.g. its crop size).
            data_preprocessor = own
        super().__init__(
            data_preprocessor=data_preprocessor, init_cfg=init_cfg
        )
        self.architecture = student
        self.init_student = init_student
        self._teacher_ckpt = None
        self.register_buffer('gpusq_stage', torch.zeros((), dtype=torch.long))
        self._past_dense = False  # python mirror of gpusq_stage != 0
        self.adapter_cls = adapter_cls
        self.sparse_layers, self.quant_layers = apply_compression(
            student, sparsity, quantization
        )
        #: how the GPUSQHook computes / keeps the masks (model config keys)
        self.sparsity_options = sparsity_options(resolve_sparsity(sparsity))
        self.distill_cfg = distill_defaults(distill)
        object.__setattr__(self, '_teacher', None)
        object.__setattr__(self, '_qat_teacher', None)
        self.adapter = None
        self.feature_kd = None
        if teacher is not None:
            self._build_distillation(teacher)

    # ---------------------------------------------------------- build
    def _build_distillation(self, teacher_cfg: dict) -> None:
        if teacher_cfg['config'] is None:
            raise ValueError(
                'teacher.config is required when architecture is a module '
                '(it defaults to the architecture config only for dicts)'
            )
        self._teacher_ckpt = teacher_cfg.get('checkpoint')
        teacher = build_teacher(
            teacher_cfg['config'],
            teacher_cfg.get('checkpoint'),
            teacher_cfg.get('strict', True),
        )
        object.__setattr__(self, '_teacher', teacher)
        self.input_adapter = InputAdapter(
            self.data_preprocessor, getattr(teacher, 'data_preprocessor', None)
        )
        logits = self.distill_cfg['logits']
        self.adapter = self.adapter_cls(
            self.architecture, teacher, logits['parts']
        )
        if self.distill_cfg['hard_targets'] == 'teacher':
            self.adapter.check_label_free(
                self.distill_cfg['teacher_score_thr']
            )
        feats = self.distill_cfg['features']
        if feats['gate_on_agreement'] and 'cls' not in self.adapter.parts:
            raise ValueError(
                'distill.features.gate_on_agreement (the paper\'s "teacher '
                'and student agree on the class" gate) is defined for '
                f'classifiers only, not {type(self.architecture).__name__}'
            )
        modules = feats['modules']
        if modules is None:
            s_default = self.adapter.default_feature_modules(self.architecture)
            t_names = dict(teacher.named_modules())
            modules = [m for m in s_default if m in t_names]
        self.feature_kd = FeatureDistiller(
            self.architecture,
            teacher,
            modules,
            feats['teacher_modules'],
            loss=feats['loss'],
            connectors=feats['connectors'],
            weight_mode=self.distill_cfg['weighting']['mode'],
            momentum=self.distill_cfg['weighting']['momentum'],
            levels=feats['levels'],
        )
        if self.init_student == 'teacher' and not feats['connectors']:
            check_same_parameters(self.architecture, teacher)

    def init_weights(self) -> None:
        """Initialize the student; start it from the teacher's weights."""
        super().init_weights()
        if self.init_student != 'teacher' or self._teacher is None:
            return
        from mmengine.logging import print_log

        t_state = self._teacher.state_dict()
        s_state = self.architecture.state_dict()
        params = {n for n, _ in self.architecture.named_parameters()}
        same = all(
            n in t_state and t_state[n].shape == s_state[n].shape
            for n in params
        )
        if not same:
            print_log(
                'GPUSQ: teacher and student architectures differ; the '
                'student keeps its own initialization (set load_from)',
                logger='current',
            )
            return
        with torch.no_grad():
            for name, value in s_state.items():
                if name in t_state and t_state[name].shape == value.shape:
                    value.copy_(t_state[name])
        print_log(
            f'GPUSQ: student initialized from the teacher checkpoint '
            f'{self._teacher_ckpt}',
            logger='current',
        )

    # ---------------------------------------------------------- teacher
    @property
    def teacher(self) -> Optional[nn.Module]:
        """The active teacher: the QAT snapshot once made, else dense."""
        if self._qat_teacher is not None:
            return self._qat_teacher
        return self._teacher

    @property
    def dense_teacher(self) -> Optional[nn.Module]:
        """The dense teacher loaded from its checkpoint."""
        return self._teacher

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for t in (self._teacher, self._qat_teacher):
            if t is not None:
                t._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True) -> 'GPUSQ':
        super().train(mode)
        for t in (self._teacher, self._qat_teacher):
            if t is not None:
                t.eval()  # the teacher is always in eval mode
        return self

    # ---------------------------------------------------------- stages
    @property
    def stage(self) -> int:
        """0 dense, 1 2:4 sparse fine-tune, 2 QAT."""
        return int(self.gpusq_stage)

    def set_stage(self, stage: int) -> None:
        """Set the stage (0 dense, 1 sparse, 2 QAT)."""
        assert stage in STAGES, f'stage must be 0, 1 or 2, got {stage}'
        self.gpusq_stage.fill_(int(stage))
        self._past_dense = stage != 0

    def begin_sparse(self) -> None:
        """Enter the 2:4 stage (the hook calls it once masks are computed).

        Stage-1 feature-KD statistics (the QAT layer factors) are tracked
        from here on. Idempotent; never goes back from QAT.
        """
        if self.stage == 0:
            self.set_stage(1)
        self._past_dense = True

    def _sync_stage(self) -> None:
        """Dense -> sparse once the student's 2:4 masks are computed.

        Runs in every ``loss()``: once the stage is known to be past 0 it
        returns without reading the buffer (``int()`` of a CUDA tensor would
        synchronize the device every step).
        """
        if self._past_dense or not self.sparse_layers:
            return  # no masks to wait for without 2:4 layers
        if self.stage != 0:
            self._past_dense = True
            return
        for name, buf in self.architecture.named_buffers():
            if name.endswith(FLAG_NAME) and bool(buf):
                self.set_stage(1)
                return

    def _make_qat_teacher(self) -> nn.Module:
        self.adapter.recorder.detach()
        self.feature_kd.detach_student_hooks()
        try:
            snapshot = copy.deepcopy(self.architecture)
        finally:
            self.adapter.recorder.attach()
        disable_quantizers(snapshot)
        freeze(snapshot)
        object.__setattr__(self, '_qat_teacher', snapshot)
        # same architecture as the student: same names, no connectors
        self.feature_kd.set_teacher(
            snapshot, self.feature_kd.modules_s, use_connectors=False
        )
        return snapshot

    def begin_qat(self, teacher: str = 'sparse') -> Dict[str, float]:
        """Enter the QAT stage (call before calibration).

        Freezes the per-layer feature-KD factors from the stage-1
        statistics, and with ``teacher='sparse'`` (the paper's choice)
        snapshots the current sparse FP student, quantizers off, as the
        frozen QAT teacher; ``'dense'`` keeps the dense teacher.

        Returns:
            dict[str, float]: the weight factor of each feature layer.
        """
        assert teacher in ('sparse', 'dense'), (
            f"begin_qat teacher must be 'sparse' or 'dense', got {teacher!r}"
        )
        if self.feature_kd is None:
            raise RuntimeError('begin_qat needs a teacher (GPUSQ(teacher=))')
        if self.feature_kd.stats.mean.numel() == 0:
            from mmengine.logging import print_log

            print_log(
                'GPUSQ.begin_qat: no stage-1 feature-KD statistics (no '
                'sparse training step ran); the QAT feature factors are '
                'uniform',
                logger='current',
                level=logging.WARNING,
            )
        # ranks tracked their own batches: average before freezing
        all_reduce_loss_statistics(self.feature_kd.stats)
        self.feature_kd.freeze_factors()
        if teacher == 'sparse' and self._qat_teacher is None:
            self._make_qat_teacher()
        self.set_stage(2)
        return self.feature_kd.stats.factor_dict()

    # ---------------------------------------------------------- forward
    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        """``'loss'`` distils; ``'predict'`` / ``'tensor'``: student only."""
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        return self.architecture(inputs, data_samples, mode=mode)

    def loss(self, inputs, data_samples) -> Dict[str, torch.Tensor]:
        """Hard + soft-logit + feature KD losses, each logged separately."""
        if self.adapter is None:
            raise RuntimeError(
                'GPUSQ was built without a teacher: it can test and export '
                'but not train (knowledge distillation is never silently '
                'off); set model.teacher=dict(config=..., checkpoint=...)'
            )
        self._sync_stage()
        cfg = self.distill_cfg
        teacher = self.teacher
        if self._qat_teacher is not None:
            t_inputs = inputs
        else:
            t_inputs = self.input_adapter(inputs)
        t_out = None
        if cfg['hard_targets'] == 'teacher':  # label-free mode
            with torch.no_grad(), self.feature_kd.teacher_recorder:
                t_out, data_samples = self.adapter.teacher_targets(
                    teacher, t_inputs, data_samples, cfg['teacher_score_thr']
                )
        with self.adapter.recorder, self.feature_kd.student_recorder:
            hard = self.architecture.loss(inputs, data_samples)
        if t_out is None:
            with torch.no_grad(), self.feature_kd.teacher_recorder:
                t_out = self.adapter.teacher_forward(
                    teacher, t_inputs, data_samples
                )
        losses = {}
        for key, value in hard.items():
            if 'loss' in key and cfg['hard'] != 1.0:
                value = _scale(value, cfg['hard'])
            losses[key] = value
        logits = cfg['logits']
        if logits['weight'] > 0:
            parts = self.adapter.logit_losses(t_out, data_samples, logits['T'])
            for part, value in parts.items():
                w = logits['weight'] * self.adapter.parts[part]
                losses[f'loss_kd_{part}'] = value * w
        feats = cfg['features']
        if feats['weight'] > 0:
            mask = None
            if feats['gate_on_agreement'] and 'cls' in t_out:
                s_cls = self.adapter.recorder.raw('head')
                mask = s_cls.argmax(-1) == t_out['cls'].argmax(-1)
            total, per_layer = self.feature_kd(
                track=self.stage == 1, sample_mask=mask
            )
            losses['loss_kd_feat'] = total * feats['weight']
            if feats['log_per_layer']:
                for name, value in per_layer.items():
                    losses[f'kd_feat.{name}'] = value.detach()
        self.adapter.recorder.clear()
        self.feature_kd.student_recorder.clear()
        self.feature_kd.teacher_recorder.clear()
        return losses

    # ---------------------------------------------------------- state
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._qat_teacher is not None:
            for k, v in self._qat_teacher.state_dict(
                keep_vars=keep_vars
            ).items():
                destination[prefix + QAT_PREFIX + k] = (
                    v if keep_vars else v.detach()
                )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._past_dense = False  # re-read the loaded stage on next loss()
        keys = [k for k in state_dict if k.startswith(prefix)]
        arch = prefix + 'architecture.'
        if keys and not any(k.startswith(arch) for k in keys):
            # a student-only checkpoint: upstream keys without the prefix
            for k in keys:
                rel = k[len(prefix) :]
                own = rel.split('.')[0] in self._modules
                if not own and rel not in self._buffers:
                    state_dict[arch + rel] = state_dict.pop(k)
            state_dict.setdefault(prefix + 'gpusq_stage', self.gpusq_stage)
        qat = {
            k[len(prefix + QAT_PREFIX) :]: state_dict.pop(k)
            for k in list(state_dict)
            if k.startswith(prefix + QAT_PREFIX)
        }
        if qat and self.feature_kd is None:
            # test / export (built without a teacher): the QAT teacher of a
            # full training checkpoint is not part of the student
            qat = {}
        if qat:
            if self._qat_teacher is None:
                self._make_qat_teacher()
            self._qat_teacher.load_state_dict(qat, strict=True)
            freeze(self._qat_teacher)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def student_state_dict(self) -> Dict[str, torch.Tensor]:
        """The student's weights: upstream keys + masks + quantizer state."""
        return self.architecture.state_dict()

    def save_student_checkpoint(
        self, filepath: str, meta: Optional[dict] = None
    ) -> None:
        """Write a student-only checkpoint atomically (no teacher)."""
        meta = dict(meta or {}, gpusq_stage=self.stage)
        student_checkpoint(self.architecture, filepath, meta)

    @property
    def compressed_layers(self) -> Dict[str, List[str]]:
        """Names of the student's 2:4 and quantized layers."""
        return dict(sparse=self.sparse_layers, quant=self.quant_layers)


def _scale(value, weight: float):
    if isinstance(value, (list, tuple)):
        return type(value)(v * weight for v in value)
    return value * weight
