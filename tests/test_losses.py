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


def test_channels_are_scored_separately_then_averaged():
    # channel 0 perfect (Dice loss 0), channel 1 the hand-worked case above (Dice loss 2/5)
    truth = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0, 0.0]]])[None]
    logits = torch.cat([logits_of([[1, 1, 0, 0]]), logits_of([[1, 0, 1, 0]])], dim=1)
    assert soft_dice_loss(logits, truth).item() == pytest.approx((0 + 2 / 5) / 2)
    # Jaccard: (0 + 1/2) / 2
    assert soft_jaccard_loss(logits, truth).item() == pytest.approx((0 + 1 / 2) / 2)


def test_dice_pools_the_batch_per_channel():
    # two images of one pixel each: |P.T| = 1, |P| = 1, |T| = 2 over the batch -> dice = 3/4
    truth = torch.tensor([1.0, 1.0]).reshape(2, 1, 1, 1)
    logits = torch.tensor([BIG, -BIG]).reshape(2, 1, 1, 1)
    assert soft_dice_loss(logits, truth).item() == pytest.approx(1 - 3 / 4)


def test_bce_with_confident_logits_by_hand():
    # logit ln 3 -> p = 3/4: BCE is -ln(3/4) on a nucleus pixel and -ln(1/4) on background
    logits = torch.full((1, 1, 1, 2), math.log(3))
    truth = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    bce = (-math.log(3 / 4) - math.log(1 / 4)) / 2
    dice = 1 - (2 * 0.75 + 1) / (1.5 + 1 + 1)
    assert bce_dice_loss(logits, truth).item() == pytest.approx(bce + dice, rel=1e-6)
