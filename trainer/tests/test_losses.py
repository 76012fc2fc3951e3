"""Each loss variant against values worked out by hand (formulas in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from dpo_trainer.losses import preference_loss

# Two pairs. Pair 1: h = (-1 - -3) - (-2 - -2.5) = 2 - 0.5 = 1.5.  Pair 2: h = (-4 - -2) - 0 = -2.
POLICY_CHOSEN = torch.tensor([-1.0, -4.0])
POLICY_REJECTED = torch.tensor([-3.0, -2.0])
REF_CHOSEN = torch.tensor([-2.0, -3.0])
REF_REJECTED = torch.tensor([-2.5, -3.0])
BETA = 0.5  # beta * h = 0.75 and -1.0

# -log sigmoid(x) = log(1 + e^-x):  x = 0.75 -> 0.386871006114900,  x = -1 -> 1.313261687518223
NLS_075 = 0.386871006114900
NLS_M1 = 1.313261687518223


def losses(loss_type: str, label_smoothing: float = 0.0) -> list[float]:
    out = preference_loss(
        POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, BETA, loss_type, label_smoothing
    )
    return out.losses.tolist()


def test_sigmoid_is_dpo():
    assert losses("sigmoid") == pytest.approx([NLS_075, NLS_M1], abs=1e-6)


def test_label_smoothing_only_for_robust():
    # TRL 1.16 defines label smoothing for robust DPO only (cDPO's smoothed sigmoid is gone).
    for loss_type in ("sigmoid", "ipo", "hinge"):
        with pytest.raises(ValueError, match="label_smoothing"):
            losses(loss_type, 0.1)


def test_robust_dpo():
    # (0.9 * l(h) - 0.1 * l(-h)) / 0.8 = (0.8 * l(h) - 0.1 * beta * h) / 0.8 = l(h) - beta*h/8
    assert losses("robust", 0.1) == pytest.approx([NLS_075 - 0.75 / 8, NLS_M1 + 1 / 8], abs=1e-6)
    # Without noise it is plain DPO.
    assert losses("robust", 0.0) == pytest.approx([NLS_075, NLS_M1], abs=1e-6)


def test_ipo():
    # On per-token averages: with lengths 1 it is (h - 1/(2 beta))^2 = (1.5 - 1)^2 and (-2 - 1)^2.
    ones = torch.ones(2)
    out = preference_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, BETA, "ipo",
                          chosen_lengths=ones, rejected_lengths=ones)
    assert out.losses.tolist() == pytest.approx([0.25, 9.0], abs=1e-6)
    # Pair 1 with chosen length 2, rejected length 1: (1/2 - -0.5 - 1)^2 = 0; rewards stay on sums.
    out = preference_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, BETA, "ipo",
                          chosen_lengths=torch.tensor([2.0, 1.0]), rejected_lengths=ones)
    assert out.losses.tolist() == pytest.approx([0.0, 9.0], abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, -0.5])


def test_hinge():
    # relu(1 - beta h) = relu(0.25) and relu(2)
    assert losses("hinge") == pytest.approx([0.25, 2.0], abs=1e-6)


def test_rewards_are_beta_scaled_log_ratios():
    out = preference_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, BETA)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5 * 1.0, 0.5 * -1.0])
    assert out.rejected_rewards.tolist() == pytest.approx([0.5 * -0.5, 0.5 * 1.0])
    assert not out.chosen_rewards.requires_grad


def test_gradient_pushes_chosen_up():
    chosen = POLICY_CHOSEN.clone().requires_grad_()
    out = preference_loss(chosen, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, BETA)
    out.losses.sum().backward()
    # d/dc -log s(beta h) = -beta * s(-beta h)
    expected = [-BETA / (1 + math.exp(0.75)), -BETA / (1 + math.exp(-1.0))]
    assert chosen.grad.tolist() == pytest.approx(expected, abs=1e-6)


def test_unknown_loss_lists_valid_ones():
    with pytest.raises(ValueError, match="sigmoid, ipo, hinge, robust"):
        losses("kto")
