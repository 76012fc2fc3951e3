"""Each loss variant against values worked out by hand (formulas in the comments), and the
micro-batch algebra the trainer relies on: a step's loss and gradient do not depend on how the
step is split, for per-pair losses and for the sorting ones alike."""

from __future__ import annotations

import math

import pytest
import torch

from dpo_trainer.losses import (
    LossSettings,
    PairLogps,
    coupled_step,
    pair_losses,
    sequence_logps,
    surrogate,
    wpo_weights,
)

# Two pairs. Pair 1: h = (-1 - -3) - (-2 - -2.5) = 2 - 0.5 = 1.5.  Pair 2: h = (-4 - -2) - 0 = -2.
POLICY_CHOSEN = torch.tensor([-1.0, -4.0])
POLICY_REJECTED = torch.tensor([-3.0, -2.0])
REF_CHOSEN = torch.tensor([-2.0, -3.0])
REF_REJECTED = torch.tensor([-2.5, -3.0])
BETA = 0.5  # beta * h = 0.75 and -1.0

# -log sigmoid(x) = log(1 + e^-x):  x = 0.75 -> 0.386871006114900,  x = -1 -> 1.313261687518223
NLS_075 = 0.386871006114900
NLS_M1 = 1.313261687518223


def pairs(chosen=POLICY_CHOSEN, lengths=(1.0, 1.0), token_sums=None, weights=None) -> PairLogps:
    ones = torch.ones(2)
    return PairLogps(chosen, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, torch.tensor(lengths), ones,
                     chosen if token_sums is None else token_sums, weights)


def settings(loss_type, weights=None, **kw) -> LossSettings:
    types = (loss_type,) if isinstance(loss_type, str) else tuple(loss_type)
    return LossSettings(types, weights or (1.0,) * len(types), beta=kw.pop("beta", BETA), **kw)


def losses(loss_type, **kw) -> list[float]:
    return pair_losses(pairs(), settings(loss_type, **kw)).tolist()


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_sigmoid_is_dpo():
    assert losses("sigmoid") == pytest.approx([NLS_075, NLS_M1], abs=1e-6)


def test_label_smoothing_only_where_trl_reads_it():
    for loss_type in ("sigmoid", "ipo", "hinge", "bco_pair", "sft"):
        with pytest.raises(ValueError, match="label_smoothing"):
            settings(loss_type, label_smoothing=0.1)
    settings(("sigmoid", "robust"), label_smoothing=0.1)  # one term reads it: allowed


def test_robust_dpo():
    # (0.9 * l(h) - 0.1 * l(-h)) / 0.8 = (0.8 * l(h) - 0.1 * beta * h) / 0.8 = l(h) - beta*h/8
    assert losses("robust", label_smoothing=0.1) == pytest.approx([NLS_075 - 0.75 / 8, NLS_M1 + 1 / 8], abs=1e-6)
    assert losses("robust") == pytest.approx([NLS_075, NLS_M1], abs=1e-6)


def test_ipo_and_sigmoid_norm_average_per_token():
    # Lengths 1: (h - 1/(2 beta))^2 = (1.5 - 1)^2 and (-2 - 1)^2.
    assert losses("ipo") == pytest.approx([0.25, 9.0], abs=1e-6)
    # Pair 1 with chosen length 2: h_avg = 1/2 - -0.5 = 1 -> (1 - 1)^2 = 0 and -log s(0.5).
    p = pairs(lengths=(2.0, 1.0))
    assert pair_losses(p, settings("ipo")).tolist() == pytest.approx([0.0, 9.0], abs=1e-6)
    assert pair_losses(p, settings("sigmoid_norm")).tolist() == pytest.approx(
        [math.log1p(math.exp(-0.5)), NLS_M1], abs=1e-6)


def test_hinge():
    assert losses("hinge") == pytest.approx([0.25, 2.0], abs=1e-6)  # relu(1 - beta h)


def test_pairwise_reward_losses():
    # Rewards r_w = beta (chosen - ref): 0.5, -0.5; r_l: -0.25, 0.5.
    rw, rl = [0.5, -0.5], [-0.25, 0.5]
    nls = lambda x: math.log1p(math.exp(-x))  # noqa: E731
    assert losses("bco_pair") == pytest.approx([nls(a) + nls(-b) for a, b in zip(rw, rl)], abs=1e-6)
    assert losses("nca_pair") == pytest.approx(
        [nls(a) + 0.5 * nls(-a) + 0.5 * nls(-b) for a, b in zip(rw, rl)], abs=1e-6)
    assert losses("apo_zero") == pytest.approx([1 - sigmoid(a) + sigmoid(b) for a, b in zip(rw, rl)], abs=1e-6)
    assert losses("apo_down") == pytest.approx(
        [sigmoid(a) + 1 - sigmoid(a - b) for a, b in zip(rw, rl)], abs=1e-6)
    # SPPO hard: (log-ratio_w - 1/(2 beta))^2 + (log-ratio_l + 1/(2 beta))^2, log-ratios 1, -1 and -0.5, 1.
    assert losses("sppo_hard") == pytest.approx([0 + 0.25, 4 + 4], abs=1e-6)


def test_exo_pair_is_a_kl_to_the_smoothed_label():
    eps = 0.1
    expected = []
    for x in (0.75, -1.0):
        q = sigmoid(x)
        expected.append(q * math.log(q / (1 - eps)) + (1 - q) * math.log((1 - q) / eps))
    assert losses("exo_pair", label_smoothing=eps) == pytest.approx(expected, abs=1e-6)


def test_discopop_blends_logistic_and_exponential():
    tau = 0.5
    expected = [(1 - sigmoid(x / tau)) * math.log1p(math.exp(-x)) + sigmoid(x / tau) * math.exp(-x) for x in (0.75, -1.0)]
    assert losses("discopop", discopop_tau=tau) == pytest.approx(expected, abs=1e-6)


def test_aot_sorts_the_margins():
    # Policy margins chosen - rejected: 2, -2 -> sorted -2, 2; reference margins 0.5, 0 -> 0, 0.5.
    nls = lambda x: math.log1p(math.exp(-x))  # noqa: E731
    assert losses("aot") == pytest.approx([nls(BETA * -2), nls(BETA * 1.5)], abs=1e-6)
    # Unpaired: chosen log-ratios 1, -1 -> -1, 1; rejected -0.5, 1 -> -0.5, 1; deltas -0.5, 0.
    assert losses("aot_unpaired") == pytest.approx([nls(BETA * -0.5), nls(0.0)], abs=1e-6)


def test_sft_is_the_token_mean_nll_of_the_chosen():
    # Token sums -1 and -4 over 2 + 1 tokens: mean NLL 5/3, split 2 * (1/3, 4/3) per pair.
    p = pairs(lengths=(2.0, 1.0))
    out = pair_losses(p, settings("sft"))
    assert out.sum().item() / 2 == pytest.approx(5 / 3)
    assert out.tolist() == pytest.approx([2 / 3, 8 / 3])


def test_loss_weights_sum_the_terms():
    mpo = settings(("sigmoid", "bco_pair", "sft"), (0.8, 0.2, 1.0))
    expected = 0.8 * torch.tensor(losses("sigmoid")) + 0.2 * torch.tensor(losses("bco_pair")) + torch.tensor(losses("sft"))
    assert pair_losses(pairs(), mpo).tolist() == pytest.approx(expected.tolist(), abs=1e-6)


def test_wpo_weights_multiply_each_pair():
    w = torch.tensor([0.5, 0.25])
    assert pair_losses(pairs(weights=w), settings("sigmoid")).tolist() == pytest.approx([0.5 * NLS_075, 0.25 * NLS_M1])


def test_wpo_weight_is_the_probability_relative_to_the_expected_one():
    # Rows [chosen; chosen; rejected; rejected]. p(token) = 1, sum p^2 = 1: weight 1. p = 1/2 of two
    # equal tokens (sum p^2 = 1/2): 1. p = 1/2, the other half spread thin (sum p^2 -> 1/4): 2.
    per_token = torch.tensor([[0.0], [math.log(0.5)], [math.log(0.5)], [0.0]])
    log_sum_sq = torch.tensor([[0.0], [math.log(0.5)], [math.log(0.25)], [0.0]])
    # Pair weights: chosen x rejected weight.
    assert wpo_weights(per_token, log_sum_sq, torch.ones(4, 1)).tolist() == pytest.approx([1.0 * 2.0, 1.0 * 1.0])


def test_ld_alpha_discounts_the_longer_completions_excess():
    # Chosen 3 tokens, rejected 1: shared length 1, so chosen = t1 + alpha (t2 + t3), rejected = t1.
    per_token = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out = sequence_logps(per_token, mask, 0.5)
    assert out.logps.tolist() == pytest.approx([-1 - 0.5 * 5, -4.0])
    assert out.token_sums.tolist() == pytest.approx([-6.0, -4.0]) and out.tokens.tolist() == [3.0, 1.0]
    assert sequence_logps(per_token, mask, 1.0).logps.tolist() == pytest.approx([-6.0, -4.0])
    assert sequence_logps(per_token, mask, None).logps.tolist() == pytest.approx([-6.0, -4.0])


def test_gradient_pushes_chosen_up():
    chosen = POLICY_CHOSEN.clone().requires_grad_()
    pair_losses(pairs(chosen=chosen), settings("sigmoid")).sum().backward()
    # d/dc -log s(beta h) = -beta * s(-beta h)
    expected = [-BETA / (1 + math.exp(0.75)), -BETA / (1 + math.exp(-1.0))]
    assert chosen.grad.tolist() == pytest.approx(expected, abs=1e-6)


def test_unknown_loss_lists_valid_ones():
    with pytest.raises(ValueError, match="sigmoid, hinge, ipo, exo_pair"):
        losses("kto")


# ------------------------------------------------------------------------------------------
# Micro-batches: the step's loss and gradient whatever the split


def random_pairs(n: int, seed: int) -> tuple[PairLogps, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    leaves = [(-torch.rand(n, generator=g, dtype=torch.float64) * 10).requires_grad_() for _ in range(2)]
    lengths = torch.randint(1, 9, (2, n), generator=g).to(torch.float64)
    token_sums = leaves[0] * 1.3  # plain sums differ from LD-weighted ones; both carry the gradient
    p = PairLogps(leaves[0], leaves[1], -torch.rand(n, generator=g, dtype=torch.float64) * 10,
                  -torch.rand(n, generator=g, dtype=torch.float64) * 10, lengths[0], lengths[1], token_sums)
    return p, leaves


def split(p: PairLogps, part: slice) -> PairLogps:
    return PairLogps(*(None if v is None else v[part] for v in vars(p).values()))


SEPARABLE = [settings(("sigmoid", "bco_pair", "sft"), (0.8, 0.2, 1.0)), settings(("ipo", "sft")),
             settings("exo_pair", label_smoothing=0.01)]
COUPLED = [settings("aot", label_smoothing=0.1), settings(("aot_unpaired", "sft", "sigmoid"))]


@pytest.mark.parametrize("s", SEPARABLE, ids=lambda s: "+".join(s.loss_types))
def test_per_pair_losses_accumulate_over_micro_batches(s):
    n = 8
    p, leaves = random_pairs(n, 0)
    whole = pair_losses(p, s).sum() / n
    grads = torch.autograd.grad(whole, leaves, retain_graph=True)
    tokens = float(p.chosen_tokens.sum())
    parts = [pair_losses(split(p, slice(i, i + 3)), s, step_pairs=n, step_chosen_tokens=tokens).sum() / n
             for i in range(0, n, 3)]
    assert sum(parts).item() == pytest.approx(whole.item(), abs=1e-12)
    split_grads = torch.autograd.grad(sum(parts), leaves)
    for a, b in zip(grads, split_grads):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("s", COUPLED, ids=lambda s: "+".join(s.loss_types))
def test_coupled_losses_get_the_whole_steps_gradient_per_micro_batch(s):
    n = 8
    p, leaves = random_pairs(n, 1)
    whole = pair_losses(p, s).sum() / n
    grads = torch.autograd.grad(whole, leaves, retain_graph=True)
    # A micro-batch's own sort differs from the step's: splitting naively changes the loss.
    naive = sum(pair_losses(split(p, slice(i, i + 3)), s).sum() for i in range(0, n, 3)) / n
    assert abs(naive.item() - whole.item()) > 1e-6
    step = coupled_step(p, s)
    assert step.losses.sum().item() / n == pytest.approx(whole.item(), abs=1e-12)
    total = 0
    for i in range(0, n, 3):
        part = slice(i, i + 3)
        total = total + surrogate(split(p, part), step.d_chosen[part], step.d_rejected[part], step.d_chosen_token_sums[part])
    for a, b in zip(grads, torch.autograd.grad(total, leaves)):
        assert torch.allclose(a, b, atol=1e-12)
