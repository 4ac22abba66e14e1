"""The learner's losses as pure functions of tensors: TD, OVM, and the CQL family (MACQL, CFCQL,
Cal-QL), plus the Monte-Carlo returns Cal-QL needs.

Shapes: B episodes, T trained steps, n agents, A actions, E mixing embedding. `mask` [B, T, 1] marks
the trained steps (`targets.training_mask`); every loss is a mean over them.

Squared errors carry PyMARL2's (and CFCQL's) factor 0.5: L_TD = 0.5 * sum(mask * (Q - y)^2) / sum(mask).
The CQL weights of the paper (Table 3: 0.05 ... 50) were tuned against that scale in CFCQL's code, so
every squared error here (TD and both halves of OVM) uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.networks import MixingWeights, mix_samples

# A finite stand-in for -inf where an action is unavailable: exp() of it is exactly 0 in float32, and
# rows with no available action at all (padding) stay finite, so they add nothing, not NaN, once masked.
UNAVAILABLE = -1e10


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, T, 1] over the trained steps."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def td_loss(q_tot: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PyMARL2's TD loss: 0.5 * masked mean of (Q_tot - y)^2; y is treated as a constant."""
    return masked_mean(0.5 * (q_tot - targets.detach()).pow(2), mask)


def ovm_target(q_offline: torch.Tensor, y_td: torch.Tensor) -> torch.Tensor:
    """OVM's target: y_OVM = max(Q_offline(tau_t, a_t), y_TD), elementwise."""
    return torch.maximum(q_offline, y_td)


def ovm_loss(
    q_tot: torch.Tensor, y_td: torch.Tensor, q_offline: torch.Tensor, mask: torch.Tensor, memory_coef: float
) -> torch.Tensor:
    """OVM loss (Eq. 5): lambda * L(Q, y_OVM) + (1 - lambda) * L(Q, y_TD), each L a `td_loss`."""
    loss = memory_coef * td_loss(q_tot, ovm_target(q_offline, y_td), mask)
    if memory_coef < 1.0:
        loss = loss + (1.0 - memory_coef) * td_loss(q_tot, y_td, mask)
    return loss


def mc_returns(reward: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte-Carlo return-to-go R_t = sum_{k >= t} gamma^(k - t) r_k over the trained steps of each
    episode, [B, T, 1] (0 on untrained steps). A time-limit end simply stops the sum."""
    T = reward.shape[1]
    returns = torch.zeros_like(reward)
    following = torch.zeros_like(reward[:, 0])
    for t in range(T - 1, -1, -1):
        following = mask[:, t] * (reward[:, t] + gamma * following)
        returns[:, t] = following
    return returns


def sample_uniform_actions(avail: torch.Tensor, num_samples: int, generator=None) -> torch.Tensor:
    """`num_samples` joint actions per step, each agent's action uniform over *all* A actions,
    available or not (CFCQL's `raw_cql` draws): avail [B, T, n, A] (only its shape and device are
    read) -> actions [B, T, K, n] int64."""
    B, T, n, A = avail.shape
    return torch.randint(0, A, (B, T, num_samples, n), generator=generator, device=avail.device)


def sample_available_actions(avail: torch.Tensor, num_samples: int, generator=None) -> torch.Tensor:
    """`num_samples` joint actions per step, each agent's action uniform over its available actions
    (so the joint action is uniform over the available joint actions): avail [B, T, n, A] bool ->
    actions [B, T, K, n] int64. Rows with no available action get action 0."""
    B, T, n, A = avail.shape
    counts = avail.sum(-1, keepdim=True)  # [B, T, n, 1]
    u = torch.rand((B, T, n, num_samples), generator=generator, device=avail.device)
    rank = (u * counts).long().clamp(max=A - 1)  # which available action: 0 .. count - 1
    # Available actions first, in their order: the rank-th of them is one gather away (a search
    # per draw was most of the CQL term's time).
    available_first = torch.argsort((~avail.bool()).to(torch.uint8), dim=-1, stable=True)  # [B, T, n, A]
    actions = available_first.gather(-1, rank)  # [B, T, n, K]
    return actions.transpose(-1, -2)  # [B, T, K, n]


def trained_rows(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the trained steps of a [B, T, 1] mask in its flattened [B * T] order: the CQL
    terms are masked means, so the padding after short episodes (half of a 128-episode lite batch)
    need not be computed at all."""
    return mask.reshape(-1).nonzero().squeeze(-1)


def greedy_actions(agent_qs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """The current policy of a QMIX learner: each agent's greedy available action, [B, T, n] int64
    (no gradient through the choice). Rows with no available action pick action 0."""
    return agent_qs.detach().masked_fill(~avail.bool(), float("-inf")).argmax(dim=-1)


def sampled_cql_term(
    agent_qs: torch.Tensor,
    weights: MixingWeights,
    avail: torch.Tensor,
    q_tot_data: torch.Tensor,
    mask: torch.Tensor,
    actions: torch.Tensor,
    floor: torch.Tensor | None = None,
    policy_actions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw MACQL (CFCQL's `raw_cql`): masked mean of
        logsumexp_k [valid_k * Q_tot(s, a_k)] - Q_tot(s, a_data),
    over the given joint actions `actions` [B, T, K, n]; valid_k = 1 when every agent's action in
    a_k is available, else 0, so an invalid sample adds exp(0) to the sum and no gradient.
    agent_qs [B, T, n, A] (with grad), mixing weights of the states [B, T], q_tot_data [B, T, 1].

    Cal-QL: with `floor` [B, T, 1] (the return-to-go R_t), the current policy's joint action
    `policy_actions` [B, T, n] joins the logsumexp with its value floored, max(Q_tot(s, a_pi), R_t);
    the sampled actions stay unfloored and the data term is unchanged."""
    sampled = agent_qs.gather(-1, actions.transpose(-1, -2)).transpose(-1, -2)  # [B, T, K, n]
    q_tot_sampled = mix_samples(sampled, weights)  # [B, T, K]
    valid = avail.gather(-1, actions.transpose(-1, -2)).all(dim=-2)  # [B, T, K]
    values = q_tot_sampled * valid.to(q_tot_sampled.dtype)
    if floor is not None:
        if policy_actions is None:
            raise ValueError("the Cal-QL floor needs the current policy's actions")
        policy_qs = agent_qs.gather(-1, policy_actions.unsqueeze(-1)).transpose(-1, -2)  # [B, T, 1, n]
        q_tot_policy = mix_samples(policy_qs, weights)  # [B, T, 1]
        values = torch.cat([values, torch.maximum(q_tot_policy, floor)], dim=-1)
    push_down = torch.logsumexp(values, dim=-1, keepdim=True)  # [B, T, 1]
    return masked_mean(push_down - q_tot_data, mask)


def counterfactual_q_tot(
    agent_qs: torch.Tensor, chosen_qs: torch.Tensor, weights: MixingWeights
) -> torch.Tensor:
    """Q_tot(s, a^{-i}_data, j) for every agent i and action j: [B, T, n, A].

    The data joint action's mixing pre-activation z = q_data . w1 + b1 is computed once; replacing
    agent i's value by q_ij changes it by (q_ij - q_i,data) * w1_i, so every counterfactual joint
    action costs one ELU layer, not a mixer pass."""
    z = torch.matmul(chosen_qs.unsqueeze(-2), weights.w1).squeeze(-2) + weights.b1  # [B, T, E]
    delta = agent_qs - chosen_qs.unsqueeze(-1)  # [B, T, n, A]
    z_ij = z[..., None, None, :] + delta.unsqueeze(-1) * weights.w1.unsqueeze(-2)  # [B, T, n, A, E]
    hidden = F.elu(z_ij)
    return (hidden * weights.w2[..., None, None, :]).sum(-1) + weights.b2.unsqueeze(-1)


def cfcql_agent_weights(
    counterfactual: torch.Tensor,
    behaviour_logits: torch.Tensor | None,
    avail: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """CFCQL's per-agent weights w = softmax_i(tau * KL_i), [B, T, n], as constants.

    KL_i = KL(mu_i || beta_i) over agent i's available actions, where mu_i = softmax_j of the
    counterfactual Q_tot(s, a^{-i}, j) (the policy the value function implies for agent i) and
    beta_i is the behaviour-cloning policy (`behaviour_logits`, masked softmax), as in CFCQL's
    cq_learner. tau = 0 or no behaviour policy gives uniform 1/n."""
    B, T, n, _ = counterfactual.shape
    if temperature == 0 or behaviour_logits is None:
        return counterfactual.new_full((B, T, n), 1.0 / n)
    with torch.no_grad():
        avail = avail.bool()
        log_mu = torch.log_softmax(counterfactual.masked_fill(~avail, UNAVAILABLE), dim=-1)
        log_beta = torch.log_softmax(behaviour_logits.masked_fill(~avail, UNAVAILABLE), dim=-1)
        kl = (log_mu.exp() * (log_mu - log_beta)).masked_fill(~avail, 0.0).sum(-1)  # [B, T, n]
        return torch.softmax(temperature * kl, dim=-1)


def counterfactual_cql_term(
    agent_qs: torch.Tensor,
    chosen_qs: torch.Tensor,
    weights: MixingWeights,
    avail: torch.Tensor,
    q_tot_data: torch.Tensor,
    mask: torch.Tensor,
    behaviour_logits: torch.Tensor | None = None,
    temperature: float = 0.0,
    floor: torch.Tensor | None = None,
    policy_actions: torch.Tensor | None = None,
) -> torch.Tensor:
    """CFCQL: masked mean of sum_i w_i N_i - Q_tot(s, a_data), N_i = logsumexp over agent i's
    available actions j of Q_tot(s, a^{-i}_data, j); w from `cfcql_agent_weights`.

    Cal-QL: with `floor` [B, T, 1] (R_t), in each N_i the term of the current policy's action for
    agent i, j = `policy_actions`[..., i] ([B, T, n]), is floored: max(Q_tot(s, a^{-i}_data, j), R_t);
    every other j stays unfloored, and the agent weights see the unfloored values."""
    counterfactual = counterfactual_q_tot(agent_qs, chosen_qs, weights)  # [B, T, n, A]
    agent_weights = cfcql_agent_weights(counterfactual.detach(), behaviour_logits, avail, temperature)
    values = counterfactual
    if floor is not None:
        if policy_actions is None:
            raise ValueError("the Cal-QL floor needs the current policy's actions")
        is_policy = F.one_hot(policy_actions, counterfactual.shape[-1]).bool()  # [B, T, n, A]
        floored = torch.maximum(counterfactual, floor.unsqueeze(-1))
        values = torch.where(is_policy, floored, counterfactual)
    push_down = torch.logsumexp(values.masked_fill(~avail.bool(), UNAVAILABLE), dim=-1)  # [B, T, n]
    weighted = (agent_weights * push_down).sum(-1, keepdim=True)  # [B, T, 1]
    return masked_mean(weighted - q_tot_data, mask)


def behaviour_cloning_loss(
    logits: torch.Tensor, actions: torch.Tensor, avail: torch.Tensor, mask: torch.Tensor
):
    """Negative log-likelihood of the data actions [B, T, n, 1] under the masked softmax of
    `logits` [B, T, n, A], averaged over trained steps and agents."""
    log_probs = torch.log_softmax(logits.masked_fill(~avail.bool(), UNAVAILABLE), dim=-1)
    nll = -log_probs.gather(-1, actions).squeeze(-1).mean(-1, keepdim=True)  # [B, T, 1]
    return masked_mean(nll, mask)
