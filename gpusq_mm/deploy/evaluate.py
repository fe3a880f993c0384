"""The exported classifier's metric on a val set, next to PyTorch's.

Runs the config's test dataloader through the model's data preprocessor,
then both the PyTorch (fake-quant) student and the ONNX graph in
onnxruntime (one image at a time: the graph's shape is fixed), and scores
both with the config's test evaluator (e.g. top-1). Classifiers only: a
segmentor's logits need the test-time resize of its varying image sizes,
and detectors export without their heads.
"""

import copy
from typing import Dict, Optional

import numpy as np
import torch

from .loading import load_student
from .parts import model_family
from .verify import ort_session

__all__ = ['evaluate_classifier']


def evaluate_classifier(
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
        onnx_path (str): the exported full classifier.
        cfg_options (dict, optional): config overrides.

    Returns:
        dict: ``torch`` and ``onnx`` (metric dicts), ``agreement`` (share
        of images with the same predicted class), ``images``.
    """
    from mmengine.evaluator import Evaluator
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    model, cfg = load_student(config, checkpoint, cfg_options)
    if model_family(model) != 'classifier':
        raise ValueError(
            'evaluation of the exported graph is supported for classifiers '
            f'only, not {type(model).__name__}'
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
                raise ValueError(
                    f'the graph takes {expect}, the test pipeline gives '
                    f'{shape}: export with --shape {"x".join(map(str, shape))}'
                )
            preds_t = model.predict(inputs, copy.deepcopy(samples))
            logits = np.concatenate(
                [sess.run(None, {'input': x[None].numpy()})[0] for x in inputs]
            )
            preds_o = model.head._get_predictions(
                torch.from_numpy(logits), copy.deepcopy(samples)
            )
            for a, b in zip(preds_t, preds_o):
                same += int(a.pred_label.item() == b.pred_label.item())
                total += 1
            evaluators['torch'].process(preds_t, batch)
            evaluators['onnx'].process(preds_o, batch)
    return dict(
        torch=evaluators['torch'].evaluate(total),
        onnx=evaluators['onnx'].evaluate(total),
        agreement=same / max(total, 1),
        images=total,
    )
