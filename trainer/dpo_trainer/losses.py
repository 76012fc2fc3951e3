"""Preference losses on sequence log-probabilities, with TRL's definitions and metric names.

The definitions are TRL 1.16's `DPOTrainer._compute_loss` (trl/trainer/dpo_trainer.py), checked
to 1e-6 by tests/test_trl_parity.py, which calls TRL's own code on the same log-probabilities.
All variants work on the difference of policy and reference log-ratios

    h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))

(sums over completion tokens) and report the implicit rewards r = beta * (log pi(y|x) - log ref(y|x)),
also from the sums -- for IPO too, whose *loss* alone uses per-token averages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F

from .config import LossType

# The config's LossType (also the generated schema's, and the pipeline config's) is the one list.
LOSS_TYPES: tuple[str, ...] = get_args(LossType)
# Loss types for which label_smoothing means something (TRL: "Label smoothing parameter used in
# Robust DPO and EXO"); TRL ignores it for the others, we refuse it (config.py) so it is never
# silently ignored.
SMOOTHED_LOSS_TYPES = ("robust",)

# The per-step metrics, named and defined as TRL's DPOTrainer logs them.
METRIC_NAMES = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


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
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> PreferenceLoss:
    """Per-pair losses from summed completion log-probs; `*_lengths` (completion token counts)
    are needed by IPO only."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    if label_smoothing and loss_type not in SMOOTHED_LOSS_TYPES:
        raise ValueError(f"label_smoothing is only defined for loss_type {', '.join(SMOOTHED_LOSS_TYPES)}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios
    eps = label_smoothing
    if loss_type == "sigmoid":
        # DPO, Rafailov et al. 2023 (arXiv:2305.18290) Eq. 7: -log sigma(beta * h).
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        # IPO, Azar et al. 2023 (arXiv:2310.12036) Eq. 17: (h - 1/(2 tau))^2 with tau = beta, on
        # log-ratios averaged over each completion's tokens (TRL, confirmed with the IPO authors).
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type 'ipo' needs the completion lengths")
        h_avg = chosen_logratios / chosen_lengths.clamp(min=1.0) - rejected_logratios / rejected_lengths.clamp(min=1.0)
        losses = (h_avg - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        # SLiC-HF, Zhao et al. 2023 (arXiv:2305.10425) Eq. 1 calibration loss
        # max(0, delta - log pi(y_w|x) + log pi(y_l|x)) on the reference-normalised likelihood,
        # as used by RSO (Liu et al. 2023, arXiv:2309.06657); margin delta = 1/beta.
        losses = torch.relu(1 - beta * h)
    else:  # robust
        # Robust DPO, Chowdhury et al. 2024 (arXiv:2403.00409): the de-biased loss
        # ((1 - eps) l(y_w, y_l) - eps l(y_l, y_w)) / (1 - 2 eps) with l the DPO loss and eps the
        # label-flip rate; unbiased for the clean-label DPO loss.
        losses = (-F.logsigmoid(beta * h) * (1 - eps) + F.logsigmoid(-beta * h) * eps) / (1 - 2 * eps)
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return PreferenceLoss(losses, chosen_rewards, rejected_rewards)


def metric_sums(
    out: PreferenceLoss, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor
) -> dict[str, float]:
    """Per-pair sums of TRL's metrics over one micro-batch; a step divides by its pair count, so
    the step's metrics are TRL's per-batch means whatever the micro-batch split."""
    chosen, rejected = out.chosen_rewards, out.rejected_rewards
    return {
        "loss": out.losses.detach().sum().item(),
        "rewards/chosen": chosen.sum().item(),
        "rewards/rejected": rejected.sum().item(),
        "rewards/accuracies": (chosen > rejected).float().sum().item(),
        "rewards/margins": (chosen - rejected).sum().item(),
        "logps/chosen": policy_chosen_logps.detach().sum().item(),
        "logps/rejected": policy_rejected_logps.detach().sum().item(),
    }
