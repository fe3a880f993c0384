"""KD pulls the student toward the teacher (seeded short runs)."""

import torch

from gpusq_mm.models import GPUSQ

from .test_gpusq import batch, cls_model, save_model


def _distance(model, data) -> float:
    model.eval()
    with torch.no_grad():
        x = model.data_preprocessor(data, False)['inputs']
        s = model.architecture(x, mode='tensor')
        t = model.teacher.head(model.teacher.extract_feat(x))
    model.train()
    return float((s - t).pow(2).mean())


def _run(teacher_ckpt, distill, steps=10):
    torch.manual_seed(0)
    model = GPUSQ(
        architecture=cls_model(),
        teacher=dict(config=cls_model(), checkpoint=teacher_ckpt),
        distill=distill,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    held_out = batch(n=8, seed=100)
    before = _distance(model, held_out)
    model.train()
    for step in range(steps):
        data = model.data_preprocessor(batch(n=4, seed=step), True)
        losses = model.loss(**data)
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, _distance(model, held_out)


def test_kd_moves_student_toward_teacher(tmp_path):
    ckpt = save_model(cls_model(), str(tmp_path / 't.pth'), seed=1)
    on_before, on_after = _run(ckpt, None)
    off_before, off_after = _run(
        ckpt, dict(logits=dict(weight=0), features=dict(weight=0))
    )
    assert on_before == off_before  # same seeded start
    assert on_after < on_before
    assert on_before - on_after > off_before - off_after
