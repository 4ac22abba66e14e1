"""The QMIX networks, shared by actors (one step at a time) and the learner (whole sequences).

`RNNAgent` is PyMARL2's agent network, shared by all agents: Linear(in, 64) -> ReLU -> GRU(64, 64)
-> Linear(64, n_actions). Its input is the agent's own observation, its previous action as a one-hot
(zeros at t = 0) and its agent-id one-hot (`build_agent_inputs`). It runs in two modes with the
same parameters and the same numbers (up to float rounding):

- `forward_step(inputs [R, in], hidden [R, H])`: one step for acting, R = battles * agents;
- `forward_sequence(inputs [B, T, n, in], lengths=...)`: whole episodes for training, in one fused
  call. During training every input (observation, previous action, agent id) is known before the
  unroll, so the input layer runs once over all steps and the recurrence unrolls in C++ (on CPU a
  fused kernel, `common.kernels.fused_gru`; elsewhere nn.GRU) instead of a per-step Python loop through a
  GRUCell (PyMARL2's way). Given the episodes' lengths,
  episodes of similar length are unrolled together, each group only as far as it needs (a batch is
  padded to its longest episode; lite 3s5z episodes average 66 of up to 151 rows).

`QMixer` is PyMARL2's monotonic mixer: hypernetworks on the state give non-negative weights (abs),
Q_tot = ELU(q . w1 + b1) . w2 + b2 with b2 = V(s). `mixing_weights` + `mix` split the two halves so
that the learner can mix many joint actions (CQL) with one hypernetwork pass per state.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from common import kernels
from common.episode import TrainingBatch
from common.kernels import batch_passes, fused_gru


def agent_input_size(obs_size: int, n_actions: int, n_agents: int) -> int:
    """Width of one agent's input: observation + previous action one-hot + agent-id one-hot."""
    return obs_size + n_actions + n_agents


def build_agent_inputs(obs: torch.Tensor, actions_onehot_prev: torch.Tensor, n_agents: int) -> torch.Tensor:
    """Concatenate [obs, previous action one-hot, agent-id one-hot] on the last axis.

    obs [..., n, O] and actions_onehot_prev [..., n, A] share their leading axes (e.g. [B, T] for
    training, [E] for acting); the result is [..., n, O + A + n]."""
    if obs.shape[-2] != n_agents or actions_onehot_prev.shape[:-1] != obs.shape[:-1]:
        raise ValueError(
            f"obs {tuple(obs.shape)} and previous actions {tuple(actions_onehot_prev.shape)} "
            f"do not match n_agents={n_agents}"
        )
    ids = torch.eye(n_agents, dtype=obs.dtype, device=obs.device).expand(*obs.shape[:-1], n_agents)
    return torch.cat([obs, actions_onehot_prev.to(obs.dtype), ids], dim=-1)


def episode_agent_inputs(
    batch: TrainingBatch, n_actions: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """[obs, previous action one-hot, agent id] of every row, [B, T+1, n, in]: what the agents saw
    while playing the batch's episodes. Built time-major (the recurrent unroll's layout) and returned
    as a batch-major view; in `dtype` when given (the learner's compute dtype: cast once here rather
    than by every network that reads them)."""
    compiled = batch_passes.agent_inputs_compiled(
        batch.obs, batch.actions, n_actions, dtype or batch.obs.dtype
    )
    if compiled is not None:  # on CPU: one pass
        return compiled.transpose(0, 1)
    obs = batch.obs.transpose(0, 1)  # [T+1, B, n, O]
    rows, B, n, O = obs.shape
    # Written in place into one tensor: a training batch has ~10^5 rows, and building the parts and
    # concatenating them cost more than the input layer's product. Equal to `build_agent_inputs`.
    inputs = obs.new_empty(rows, B, n, O + n_actions + n, dtype=dtype or obs.dtype)
    inputs[..., :O] = obs
    inputs[0, ..., O : O + n_actions] = 0.0  # no action before the first row
    previous = batch.actions.transpose(0, 1)[:-1]  # [T, B, n, 1]: the action before rows 1..T
    inputs[1:, ..., O : O + n_actions] = previous == torch.arange(n_actions, device=previous.device)
    inputs[..., O + n_actions :] = torch.eye(n, dtype=inputs.dtype, device=inputs.device)
    return inputs.transpose(0, 1)


def previous_actions_onehot(
    actions: torch.Tensor, n_actions: int, time_dim: int = 1, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """From actions [..., n, 1] (int) with time on axis `time_dim` ([B, T, n, 1] by default), the
    one-hot of each agent's previous action [..., n, A]: zeros at t = 0, one_hot(actions[t - 1])
    after."""
    onehot = F.one_hot(actions.squeeze(-1), n_actions).to(dtype)
    first = torch.zeros_like(onehot.narrow(time_dim, 0, 1))
    return torch.cat([first, onehot.narrow(time_dim, 0, onehot.shape[time_dim] - 1)], dim=time_dim)


LENGTH_GROUPS = 4  # most groups of similar-length episodes per unroll (each is one GRU call)
MIN_SAVING = 0.1  # group only when that skips at least this share of the padded rows


def length_groups(lengths: torch.Tensor, rows: int) -> list[tuple[torch.Tensor, int]] | None:
    """Split episodes with `lengths` [B] (padded to `rows`) into up to LENGTH_GROUPS groups of
    similar length: [(episode indices, the group's longest length)], shortest first; None when
    grouping would skip less than MIN_SAVING of the padded work (one plain unroll is then best)."""
    lengths = lengths.to("cpu", torch.int64).clamp(1, rows)
    order = torch.argsort(lengths, stable=True)
    groups = [(idx, int(lengths[idx].max())) for idx in order.chunk(min(LENGTH_GROUPS, len(order)))]
    work = sum(len(idx) * length for idx, length in groups)
    return groups if work <= (1.0 - MIN_SAVING) * len(order) * rows else None


class RNNAgent(nn.Module):
    """PyMARL2's recurrent agent network (shared parameters, one call for all agents)."""

    # On CPU, unroll training sequences with the fused kernel of `common.kernels.fused_gru` (same weights,
    # same numbers up to float rounding) where it builds: nn.GRU's per-step gate math, not its
    # matrix products, bounded the learner (docs/learner.md, "Precision"). The benchmark turns it
    # off to compare.
    fused_cpu_gru = True

    def __init__(self, input_size: int, n_actions: int, hidden_size: int = 64):
        super().__init__()
        self.input_size = input_size
        self.n_actions = n_actions
        self.hidden_size = hidden_size
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.rnn = nn.GRU(hidden_size, hidden_size)  # time-major
        self.fc2 = nn.Linear(hidden_size, n_actions)

    def init_hidden(self, rows: int, device=None) -> torch.Tensor:
        """Zero hidden state for `rows` = battles * agents."""
        return torch.zeros(
            rows, self.hidden_size, device=device if device is not None else self.fc1.weight.device
        )

    def forward_step(self, inputs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: inputs [R, in], hidden [R, H] -> (q [R, A], new hidden [R, H])."""
        x = F.relu(self.fc1(inputs))
        out, h = self.rnn(x.unsqueeze(0), hidden.unsqueeze(0).contiguous())  # a sequence of one step
        return self.fc2(out.squeeze(0)), h.squeeze(0)

    def forward_sequence(
        self,
        inputs: torch.Tensor,
        hidden: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Whole sequences: inputs [B, T, n, in] -> q [B, T, n, A], starting from `hidden` [B*n, H]
        (zeros when None). Equal to looping `forward_step` over t.

        `lengths` [B] (CPU ints): how many leading rows of each episode matter. Episodes are then
        unrolled in groups of similar length, each group only as far as its longest episode, so
        the padding of a batch of uneven episodes costs (almost) nothing; rows past an episode's
        length come out as 0. Rows within it are unchanged: the recurrence only looks back.

        The unroll runs time-major: if `inputs` is a [B, T, ...] view of a contiguous time-major
        [T, B, ...] tensor (as the learner builds it) no copy is made; the result is a [B, T, ...]
        view of a time-major tensor."""
        B, T, n, _ = inputs.shape
        x = inputs.transpose(0, 1)  # [T, B, n, in]
        if lengths is None:
            return self._unroll(x, hidden).transpose(0, 1)
        groups = length_groups(lengths, T)
        if groups is None:
            q = self._unroll(x, hidden)
        else:
            q = None  # allocated once the first group shows the output's dtype (bf16 under autocast)
            for rows, length in groups:
                h0 = None if hidden is None else hidden.view(B, n, -1)[rows].reshape(-1, self.hidden_size)
                out = self._unroll(x[:length, rows], h0)
                if q is None:
                    q = out.new_zeros(T, B, n, self.n_actions)
                q[:length, rows] = out
        within = torch.arange(T)[:, None] < lengths.to("cpu")[None, :]  # [T, B]
        # A product with the 0/1 mask (padding rows are finite, so they come out 0): on a training
        # batch it took half of masked_fill's time, or torch.where's, forward and backward. Not in
        # place: filling the unroll's output (a view) in place makes autograd copy it back and forth.
        keep = within.to(device=q.device, dtype=q.dtype)
        return (q.view(T, B, -1) * keep[..., None]).view(T, B, n, -1).transpose(0, 1)

    def _unroll(self, x: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        """Time-major inputs [T, B, n, in] -> q [T, B, n, A]."""
        T, B, n, _ = x.shape
        x = self.fc1(x).reshape(T, B * n, self.hidden_size)  # one matmul, all steps
        if x.device.type == "cpu" and self.fused_cpu_gru and kernels.available():
            out = fused_gru.fused_gru_sequence(x, hidden, self.rnn, relu_inputs=True)
        else:
            # Out of place: in place on fc1's output (a view) would make autograd clone it and copy
            # its gradient twice in the backward.
            x = F.relu(x)
            if x.device.type != "cpu" and x.dtype != self.rnn.weight_ih_l0.dtype:
                # bf16 autocast: CPU autocast runs nn.GRU in bf16 (oneDNN); elsewhere the GRU kernel
                # may have no autocast rule and refuse mixed dtypes, so it gets its weights' dtype.
                x = x.to(self.rnn.weight_ih_l0.dtype)
            if x.is_cuda:
                # cuDNN wants the GRU's weights in one buffer; copies made after moving to the GPU
                # (target networks, OVM's memory) are not, and cuDNN would compact them every call.
                self.rnn.flatten_parameters()
            h0 = None if hidden is None else hidden.unsqueeze(0).contiguous()
            out, _ = self.rnn(x, h0)  # [T, B*n, H]; GRU batch = episodes * agents
        return self.fc2(out).view(T, B, n, self.n_actions)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_sequence(inputs)


def agent_network(env_info: dict, hidden_size: int = 64) -> RNNAgent:
    """A fresh agent network for a world with `env_info` (SMAC's get_env_info keys)."""
    n, obs, actions = int(env_info["n_agents"]), int(env_info["obs_shape"]), int(env_info["n_actions"])
    return RNNAgent(agent_input_size(obs, actions, n), actions, hidden_size)


class MixingWeights(NamedTuple):
    """The mixer's state-conditioned weights for one batch of states [..., S]."""

    w1: torch.Tensor  # [..., n, E], non-negative
    b1: torch.Tensor  # [..., E]
    w2: torch.Tensor  # [..., E], non-negative
    b2: torch.Tensor  # [..., 1], the state value V(s)


class QMixer(nn.Module):
    """PyMARL2's QMIX mixer with hypernetworks (abs weights, ELU hidden layer, V(s) bias)."""

    def __init__(self, n_agents: int, state_size: int, embed_dim: int = 32, hypernet_embed: int = 64):
        super().__init__()
        self.n_agents = n_agents
        self.state_size = state_size
        self.embed_dim = embed_dim
        self.hyper_w1 = nn.Sequential(
            nn.Linear(state_size, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, n_agents * embed_dim)
        )
        self.hyper_b1 = nn.Linear(state_size, embed_dim)
        self.hyper_w2 = nn.Sequential(
            nn.Linear(state_size, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, embed_dim)
        )
        self.hyper_b2 = nn.Sequential(nn.Linear(state_size, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def mixing_weights(self, state: torch.Tensor) -> MixingWeights:
        """Hypernetwork outputs for states [..., S].

        The four layers that read the state run as one product with their weights stacked: the
        state (tens of thousands of rows in a training batch) is read, and under bf16 autocast cast,
        once instead of four times. Same parameters, same values."""
        first = (self.hyper_w1[0], self.hyper_b1, self.hyper_w2[0], self.hyper_b2[0])
        weight = torch.cat([layer.weight for layer in first])
        bias = torch.cat([layer.bias for layer in first])
        widths = [layer.out_features for layer in first]
        h_w1, b1, h_w2, h_b2 = F.linear(state, weight, bias).split(widths, -1)
        w1 = self.hyper_w1[2](F.relu(h_w1)).abs().unflatten(-1, (self.n_agents, self.embed_dim))
        w2 = self.hyper_w2[2](F.relu(h_w2)).abs()
        return MixingWeights(w1, b1, w2, self.hyper_b2[2](F.relu(h_b2)))

    @staticmethod
    def mix(q: torch.Tensor, weights: MixingWeights) -> torch.Tensor:
        """Q_tot for agent values q [..., n] and weights for states of the same leading shape
        -> [..., 1]."""
        return mix(q, weights)

    def forward(self, q: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """q [B, T, n] chosen agent values, state [B, T, S] -> Q_tot [B, T, 1]."""
        return self.mix(q, self.mixing_weights(state))


def mix(q: torch.Tensor, weights: MixingWeights) -> torch.Tensor:
    """Q_tot = ELU(q . w1 + b1) . w2 + b2 for q [..., n] and weights of leading shape [...] -> [..., 1].
    Summed in fp32 for fp32 q, whatever the weights' dtype (bf16 weights are read as fp32)."""
    compiled = batch_passes.mix_compiled(q, *weights)  # on CPU: one pass, forward and backward
    if compiled is not None:
        return compiled
    # A broadcast product summed over the agents, not a batched matmul: per state it is a [1, n] @
    # [n, E] product, and tens of thousands of those ran 5-10x slower as bmm on CPU.
    hidden = F.elu((q.unsqueeze(-1) * weights.w1).sum(-2) + weights.b1)
    return (hidden * weights.w2).sum(-1, keepdim=True) + weights.b2


def mix_samples(q: torch.Tensor, weights: MixingWeights) -> torch.Tensor:
    """Q_tot of K joint actions per state: q [..., K, n] with weights of leading shape [...] -> [..., K].

    The hypernetworks are not run again for every joint action; on CPU one compiled pass reads each
    state's weights once for all K (torch's matmuls keep [..., K, E] temporaries for the backward)."""
    compiled = batch_passes.mix_samples_compiled(q, *weights)
    if compiled is not None:
        return compiled
    hidden = F.elu(torch.matmul(q, weights.w1) + weights.b1.unsqueeze(-2))  # [..., K, E]
    return torch.matmul(hidden, weights.w2.unsqueeze(-1)).squeeze(-1) + weights.b2
