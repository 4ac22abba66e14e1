"""The QMIX networks, shared by actors (one step at a time) and the learner (whole sequences).

`RNNAgent` is PyMARL2's agent network, shared by all agents: Linear(in, 64) -> ReLU -> GRU(64, 64)
-> Linear(64, n_actions). Its input is the agent's own observation, its previous action as a one-hot
(zeros at t = 0) and its agent-id one-hot (`build_agent_inputs`). It runs in two modes with the
same parameters and the same numbers (up to float rounding):

- `forward_step(inputs [R, in], hidden [R, H])`: one step for acting, R = battles * agents;
- `forward_sequence(inputs [B, T, n, in], lengths=...)`: whole episodes for training, in one fused
  call. During training every input (observation, previous action, agent id) is known before the
  unroll, so the input layer runs once over all steps and `nn.GRU` unrolls the recurrence in C++
  instead of a per-step Python loop through a GRUCell (PyMARL2's way). Given the episodes' lengths,
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

    # Unroll training sequences with `GRUUnroll` (same weights, same numbers) instead of nn.GRU.
    # Off: on the 2-core AMX Xeon it measured no faster than nn.GRU, in fp32 or under bf16 autocast
    # (its per-step elementwise ops, not the matrix products, bound it; docs/learner.md,
    # "Precision"). Kept, tested, for measuring on other machines (bench_learner --hand-written-gru).
    hand_written_unroll = False

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
        return (q * within.to(q.device, q.dtype)[..., None, None]).transpose(0, 1)

    def _unroll(self, x: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        """Time-major inputs [T, B, n, in] -> q [T, B, n, A]."""
        T, B, n, _ = x.shape
        x = F.relu(self.fc1(x)).reshape(T, B * n, self.hidden_size)  # one matmul for every step
        if self.hand_written_unroll:
            out = gru_sequence(x, hidden, self.rnn)
        else:
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


def gru_sequence(x: torch.Tensor, hidden: torch.Tensor | None, rnn: nn.GRU) -> torch.Tensor:
    """`rnn(x, hidden)`'s output [T, N, H] for inputs x [T, N, H] (hidden [N, H], zeros when None),
    computed by `GRUUnroll` with the weights of the single-layer `rnn`.

    The matrix products run in x's dtype: bf16 when x comes from a layer under bf16 autocast, else
    fp32. The hidden state, the gates and the output stay fp32 either way."""
    gi = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)  # every step's input projection, one matmul
    h0 = x.new_zeros(x.shape[1], rnn.hidden_size, dtype=torch.float32) if hidden is None else hidden
    return GRUUnroll.apply(gi, h0.float(), rnn.weight_hh_l0, rnn.bias_hh_l0)


class GRUUnroll(torch.autograd.Function):
    """nn.GRU's recurrence with a hand-written backward, given every step's input projection.

    Gates (PyTorch's GRU, in order r, z, n of the 3H axis):
        r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r * gh_n),
        h' = (1 - z) * n + z * h,  with gh = h @ W_hh^T + b_hh.
    Why by hand: autograd would record ~10 ops per step and one small weight-gradient product per
    step; here the backward keeps the per-step work to the recurrence (dh_{t-1} = ... + dgh_t @ W_hh)
    and takes W_hh's gradient as one product over all steps, the shape bf16 matrix units like. Fused
    ops (lerp, addcmul, tanh_backward, sigmoid_backward) write into preallocated buffers. Measured on
    the 2-core AMX Xeon (T = 80, N = 1024, forward + backward + a no-grad forward): no faster than
    nn.GRU (0.9x in fp32, 1.0x under bf16 autocast): ~20 elementwise ops per step on [N, H] bound it,
    not the products. So `RNNAgent.hand_written_unroll` is off; see docs/learner.md, "Precision".

    gi [T, N, 3H] (x @ W_ih^T + b_ih) sets the matmul dtype; h0 [N, H] fp32. Returns h_1..h_T as
    [T, N, H] fp32. No double backward."""

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh):  # noqa: D102 (see the class)
        T, N, three_h = gi.shape
        H = three_h // 3
        dtype, device = gi.dtype, gi.device
        with torch.autocast(device.type, enabled=False):
            w = w_hh.to(dtype).t()
            b = b_hh.to(dtype)
            gh = torch.empty(T, N, three_h, dtype=dtype, device=device)
            rz = torch.empty(T, N, 2 * H, device=device)  # sigmoid(r), sigmoid(z)
            n = torch.empty(T, N, H, device=device)
            hs = torch.empty(T + 1, N, H, device=device)  # h_0 .. h_T
            hs[0] = h0
            for t in range(T):
                torch.addmm(b, hs[t].to(dtype), w, out=gh[t])
                torch.add(gi[t, :, : 2 * H], gh[t, :, : 2 * H], out=rz[t])
                rz[t].sigmoid_()
                torch.addcmul(gi[t, :, 2 * H :], rz[t, :, :H], gh[t, :, 2 * H :], out=n[t])
                n[t].tanh_()
                torch.lerp(n[t], hs[t], rz[t, :, H:], out=hs[t + 1])
        if any(ctx.needs_input_grad):  # (forward runs with grad mode off: ask the inputs)
            ctx.save_for_backward(w_hh)
            ctx.buffers = (gh, rz, n, hs)
        return hs[1:]

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        (w_hh,) = ctx.saved_tensors
        gh, rz, n, hs = ctx.buffers
        del ctx.buffers
        T, N, H = dout.shape
        dtype = gh.dtype
        with torch.autocast(dout.device.type, enabled=False):
            dout = dout.float()
            w = w_hh.to(dtype)  # [3H, H]
            dgh = torch.empty(T, N, 3 * H, dtype=dtype, device=dout.device)  # d(gh) per step
            dan = torch.empty(T, N, H, device=dout.device)  # d(gi_n + r * gh_n)
            dh = torch.zeros(N, H, device=dout.device)
            for t in range(T - 1, -1, -1):
                r, z = rz[t, :, :H], rz[t, :, H:]
                dh += dout[t]
                dn = torch.addcmul(dh, dh, z, value=-1.0)  # dh * (1 - z)
                torch.ops.aten.tanh_backward.grad_input(dn, n[t], grad_input=dan[t])
                dg = dgh[t]
                torch.ops.aten.sigmoid_backward.grad_input(
                    dan[t] * gh[t, :, 2 * H :], r, grad_input=dg[:, :H]
                )
                torch.ops.aten.sigmoid_backward.grad_input(
                    dh * (hs[t] - n[t]), z, grad_input=dg[:, H : 2 * H]
                )
                torch.mul(dan[t], r, out=dg[:, 2 * H :])
                dh = torch.addcmul((dg @ w).float(), dh, z)  # dh_{t-1} = dh * z + dgh @ W_hh
            flat = dgh.view(T * N, 3 * H)
            dw_hh = (flat.t() @ hs[:-1].reshape(T * N, H).to(dtype)).float()
            db_hh = flat.sum(0, dtype=torch.float32)
            dgi = torch.cat([dgh[..., : 2 * H], dan.to(dtype)], dim=-1)  # gi's r, z parts = gh's
        return dgi, dh, dw_hh, db_hh


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
        """Hypernetwork outputs for states [..., S]."""
        w1 = self.hyper_w1(state).abs().unflatten(-1, (self.n_agents, self.embed_dim))
        return MixingWeights(w1, self.hyper_b1(state), self.hyper_w2(state).abs(), self.hyper_b2(state))

    @staticmethod
    def mix(q: torch.Tensor, weights: MixingWeights) -> torch.Tensor:
        """Q_tot for agent values q [..., n] and weights for states of the same leading shape
        -> [..., 1]."""
        return mix(q, weights)

    def forward(self, q: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """q [B, T, n] chosen agent values, state [B, T, S] -> Q_tot [B, T, 1]."""
        return self.mix(q, self.mixing_weights(state))


def mix(q: torch.Tensor, weights: MixingWeights) -> torch.Tensor:
    """Q_tot = ELU(q . w1 + b1) . w2 + b2 for q [..., n] and weights of leading shape [...] -> [..., 1]."""
    hidden = F.elu(torch.matmul(q.unsqueeze(-2), weights.w1).squeeze(-2) + weights.b1)
    return (hidden * weights.w2).sum(-1, keepdim=True) + weights.b2


def mix_samples(q: torch.Tensor, weights: MixingWeights) -> torch.Tensor:
    """Q_tot of K joint actions per state: q [..., K, n] with weights of leading shape [...] -> [..., K].

    One batched matmul per state; the hypernetworks are not run again for every joint action."""
    hidden = F.elu(torch.matmul(q, weights.w1) + weights.b1.unsqueeze(-2))  # [..., K, E]
    return torch.matmul(hidden, weights.w2.unsqueeze(-1)).squeeze(-1) + weights.b2
