"""Teacher-to-student query correspondence for DETR-like detectors.

A DETR decoder's queries are an unordered set: query ``k`` of the teacher
has no reason to describe the same object as query ``k`` of the student.
We pair them, per image, by a Hungarian matching (Kuhn, 1955; the same
assignment DETR, Carion et al. 2020, uses against ground truth) on the two
models' final-layer predictions, treating the teacher's predictions as the
targets: cost = ``w_cls * (1 - <p_t, p_s>)`` + ``w_l1 * L1(boxes)``
+ ``w_giou * (1 - GIoU(boxes))`` with boxes as normalized ``(cx, cy, w,
h)``. With different numbers of queries, ``min(Q_s, Q_t)`` pairs are made.
"""

from typing import Tuple

import torch
from scipy.optimize import linear_sum_assignment

__all__ = ['box_cxcywh_to_xyxy', 'generalized_box_iou', 'match_queries']


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``(cx, cy, w, h)`` to ``(x1, y1, x2, y2)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of ``xyxy`` boxes ``(N, 4)`` x ``(M, 4)`` -> ``(N, M)``.

    Implements Rezatofighi et al., CVPR 2019.
    """
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(
        min=0
    )
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(
        min=0
    )
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    iou = inter / union.clamp(min=1e-7)
    lt_c = torch.min(a[:, None, :2], b[None, :, :2])
    rb_c = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


@torch.no_grad()
def match_queries(
    student_probs: torch.Tensor,
    student_boxes: torch.Tensor,
    teacher_probs: torch.Tensor,
    teacher_boxes: torch.Tensor,
    cls_weight: float = 1.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pair the queries of one image by a minimum-cost matching.

    Args:
        student_probs (Tensor): ``(Q_s, C)`` class probabilities.
        student_boxes (Tensor): ``(Q_s, 4)`` normalized ``cxcywh`` boxes.
        teacher_probs (Tensor): ``(Q_t, C)`` class probabilities.
        teacher_boxes (Tensor): ``(Q_t, 4)`` normalized ``cxcywh`` boxes.
        cls_weight (float): weight of the class-agreement cost.
            Defaults to 1.
        l1_weight (float): weight of the box L1 cost. Defaults to 5.
        giou_weight (float): weight of the GIoU cost. Defaults to 2.

    Returns:
        tuple[Tensor, Tensor]: student and teacher query indices (int64,
        same length ``min(Q_s, Q_t)``).
    """
    sp, tp = student_probs.float(), teacher_probs.float()
    sb, tb = student_boxes.float(), teacher_boxes.float()
    cost = cls_weight * (1 - sp @ tp.t())
    cost = cost + l1_weight * torch.cdist(sb, tb, p=1)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(sb), box_cxcywh_to_xyxy(tb))
    cost = cost + giou_weight * (1 - giou)
    cost = torch.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=-1e6)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    device = student_probs.device
    return (
        torch.as_tensor(rows, dtype=torch.int64, device=device),
        torch.as_tensor(cols, dtype=torch.int64, device=device),
    )
