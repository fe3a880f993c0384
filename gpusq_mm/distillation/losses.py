"""Knowledge-distillation losses of GPUSQ (pure torch).

GPUSQ-ViT (Yu et al., CVPR 2023, arXiv 2305.10727) recovers the accuracy of
the 2:4 sparse and the quantized student with
``L = alpha * L_hard + beta * L_soft + gamma * L_feat``: ``L_soft`` is the
KL divergence between temperature-softened class distributions of teacher
and student (Hinton et al., 2015, scaled by ``T**2`` so gradients keep their
size across temperatures), ``L_feat`` a distance between feature maps (MSE
here; the paper's exact form is not public).
"""

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['feature_loss', 'kl_div_softmax', 'kl_div_sigmoid', 'masked_mean']


def masked_mean(
    values: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is True.

    Returns a zero that keeps the graph when no position is valid.
    """
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def kl_div_softmax(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    dim: int = -1,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``T**2 * KL(softmax(t / T) || softmax(s / T))`` averaged.

    Args:
        student (Tensor): student logits.
        teacher (Tensor): teacher logits, the same shape (no gradient).
        temperature (float): softening temperature ``T``. Defaults to 1.
        dim (int): the class dimension. Defaults to -1.
        mask (Tensor, optional): bool, the logits' shape without ``dim``;
            positions where it is False are ignored. Defaults to None.

    Returns:
        Tensor: scalar, the KL summed over classes and averaged over the
        (valid) positions.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f'logit shapes differ: student {tuple(student.shape)} vs '
            f'teacher {tuple(teacher.shape)}'
        )
    t = float(temperature)
    log_p_s = F.log_softmax(student.float() / t, dim=dim)
    log_p_t = F.log_softmax(teacher.detach().float() / t, dim=dim)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=dim)
    return masked_mean(kl, mask) * t * t


def kl_div_sigmoid(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    dim: int = -1,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Binary KL of independent sigmoid scores (focal / RPN heads).

    Each logit is a Bernoulli distribution ``sigmoid(x / T)``; the binary
    KL is summed over ``dim`` and averaged over the (valid) positions,
    scaled by ``T**2``.

    Args:
        student (Tensor): student logits.
        teacher (Tensor): teacher logits, the same shape.
        temperature (float): softening temperature. Defaults to 1.
        dim (int): the class dimension. Defaults to -1.
        mask (Tensor, optional): bool mask of the positions (the shape
            without ``dim``). Defaults to None.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f'logit shapes differ: student {tuple(student.shape)} vs '
            f'teacher {tuple(teacher.shape)}'
        )
    t = float(temperature)
    s = student.float() / t
    tt = teacher.detach().float() / t
    p_t = torch.sigmoid(tt)
    # KL(Bern(p_t) || Bern(p_s)) with log-sigmoid for stability
    kl = p_t * (F.logsigmoid(tt) - F.logsigmoid(s)) + (1 - p_t) * (
        F.logsigmoid(-tt) - F.logsigmoid(-s)
    )
    return masked_mean(kl.sum(dim=dim), mask) * t * t


def feature_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: str = 'mse'
) -> torch.Tensor:
    """Distance between a student and a teacher feature map.

    Args:
        student (Tensor): the student feature (after its connector).
        teacher (Tensor): the teacher feature, the same shape.
        kind (str): ``'mse'`` (mean squared error) or ``'nmse'``
            (squared error divided by the teacher's mean squared value per
            sample, i.e. scale free). Defaults to ``'mse'``.

    Returns:
        Tensor: scalar loss.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f'feature shapes differ: student {tuple(student.shape)} vs '
            f'teacher {tuple(teacher.shape)}'
        )
    teacher = teacher.detach().float()
    diff = (student.float() - teacher).pow(2)
    if kind == 'mse':
        return diff.mean()
    if kind == 'nmse':
        n = student.shape[0]
        num = diff.reshape(n, -1).mean(1)
        den = teacher.pow(2).reshape(n, -1).mean(1).clamp(min=1e-6)
        return (num / den).mean()
    raise ValueError(
        f"feature loss kind must be 'mse' or 'nmse', got {kind!r}"
    )
