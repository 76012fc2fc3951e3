"""Preference losses on sequence log-probabilities, with TRL's definitions and metric names.

All variants work on the same quantity, the difference of policy and reference log-ratios:

    h = (log pi(y_w|x) - log pi(y_l|x)) - (log ref(y_w|x) - log ref(y_l|x))

and report the implicit rewards r = beta * (log pi(y|x) - log ref(y|x)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


@dataclass
class PreferenceLoss:
    losses: torch.Tensor  # [B], one per preference pair
    chosen_rewards: torch.Tensor  # [B], detached
    rejected_rewards: torch.Tensor  # [B], detached


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    eps = label_smoothing
    if loss_type == "sigmoid":
        # DPO, Rafailov et al. 2023 (arXiv:2305.18290) Eq. 7: -log sigma(beta * h).
        # With eps > 0 this is conservative DPO, Mitchell 2023 ("A note on DPO with noisy
        # preferences", ericmitchell.ai/cdpo.pdf) Eq. 3: labels flipped with probability eps.
        losses = -F.logsigmoid(beta * h) * (1 - eps) - F.logsigmoid(-beta * h) * eps
    elif loss_type == "ipo":
        # IPO, Azar et al. 2023 (arXiv:2310.12036) Eq. 17: (h - 1/(2 tau))^2 with tau = beta.
        # As in TRL, the caller passes length-averaged log-probs for IPO (see logprobs.py).
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        # SLiC-HF, Zhao et al. 2023 (arXiv:2305.10425) Eq. 1 calibration loss
        # max(0, delta - log pi(y_w|x) + log pi(y_l|x)) on the reference-normalised likelihood,
        # as used by RSO (Liu et al. 2023, arXiv:2309.06657); margin delta = 1/beta.
        losses = torch.relu(1 - beta * h)
    elif loss_type == "robust":
        # Robust DPO, Chowdhury et al. 2024 (arXiv:2403.00409): the de-biased loss
        # ((1 - eps) l(y_w, y_l) - eps l(y_l, y_w)) / (1 - 2 eps) with l the DPO loss and eps the
        # label-flip rate; unbiased for the clean-label DPO loss.
        losses = (-F.logsigmoid(beta * h) * (1 - eps) + F.logsigmoid(-beta * h) * eps) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return PreferenceLoss(losses, chosen_rewards, rejected_rewards)
