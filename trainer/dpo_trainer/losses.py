"""Preference losses with TRL's definitions and metric names: every `loss_type` of TRL 1.16's
DPOConfig, combined with `loss_weights`, plus `ld_alpha` (LD-DPO) and `use_weighting` (WPO).

The definitions are TRL 1.16's `DPOTrainer._compute_loss` (trl/trainer/dpo_trainer.py), checked
to 1e-6 by tests/test_trl_parity.py, which calls TRL's own code on the same log-probabilities.
Most variants work on the difference of policy and reference log-ratios

    h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))

(sums over completion tokens; with `ld_alpha`, the tokens past the shorter completion's length
count ld_alpha times) and every variant reports the implicit rewards
r = beta * (log pi(y|x) - log ref(y|x)) from those sums, as TRL logs them.

TRL computes each term as a mean over its batch. Here the batch is the optimizer step: a term
that is a mean of per-pair values is accumulated over micro-batches (`pair_losses` with the
step's totals), so OOM backoff and resume with another micro-batch give the same update. The
sorting losses (aot, aot_unpaired) couple every pair of the step; train.py computes them over
the whole step's log-probs and hands each micro-batch its share of the gradient
(`coupled_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import torch
import torch.nn.functional as F

from .config import LABEL_SMOOTHING_USERS, LossType

# The config's LossType (also the generated schema's, and the pipeline config's) is the one list.
LOSS_TYPES: tuple[str, ...] = get_args(LossType)
# Loss types that read label_smoothing (robust DPO's flip rate, EXO's epsilon, AOT's smoothed
# logistic); TRL ignores it for the others, config.py refuses it there.
SMOOTHED_LOSS_TYPES = LABEL_SMOOTHING_USERS
# Losses that sort the batch: each pair's term depends on every other pair of the step.
SORTING_LOSS_TYPES = ("aot", "aot_unpaired")

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


@dataclass(frozen=True)
class LossSettings:
    """The loss terms and their parameters (TrainConfig's fields of the same names)."""

    loss_types: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] = (1.0,)
    beta: float = 0.1
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05
    ld_alpha: float | None = None
    use_weighting: bool = False

    @classmethod
    def from_config(cls, config: Any) -> LossSettings:
        types = (config.loss_type,) if isinstance(config.loss_type, str) else tuple(config.loss_type)
        weights = tuple(config.loss_weights) if config.loss_weights is not None else (1.0,) * len(types)
        return cls(types, weights, config.beta, config.label_smoothing, config.discopop_tau,
                   config.ld_alpha, config.use_weighting)

    def __post_init__(self) -> None:
        for loss_type in self.loss_types:
            if loss_type not in LOSS_TYPES:
                raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
        if len(self.loss_weights) != len(self.loss_types):
            raise ValueError("loss_weights must have one weight per loss_type")
        if self.label_smoothing and not set(self.loss_types) & set(SMOOTHED_LOSS_TYPES):
            raise ValueError(f"label_smoothing is only defined for loss_type {', '.join(SMOOTHED_LOSS_TYPES)}")

    @property
    def step_coupled(self) -> bool:
        """True when a pair's loss depends on the other pairs of the step (sorting losses)."""
        return any(t in SORTING_LOSS_TYPES for t in self.loss_types)


@dataclass
class SequenceLogps:
    """Per-row values of one [chosen; rejected] batch, as TRL derives them from per-token log-probs."""

    logps: torch.Tensor  # [2B] sums over completion tokens (LD-DPO-weighted when ld_alpha is set)
    token_sums: torch.Tensor  # [2B] plain sums (what the sft term averages)
    tokens: torch.Tensor  # [2B] completion token counts


def sequence_logps(per_token: torch.Tensor, mask: torch.Tensor, ld_alpha: float | None) -> SequenceLogps:
    """`per_token`/`mask` [2B, T]: log p(token) and the completion mask, rows [chosen; rejected].

    LD-DPO (Liu et al. 2024, arXiv:2409.06411): each pair's first min(len_w, len_l) completion
    tokens count fully and the rest, the verbose excess of the longer one, ld_alpha times."""
    mask = mask.to(per_token.dtype)
    token_sums = (per_token * mask).sum(-1)
    tokens = mask.sum(-1)
    if ld_alpha is None:
        return SequenceLogps(token_sums, token_sums, tokens)
    position = mask.cumsum(-1)  # 1-based index among the row's completion tokens
    shared = torch.minimum(*tokens.chunk(2)).repeat(2)
    shared_mask = (position > 0) & (position <= shared[:, None]) & (mask > 0)
    tail_mask = (position > shared[:, None]) & (mask > 0)
    logps = (per_token * shared_mask).sum(-1) + ld_alpha * (per_token * tail_mask).sum(-1)
    return SequenceLogps(logps, token_sums, tokens)


def wpo_weights(per_token: torch.Tensor, log_sum_sq_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """WPO (Zhou et al. 2024, arXiv:2406.11827) Eq. 2, TRL's aligned form: each sequence's weight is
    exp(mean over completion tokens of log p(token) - log sum_v p(v)^2), a pair's weight the product
    of its two sequences'. Constant for the gradient. [2B] rows in, [B] out."""
    with torch.no_grad():
        mask = mask.to(per_token.dtype)
        aligned = ((per_token - log_sum_sq_probs) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        chosen, rejected = aligned.exp().chunk(2)
        return chosen * rejected


@dataclass
class PairLogps:
    """What every loss term reads, per pair (B pairs)."""

    chosen: torch.Tensor  # policy log pi(y_w|x)
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # completion token counts
    rejected_tokens: torch.Tensor
    chosen_token_sums: torch.Tensor  # plain per-token sums over y_w (sft)
    weights: torch.Tensor | None = None  # WPO pair weights, or None

    @classmethod
    def from_rows(
        cls, policy: SequenceLogps, ref_logps: torch.Tensor, weights: torch.Tensor | None = None
    ) -> PairLogps:
        chosen, rejected = policy.logps.chunk(2)
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        chosen_tokens, rejected_tokens = policy.tokens.chunk(2)
        return cls(chosen, rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens,
                   policy.token_sums.chunk(2)[0], weights)

    @classmethod
    def cat(cls, parts: list[PairLogps]) -> PairLogps:
        def join(name: str) -> Any:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return cls(*(join(name) for name in cls.__dataclass_fields__))

    def pairs(self) -> int:
        return int(self.chosen.shape[0])


def _smoothed_logistic(x: torch.Tensor, eps: float) -> torch.Tensor:
    return -F.logsigmoid(x) * (1 - eps) - F.logsigmoid(-x) * eps


def _term(loss_type: str, p: PairLogps, s: LossSettings, step_pairs: int, step_chosen_tokens: float) -> torch.Tensor:
    """One loss term per pair; the step's term is the sum over the step's pairs / step_pairs."""
    beta, eps = s.beta, s.label_smoothing
    chosen_lr = p.chosen - p.ref_chosen
    rejected_lr = p.rejected - p.ref_rejected
    h = chosen_lr - rejected_lr
    if loss_type == "sigmoid":
        # DPO, Rafailov et al. 2023 (arXiv:2305.18290) Eq. 7: -log sigma(beta * h).
        return -F.logsigmoid(beta * h)
    if loss_type == "hinge":
        # SLiC-HF (arXiv:2305.10425) calibration loss on the reference-normalised likelihood, as in
        # RSO (arXiv:2309.06657); margin 1/beta.
        return torch.relu(1 - beta * h)
    if loss_type == "ipo":
        # IPO (arXiv:2310.12036) Eq. 17 with tau = beta, on log-ratios averaged per completion token.
        h_avg = chosen_lr / p.chosen_tokens.clamp(min=1.0) - rejected_lr / p.rejected_tokens.clamp(min=1.0)
        return (h_avg - 1 / (2 * beta)) ** 2
    if loss_type == "exo_pair":
        # EXO-pref (arXiv:2402.00856) Eq. 16 for K=2: KL(softmax(beta h) || [1 - eps, eps]).
        qw, ql = torch.sigmoid(beta * h), torch.sigmoid(-beta * h)
        log_pw = torch.log1p(torch.tensor(-eps, dtype=h.dtype, device=h.device))
        log_pl = torch.log(torch.tensor(eps, dtype=h.dtype, device=h.device))
        return qw * (F.logsigmoid(beta * h) - log_pw) + ql * (F.logsigmoid(-beta * h) - log_pl)
    if loss_type == "nca_pair":
        # NCA (arXiv:2402.05369), pairwise: absolute rewards, not only their difference.
        rw, rl = beta * chosen_lr, beta * rejected_lr
        return -F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl)
    if loss_type == "robust":
        # Robust DPO (arXiv:2403.00409): de-biased for a label-flip rate eps.
        return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    if loss_type == "bco_pair":
        # BCO's pairwise form as TRL 1.16 defines it: two binary classifiers, no running mean.
        return -F.logsigmoid(beta * chosen_lr) - F.logsigmoid(-beta * rejected_lr)
    if loss_type == "sppo_hard":
        # SPPO (arXiv:2405.00675) with hard probabilities: winner 1, loser 0.
        return (chosen_lr - 0.5 / beta) ** 2 + (rejected_lr + 0.5 / beta) ** 2
    if loss_type == "aot":
        # AOT (arXiv:2406.05882), paired: policy and reference margins each sorted over the batch.
        margins, _ = torch.sort(p.chosen - p.rejected)
        ref_margins, _ = torch.sort(p.ref_chosen - p.ref_rejected)
        return _smoothed_logistic(beta * (margins - ref_margins), eps)
    if loss_type == "aot_unpaired":
        chosen_sorted, _ = torch.sort(chosen_lr)
        rejected_sorted, _ = torch.sort(rejected_lr)
        return _smoothed_logistic(beta * (chosen_sorted - rejected_sorted), eps)
    if loss_type == "apo_zero":
        # APO-zero (arXiv:2408.06266) Eq. 7: chosen up, rejected down.
        return 1 - torch.sigmoid(beta * chosen_lr) + torch.sigmoid(beta * rejected_lr)
    if loss_type == "apo_down":
        # APO-down, Eq. 8: both down, rejected more.
        return torch.sigmoid(beta * chosen_lr) + 1 - torch.sigmoid(beta * h)
    if loss_type == "discopop":
        # DiscoPOP (arXiv:2406.08414) Eq. 5: logistic and exponential losses blended by
        # sigmoid(beta h / tau).
        x = beta * h
        blend = torch.sigmoid(x / s.discopop_tau)
        return -F.logsigmoid(x) * (1 - blend) + torch.exp(-x) * blend
    if loss_type == "sft":
        # Negative log-likelihood of the chosen completions, averaged over all chosen tokens of the
        # step (TRL: of the batch); pair i's share of that mean, scaled so sum / step_pairs is it.
        return -p.chosen_token_sums * (step_pairs / max(step_chosen_tokens, 1.0))
    if loss_type == "sigmoid_norm":
        # DPO on log-ratios averaged per completion token.
        h_avg = chosen_lr / p.chosen_tokens.clamp(min=1.0) - rejected_lr / p.rejected_tokens.clamp(min=1.0)
        return -F.logsigmoid(beta * h_avg)
    raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")


def pair_losses(
    p: PairLogps, s: LossSettings, *, step_pairs: int | None = None, step_chosen_tokens: float | None = None
) -> torch.Tensor:
    """[B] per-pair losses whose sum over the step's pairs divided by `step_pairs` is TRL's loss
    for that step as one batch: sum over terms of weight x mean(term x WPO weight). `step_pairs`
    and `step_chosen_tokens` (the step's completion tokens of y_w) default to this batch's own,
    which is what a step-coupled loss must be given: the whole step."""
    if step_pairs is None:
        step_pairs = p.pairs()
    if step_chosen_tokens is None:
        step_chosen_tokens = float(p.chosen_tokens.sum())
    total = torch.zeros_like(p.chosen)
    for loss_type, weight in zip(s.loss_types, s.loss_weights, strict=True):
        term = _term(loss_type, p, s, step_pairs, step_chosen_tokens)
        if p.weights is not None:
            term = term * p.weights
        total = total + weight * term
    return total


def metric_sums(p: PairLogps, losses: torch.Tensor, beta: float) -> dict[str, float]:
    """Per-pair sums of TRL's metrics over some pairs; a step divides by its pair count, so the
    step's metrics are TRL's per-batch means whatever the micro-batch split."""
    chosen = beta * (p.chosen - p.ref_chosen).detach()
    rejected = beta * (p.rejected - p.ref_rejected).detach()
    return {
        "loss": losses.detach().sum().item(),
        "rewards/chosen": chosen.sum().item(),
        "rewards/rejected": rejected.sum().item(),
        "rewards/accuracies": (chosen > rejected).float().sum().item(),
        "rewards/margins": (chosen - rejected).sum().item(),
        "logps/chosen": p.chosen.detach().sum().item(),
        "logps/rejected": p.rejected.detach().sum().item(),
    }


@dataclass
class CoupledStep:
    """A step-coupled loss worked out on the whole step's (detached) log-probs: its per-pair
    losses, and d(step loss)/d(each pair's log-probs), which a second, gradient-carrying pass
    turns into the exact gradient micro-batch by micro-batch (`surrogate`)."""

    losses: torch.Tensor  # [n]
    d_chosen: torch.Tensor  # [n]
    d_rejected: torch.Tensor
    d_chosen_token_sums: torch.Tensor


def coupled_step(p: PairLogps, s: LossSettings) -> CoupledStep:
    leaves = [t.detach().clone().requires_grad_() for t in (p.chosen, p.rejected, p.chosen_token_sums)]
    q = PairLogps(leaves[0], leaves[1], p.ref_chosen, p.ref_rejected, p.chosen_tokens, p.rejected_tokens,
                  leaves[2], p.weights)
    with torch.enable_grad():
        losses = pair_losses(q, s)
        grads = torch.autograd.grad(losses.sum() / p.pairs(), leaves, allow_unused=True)
    d = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]
    return CoupledStep(losses.detach(), d[0], d[1], d[2])


def surrogate(p: PairLogps, d_chosen: torch.Tensor, d_rejected: torch.Tensor, d_token_sums: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient is the step loss's gradient through these pairs' log-probs (the
    chain rule with the outer derivative held fixed); its value means nothing."""
    return (d_chosen * p.chosen).sum() + (d_rejected * p.rejected).sum() + (d_token_sums * p.chosen_token_sums).sum()
