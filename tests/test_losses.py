import math

import pytest
import torch

from nucseg.losses import Loss, bce_dice_loss, soft_dice_loss, soft_jaccard_loss

BIG = 50.0  # sigmoid(50) == 1 and sigmoid(-50) == 0 in float32


def logits_of(mask):
    return torch.where(torch.as_tensor(mask, dtype=torch.bool), BIG, -BIG)[None, None].float()


def test_perfect_prediction_costs_nothing():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = logits_of(t)
    target = t[None, None]
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_jaccard_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert bce_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_and_jaccard_by_hand():
    # truth: 2 pixels; prediction: 1 of them plus 1 wrong pixel -> |P.T| = 1, |P| = 2, |T| = 2
    truth = torch.tensor([[1.0, 1.0, 0.0, 0.0]])[None, None]
    logits = logits_of([[1, 0, 1, 0]])
    # dice = (2*1 + 1) / (2 + 2 + 1) = 3/5 ; jaccard = (1 + 1) / (2 + 2 - 1 + 1) = 2/4
    assert soft_dice_loss(logits, truth).item() == pytest.approx(1 - 3 / 5)
    assert soft_jaccard_loss(logits, truth).item() == pytest.approx(1 - 2 / 4)


def test_bce_part_by_hand():
    # all logits 0 -> p = 0.5 everywhere: BCE = ln 2 whatever the target
    truth = torch.tensor([[1.0, 0.0, 0.0, 0.0]])[None, None]
    logits = torch.zeros_like(truth)
    # dice = (2 * 0.5 + 1) / (4 * 0.5 + 1 + 1) = 2 / 4
    assert bce_dice_loss(logits, truth).item() == pytest.approx(math.log(2) + 0.5)


def test_empty_target_and_empty_prediction_cost_nothing():
    truth = torch.zeros(1, 1, 4, 4)
    assert soft_dice_loss(logits_of(torch.zeros(4, 4)), truth).item() == pytest.approx(0.0, abs=1e-6)


def test_losses_are_differentiable_and_shape_checked():
    logits = torch.zeros(2, 2, 8, 8, requires_grad=True)
    Loss("bce_dice")(logits, torch.ones(2, 2, 8, 8)).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        soft_dice_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        Loss("focal")
