"""The exported model's metric on a val set, next to PyTorch's.

Runs the config's test dataloader through the model's data preprocessor,
then both the PyTorch (fake-quant) student and the ONNX graph in
onnxruntime (one image at a time: the graph's shape is fixed), and scores
both with the config's test evaluator (e.g. top-1 or mIoU).

- classifiers: the graph's logits go through the head's prediction step;
- segmentors (``whole`` test mode): the graph's decode-head logits go
  through the decode head's resize to the input size and the segmentor's
  post-processing (crop of the padding, resize to the original image);
  every test image must reach the graph's fixed input shape;
- detectors export without their heads and are refused.
"""

import copy
from typing import Dict, Optional

import numpy as np
import torch

from .loading import load_student
from .parts import model_family
from .verify import ort_session

__all__ = ['evaluate_classifier', 'evaluate_export']


def _onnx_predict(model, family, sess, inputs, samples):
    """The export's predictions for one preprocessed batch."""
    outs = [sess.run(None, {'input': x[None].numpy()})[0] for x in inputs]
    logits = torch.from_numpy(np.concatenate(outs))
    samples = copy.deepcopy(samples)
    if family == 'classifier':
        return model.head._get_predictions(logits, samples)
    metas = [s.metainfo for s in samples]
    seg = model.decode_head.predict_by_feat(logits, metas)
    return model.postprocess_result(seg, samples)


def _agree(family, a, b) -> float:
    if family == 'classifier':
        return float(a.pred_label.item() == b.pred_label.item())
    return float((a.pred_sem_seg.data == b.pred_sem_seg.data).float().mean())


def evaluate_classifier(*args, **kwargs) -> Dict:
    """Alias of :func:`evaluate_export` (the name of its first version)."""
    return evaluate_export(*args, **kwargs)


def evaluate_export(
    config: str,
    checkpoint: str,
    onnx_path: str,
    cfg_options: Optional[dict] = None,
) -> Dict:
    """Score the PyTorch student and its export on the test set.

    Args:
        config (str): the config (its ``test_dataloader`` /
            ``test_evaluator`` are used).
        checkpoint (str): the checkpoint the file was exported from.
        onnx_path (str): the exported full classifier / segmentor.
        cfg_options (dict, optional): config overrides.

    Returns:
        dict: ``torch`` and ``onnx`` (metric dicts), ``agreement`` (share
        of images with the same predicted class; for segmentors the mean
        share of pixels with the same label), ``images``.
    """
    from mmengine.evaluator import Evaluator
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    model, cfg = load_student(config, checkpoint, cfg_options)
    family = model_family(model)
    if family not in ('classifier', 'segmentor'):
        raise ValueError(
            'evaluation of the exported graph is supported for classifiers '
            f'and segmentors, not {type(model).__name__}'
        )
    mode = (getattr(model, 'test_cfg', None) or {}).get('mode', 'whole')
    if family == 'segmentor' and mode != 'whole':
        raise ValueError(
            f'model.test_cfg.mode={mode!r}: the exported graph is scored in '
            "'whole' mode only"
        )
    sess = ort_session(onnx_path)
    expect = [
        d if isinstance(d, int) else None for d in sess.get_inputs()[0].shape
    ]
    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        loader = Runner.build_dataloader(loader_cfg)
        evaluators = {
            k: Evaluator(copy.deepcopy(cfg.test_evaluator))
            for k in ('torch', 'onnx')
        }
    for ev in evaluators.values():
        ev.dataset_meta = loader.dataset.metainfo
    same = total = 0
    with torch.no_grad():
        for batch in loader:
            data = model.data_preprocessor(batch, False)
            inputs, samples = data['inputs'], data['data_samples']
            shape = [1] + list(inputs.shape[1:])
            if any(e is not None and e != s for e, s in zip(expect, shape)):
                hint = f'export with --shape {"x".join(map(str, shape))}'
                if family == 'segmentor':
                    hint += (
                        ' (test images of several sizes: pad them to one '
                        "with the data preprocessor's test_cfg, e.g. "
                        '--cfg-options model.architecture.data_preprocessor'
                        '.test_cfg.size=H,W in a GPUSQ config)'
                    )
                raise ValueError(
                    f'the graph takes {expect}, the test pipeline gives '
                    f'{shape}: {hint}'
                )
            preds_t = model.predict(inputs, copy.deepcopy(samples))
            preds_o = _onnx_predict(model, family, sess, inputs, samples)
            for a, b in zip(preds_t, preds_o):
                same += _agree(family, a, b)
                total += 1
            evaluators['torch'].process(preds_t, batch)
            evaluators['onnx'].process(preds_o, batch)
    return dict(
        torch=evaluators['torch'].evaluate(total),
        onnx=evaluators['onnx'].evaluate(total),
        agreement=same / max(total, 1),
        images=total,
    )
