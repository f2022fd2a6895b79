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


# --- the semantic task: softmax over classes ------------------------------------------------


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None, smooth: float = SMOOTH) -> torch.Tensor:
    """Cross-entropy plus multi-class soft Dice loss of softmax outputs.

    Parameters
    ----------
    logits : (B, K, H, W) tensor
    target : (B, K, H, W) tensor, one-hot in {0, 1}
    weights : (K,) tensor, optional
        Class weights of both terms (cross-entropy: weighted mean over pixels; Dice: weighted
        mean over classes); equal when ``None``.

    Returns
    -------
    scalar tensor
        ``CE + 1 - mean_c (2 |P_c T_c| + s) / (|P_c| + |T_c| + s)``, the Dice term computed per
        class over the whole batch; 0 for a perfect, confident prediction.
    """
    if logits.shape != target.shape or logits.ndim != 4:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must both be (B, K, H, W)")
    logits, target = logits.float(), target.float()
    if weights is not None:
        weights = weights.to(logits.device, torch.float32)
    ce = F.cross_entropy(logits, target.argmax(1), weight=weights)
    p = torch.softmax(logits, dim=1)
    dims = (0, 2, 3)
    dice = (2 * (p * target).sum(dims) + smooth) / (p.sum(dims) + target.sum(dims) + smooth)
    w = torch.ones_like(dice) if weights is None else weights
    return ce + 1 - (dice * w).sum() / w.sum()


class CEDiceLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`ce_dice_loss` with fixed class weights."""

    def __init__(self, weights: list[float] | tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32) if weights is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ce_dice_loss(logits, target, self.weights)
