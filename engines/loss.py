"""Training loss of paper Eq. 11: BCE on positives + hard negatives, L1 on sub-voxel coords."""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEGATIVES_PER_POSITIVE = 3


def hard_negative_mask(
    bce: torch.Tensor, labels: torch.Tensor, ratio: int = NEGATIVES_PER_POSITIVE
) -> torch.Tensor:
    """Select, per image, the ``ratio * max(n_pos, 1)`` negatives with the largest BCE.

    Args:
        bce: ``(B, ...)`` per-voxel BCE.
        labels: ``(B, ...)`` 0/1 voxel labels, same shape.

    Returns:
        ``(B, ...)`` bool mask of the chosen negatives (ties broken by position).
    """
    b = bce.shape[0]
    flat_bce = bce.detach().reshape(b, -1)
    flat_lab = labels.reshape(b, -1) > 0.5
    neg_loss = flat_bce.masked_fill(flat_lab, -1.0)
    n_pos = flat_lab.sum(dim=1)
    n_neg = (~flat_lab).sum(dim=1)
    k = torch.minimum(ratio * n_pos.clamp_min(1), n_neg)
    order = torch.argsort(neg_loss, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (ranks < k[:, None]).reshape(bce.shape)


def voxel_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Eq. 11 averaged per positive voxel.

    Args:
        logits: ``(B, P, 4, H, W)`` pre-sigmoid network output.
        targets: ``(B, P, 4, H, W)``: label, zeta_x, zeta_y, zeta_z.

    Returns:
        The scalar loss and a dict of its parts (floats) for logging.
    """
    labels = targets[:, :, 0]
    conf_logit = logits[:, :, 0]
    bce = F.binary_cross_entropy_with_logits(conf_logit, labels, reduction="none")
    pos = labels > 0.5
    neg = hard_negative_mask(bce, labels)
    n_pos = pos.sum().clamp_min(1)
    bce_term = (bce * (pos | neg)).sum() / n_pos
    coords = torch.sigmoid(logits[:, :, 1:])
    l1 = (coords - targets[:, :, 1:]).abs().sum(dim=2)
    l1_term = (l1 * pos).sum() / n_pos
    loss = bce_term + l1_term
    parts = {
        "bce": float(bce_term.detach()),
        "l1": float(l1_term.detach()),
        "positives": int(pos.sum()),
    }
    return loss, parts
