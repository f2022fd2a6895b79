"""Segmentation losses: pure tensor functions, with thin ``nn.Module`` wrappers.

All take raw logits ``(B, K, H, W)`` and targets of the same shape in {0, 1}
and return a scalar tensor. The soft Dice and Jaccard terms are computed per
channel over the whole batch, then averaged over channels, with ``smooth`` = 1
added to numerator and denominator (so an empty target and empty prediction
cost 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SMOOTH = 1.0


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = SMOOTH) -> torch.Tensor:
    """``1 - (2 |P.T| + s) / (|P| + |T| + s)`` with ``P = sigmoid(logits)``, averaged over channels."""
    _check(logits, target)
    p = torch.sigmoid(logits.float())
    t = target.float()
    dims = (0, 2, 3)
    inter = (p * t).sum(dims)
    dice = (2 * inter + smooth) / (p.sum(dims) + t.sum(dims) + smooth)
    return 1 - dice.mean()


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = SMOOTH) -> torch.Tensor:
    """``1 - (|P.T| + s) / (|P| + |T| - |P.T| + s)``, averaged over channels."""
    _check(logits, target)
    p = torch.sigmoid(logits.float())
    t = target.float()
    dims = (0, 2, 3)
    inter = (p * t).sum(dims)
    union = p.sum(dims) + t.sum(dims) - inter
    return 1 - ((inter + smooth) / (union + smooth)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = SMOOTH) -> torch.Tensor:
    """Binary cross-entropy (mean over pixels) plus soft Dice loss: the published loss."""
    _check(logits, target)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float()) + soft_dice_loss(logits, target, smooth)


LOSSES = {"bce_dice": bce_dice_loss, "jaccard": soft_jaccard_loss, "dice": soft_dice_loss}


class Loss(nn.Module):
    """``nn.Module`` wrapper of one of :data:`LOSSES`, chosen by name."""

    def __init__(self, name: str = "bce_dice") -> None:
        super().__init__()
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
        self.name = name
        self.fn = LOSSES[name]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(logits, target)
