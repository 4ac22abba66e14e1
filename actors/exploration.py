"""Choosing actions from Q-values: greedy, epsilon-greedy, and sequential exploration (SE).

- epsilon_greedy: every agent independently acts at random with probability epsilon (PyMARL).
- decentralized_se (OVMSE): every agent independently acts at random with probability epsilon / n,
  so on average epsilon agents of a team explore per step and no coordination is needed.
- centralized_se: with probability epsilon exactly one agent, chosen uniformly among the live ones,
  acts at random; the others act greedily.
- policy_sample: for policy learners (InSPO), whose network outputs logits: every agent samples its
  action from softmax(logits) over its available actions; epsilon is not used (the policy's own
  entropy explores).
Random actions are uniform over the agent's *available* actions; greedy ones are the argmax of Q over
available actions. All functions are vectorised over [B, n] and take their randomness from `rng`.
"""

from __future__ import annotations

import numpy as np

MODES = ("greedy", "epsilon_greedy", "decentralized_se", "centralized_se", "policy_sample")


def greedy_actions(q: np.ndarray, avail: np.ndarray) -> np.ndarray:
    """argmax of q [B, n, A] over available actions."""
    return np.where(avail, q, -np.inf).argmax(axis=-1)


def random_available_actions(rng: np.random.Generator, avail: np.ndarray) -> np.ndarray:
    noise = np.where(avail, rng.random(avail.shape), -1.0)
    return noise.argmax(axis=-1)


def sampled_actions(rng: np.random.Generator, logits: np.ndarray, avail: np.ndarray) -> np.ndarray:
    """A sample of softmax(logits) [B, n, A] over the available actions (the Gumbel-max trick:
    argmax of logits plus independent Gumbel noise is distributed as the softmax)."""
    gumbel = -np.log(-np.log(rng.random(logits.shape).clip(1e-12, 1.0 - 1e-12)))
    return np.where(avail, logits + gumbel, -np.inf).argmax(axis=-1)


def exploring_agents(rng: np.random.Generator, avail: np.ndarray, epsilon: float, mode: str) -> np.ndarray:
    """Which agents [B, n] act at random this step."""
    B, n = avail.shape[:2]
    if mode == "greedy" or epsilon <= 0:
        return np.zeros((B, n), dtype=bool)
    if mode == "epsilon_greedy":
        return rng.random((B, n)) < epsilon
    if mode == "decentralized_se":
        return rng.random((B, n)) < epsilon / n
    if mode == "centralized_se":
        live = avail[..., 1:].any(axis=-1)  # a dead agent can only no-op: exploring it is void
        explore = rng.random(B) < epsilon
        # Uniform choice among live agents: the live agent with the largest uniform key.
        keys = np.where(live, rng.random((B, n)), -1.0)
        chosen = keys.argmax(axis=1)
        out = np.zeros((B, n), dtype=bool)
        rows = np.flatnonzero(explore & live.any(axis=1))
        out[rows, chosen[rows]] = True
        return out
    raise ValueError(f"unknown exploration mode {mode!r}: expected one of {', '.join(MODES)}")


def select_actions(
    q: np.ndarray, avail: np.ndarray, epsilon: float, mode: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Actions [B, n] and the mask of agents that explored (`policy_sample`: that left the argmax)."""
    avail = avail.astype(bool, copy=False)
    if mode == "policy_sample":  # q holds logits; an agent "explored" where it left the argmax
        actions = sampled_actions(rng, q, avail)
        return actions, actions != greedy_actions(q, avail)
    explore = exploring_agents(rng, avail, epsilon, mode)
    actions = greedy_actions(q, avail)
    if explore.any():
        actions = np.where(explore, random_available_actions(rng, avail), actions)
    return actions, explore
