"""InSPO's math as pure functions (in-sample sequential policy optimisation, arXiv 2412.07639).

Each agent m maximises E_pi[Q_m] - alpha KL(pi || mu_m) + beta H(pi), where Q_m(s, a_m) is the joint
value averaged over the teammates' current policies and mu_m its behaviour policy. The maximiser is

    pi*(a | s) = mu(a | s)^(alpha / (alpha + beta)) exp(Q_m(s, a) / (alpha + beta)) / Z(s)

over the available actions (`closed_form_log_policy`). It is extracted in-sample, by behaviour
cloning the dataset's actions weighted by pi*(a|s) / mu(a|s) (`log_policy_weights`,
`weighted_bc_loss`); writing V(s) = (alpha + beta) log Z(s) (`soft_value`) that weight is
exp((Q_m - V) / (alpha + beta)) * mu^(-beta / (alpha + beta)), the form of the derivation in the
project's InSPO notes. The teammates' current policies enter Q_m through importance ratios on the
dataset's joint actions (`teammate_log_ratios`, `clipped_ratio`, `weighted_regression_loss`), and
the joint critic is trained in-sample with IQL's expectile regression (`expectile_loss`).

Shapes: the functions take any leading axes; the action axis is last.
"""

from __future__ import annotations

import torch

UNAVAILABLE = -1e9  # a logit that softmax turns into probability 0 (the mask for unavailable actions)


def masked_log_softmax(logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """log softmax over the available actions; unavailable actions get a very negative log-probability."""
    return torch.log_softmax(logits.masked_fill(~avail.bool(), UNAVAILABLE), dim=-1)


def closed_form_log_policy(
    log_mu: torch.Tensor, q: torch.Tensor, avail: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """log pi*(. | s) with pi* proportional to mu^(alpha/(alpha+beta)) exp(q/(alpha+beta)) over the
    available actions. log_mu and q [..., A]."""
    temperature = alpha + beta
    return masked_log_softmax(alpha / temperature * log_mu + q / temperature, avail)


def soft_value(
    log_mu: torch.Tensor, q: torch.Tensor, avail: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """V(s) = (alpha + beta) log sum_a mu^(alpha/(alpha+beta)) exp(q/(alpha+beta)) over available
    actions [..., 1]: the normaliser that makes the weights below pi*/mu exactly."""
    temperature = alpha + beta
    logits = (alpha / temperature * log_mu + q / temperature).masked_fill(~avail.bool(), UNAVAILABLE)
    return temperature * torch.logsumexp(logits, dim=-1, keepdim=True)


def log_policy_weights(
    q_taken: torch.Tensor, value: torch.Tensor, log_mu_taken: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """log of the weighted-BC weight of a dataset action: (q - V) / (alpha + beta) - beta / (alpha +
    beta) * log mu(a). With V = `soft_value` this is log pi*(a|s) - log mu(a|s)."""
    temperature = alpha + beta
    return (q_taken - value) / temperature - beta / temperature * log_mu_taken


def anchored_log_weights(
    q_taken: torch.Tensor,
    value: torch.Tensor,
    log_anchor_taken: torch.Tensor,
    log_mu_taken: torch.Tensor,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """log pi*(a|s) - log mu(a|s) for the closed form regularised toward an `anchor` policy instead
    of the behaviour policy mu that drew the action: pi* ~ anchor^(alpha/(alpha+beta)) exp(q/(alpha+
    beta)), `value` = `soft_value` over the anchor. Equals `log_policy_weights` when anchor = mu."""
    return log_policy_weights(q_taken, value, log_anchor_taken, alpha, beta) + log_anchor_taken - log_mu_taken


def weighted_bc_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    avail: torch.Tensor,
    log_weights: torch.Tensor,
    mask: torch.Tensor,
    max_log_weight: float,
) -> torch.Tensor:
    """-sum(w * log pi(a | s) * mask) / sum(mask), with w = exp(min(log_weights, max_log_weight)).

    logits [..., A], actions [..., 1] (int), avail [..., A], log_weights and mask [..., 1]. The
    weights are constants (no gradient). Clipping the exponent keeps one rare action with a large
    advantage and a tiny mu from dominating a batch (AWR and IQL clip their weights the same way)."""
    weights = torch.exp(log_weights.detach().clamp(max=max_log_weight))
    log_pi = masked_log_softmax(logits, avail).gather(-1, actions)
    return -(weights * log_pi * mask).sum() / mask.sum().clamp(min=1.0)


def teammate_log_ratios(log_pi: torch.Tensor, log_mu: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """For every agent i, the sum over its teammates j != i of log pi_j(a_j) - log mu_j(a_j) at the
    dataset's actions. log_pi, log_mu [..., n, A]; actions [..., n, 1]. Returns [..., n]."""
    taken = (log_pi - log_mu).gather(-1, actions).squeeze(-1)  # [..., n]
    return taken.sum(-1, keepdim=True) - taken


def clipped_ratio(log_ratio: torch.Tensor, clip: float) -> torch.Tensor:
    """The importance ratio exp(log_ratio), clipped from above at `clip` (a product of ratios of
    several teammates has a heavy tail; the clip bounds its variance at the cost of some bias)."""
    return torch.exp(log_ratio.clamp(max=torch.log(torch.tensor(clip)).item()))


def weighted_regression_loss(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """sum(w * mask * (prediction - target)^2) / sum(w * mask): a self-normalised weighted mean, so
    the prediction fits the w-weighted conditional mean of the target (Q_m from joint values)."""
    w = weights.detach() * mask
    return (w * (prediction - target.detach()) ** 2).sum() / w.sum().clamp(min=1e-8)


def expectile_loss(difference: torch.Tensor, expectile: float, mask: torch.Tensor) -> torch.Tensor:
    """IQL's asymmetric squared loss on difference = target - prediction, masked mean:
    |expectile - 1(difference < 0)| * difference^2. expectile 0.5 is plain regression; towards 1
    the prediction approaches the largest target seen in the data."""
    weight = torch.where(difference < 0, 1.0 - expectile, expectile)
    return (weight * difference**2 * mask).sum() / mask.sum().clamp(min=1.0)
