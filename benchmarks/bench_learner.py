"""Learner speed: `QMixLearner.update` against a reference learner written in PyMARL2's style, side by side.

Batches are 3s5z-shaped (8 agents, obs 128, state 216, 14 actions, 80 steps per padded episode),
random but valid: episodes of 60 to 80 steps, dead agents with only no-op available, actions drawn
from the available ones. The reference is PyMARL2's `nq_learner` (a per-timestep Python loop
through a GRUCell, inputs built per step, TD(lambda) recursion), with CFCQL's `raw_cql` for the CQL
term (the mixer re-run on the states repeated once per sampled joint action) and OVM added in the
same style; it starts from the same weights and draws the same CQL samples, so both compute the
same loss (checked on the first update). Rounds alternate between the two, so background load hits
both alike; the medians are reported.

Two batch shapes: `uniform` (the lengths above, the design's anchor: ~80 steps) and `lite` (lengths
as the lite world plays 3s5z with the demo's data policy, focus fire with epsilon 0.2: mean about
70 steps; the batch holds one episode that ran into the 150-step limit, as 87% of 128-episode batches
of this policy do, so it is padded to 150 steps). PyMARL2's learner
also pads each batch to its longest episode, so both sides get the same padded batch.

Kinds: `td` (QMIX TD(lambda) update, PyMARL2's learner), `offline_cql` (3s5z's offline phase: TD +
0.25 x raw MACQL over 100 sampled joint actions), `online_ovm` (3s5z's online phase: OVM with
lambda = 1). CPU numbers use 2 torch threads. With a GPU, the learner's GPU numbers are reported
too, with batches handed over by a producer thread (pinned CPU tensors, as the replay sampler
does) and the share of each step spent waiting for them.

Results: docs/bench/learner.md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _report import machine, write  # noqa: E402

from common import kernels  # noqa: E402
from common.config.sections import LearnerConfig  # noqa: E402
from common.episode import TrainingBatch  # noqa: E402
from common.networks import RNNAgent  # noqa: E402
from learner.losses import sample_available_actions, sample_uniform_actions, trained_rows  # noqa: E402
from learner.qmix_learner import QMixLearner, keep_freed_host_memory, resolve_precision  # noqa: E402

ENV_INFO = {"n_agents": 8, "obs_shape": 128, "state_shape": 216, "n_actions": 14, "episode_limit": 150}
STEPS = 80  # trained steps per padded episode (T); each episode has T + 1 rows
KINDS = {
    "td": ("online", dict(offline_cql="none", use_offline_value_memory=False)),
    "offline_cql": ("offline", dict(offline_cql="cql", offline_cql_weight=0.25, cql_sampler="all_actions")),
    "online_ovm": ("online", dict(offline_cql="cql", online_cql_weight=0.0, use_offline_value_memory=True)),
}
KIND_TITLES = {
    "td": "QMIX TD(lambda) (PyMARL2 nq_learner)",
    "offline_cql": "offline TD + raw MACQL, 100 samples (CFCQL raw_cql)",
    "online_ovm": "online OVM, lambda = 1",
}


# --- data ----------------------------------------------------------------------------------------


# Measured: 1.6% of these episodes hit the time limit (2,000 episodes), so 87% of 128-episode batches
# and 40% of 32-episode batches hold at least one and are padded to the limit.
LITE_TIME_LIMIT_SHARE = 0.016


def lite_lengths(count: int, seed: int = 0) -> torch.Tensor:
    """Lengths (steps) of `count` lite 3s5z episodes played by focus fire with epsilon 0.2 (a new
    tensor each call; the play itself is cached, it takes seconds)."""
    return _lite_lengths(count, seed).clone()


@functools.cache
def _lite_lengths(count: int, seed: int) -> torch.Tensor:
    from common.envs.lite import LiteBatchEnv
    from common.envs.policies import make_policy

    env = LiteBatchEnv("3s5z", num_envs=64, seed=seed)
    policy = make_policy("heuristic", env.layout, env.spec, seed=seed, epsilon=0.2)
    obs, steps, lengths = env.reset(), [0] * env.num_envs, []
    while len(lengths) < count:
        result = env.step(policy.act(obs.obs, obs.avail))
        steps = [s + 1 for s in steps]
        for b in result.done_index.tolist():
            lengths.append(steps[b])
            steps[b] = 0
        obs = result.next
    return torch.tensor(lengths[:count])


def make_batch(
    batch_size: int,
    seed: int,
    steps: int = STEPS,
    info: dict = ENV_INFO,
    lengths: torch.Tensor | None = None,
) -> TrainingBatch:
    """Random but valid 3s5z-shaped episodes in PyMARL layout (see `common.episode`): `lengths`
    steps each (default: uniform in [3/4 `steps`, `steps`]), padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    n, O, S, A = info["n_agents"], info["obs_shape"], info["state_shape"], info["n_actions"]
    limit = info["episode_limit"]  # episodes this long ended by the time limit, the others by a result
    if lengths is None:
        lengths = torch.randint(3 * steps // 4, steps + 1, (batch_size,), generator=g)
        lengths[0] = steps  # the batch is as long as its longest episode
        limit = steps
    B, T = len(lengths), int(lengths.max())
    rows = torch.arange(T + 1)
    filled = (rows[None, :] <= lengths[:, None]).float()  # [B, T+1]
    terminated = torch.zeros(B, T + 1)
    ended = lengths < limit
    terminated[ended, lengths[ended] - 1] = 1.0
    death = torch.randint(T // 3, 2 * T, (B, n), generator=g)  # step each agent dies at (maybe never)
    alive = rows[None, :, None] < death[:, None, :]  # [B, T+1, n]
    avail = torch.zeros(B, T + 1, n, A, dtype=torch.bool)
    avail[..., 1] = True  # stop
    avail[..., 2:6] = torch.rand(B, T + 1, n, 4, generator=g) < 0.8  # moves
    avail[..., 6:] = torch.rand(B, T + 1, n, A - 6, generator=g) < 0.5  # attacks
    avail &= alive[..., None]
    avail[..., 0] = ~alive  # dead agents: no-op only
    avail &= filled[:, :, None, None] > 0
    weights = avail.float().view(-1, A)
    weights[weights.sum(-1) == 0, 0] = 1.0
    actions = torch.multinomial(weights, 1, generator=g).view(B, T + 1, n, 1)
    actions = actions * (rows[None, :, None, None] < lengths[:, None, None, None])  # last row, padding: 0
    obs = torch.randn(B, T + 1, n, O, generator=g) * (alive & (filled[..., None] > 0))[..., None]
    state = torch.randn(B, T + 1, S, generator=g) * filled[..., None]
    reward = torch.rand(B, T + 1, 1, generator=g) * (rows[None, :, None] < lengths[:, None, None])
    return TrainingBatch(
        state=state,
        obs=obs,
        actions=actions,
        avail_actions=avail,
        reward=reward,
        terminated=terminated[..., None],
        filled=filled[..., None],
        offline=torch.zeros(B, dtype=torch.bool),
        policy_version=torch.zeros(B, dtype=torch.int64),
    )


# --- the reference: PyMARL2's learner, as its code does it -----------------------------------


class PyMARL2Agent(nn.Module):
    """PyMARL2's `NRNNAgent`: Linear -> ReLU -> GRUCell -> Linear, called once per time step."""

    def __init__(self, input_size: int, n_actions: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.rnn = nn.GRUCell(hidden_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, n_actions)

    def forward(self, inputs, hidden):
        b, a, e = inputs.size()
        x = F.relu(self.fc1(inputs.view(-1, e)), inplace=True)
        hh = self.rnn(x, hidden.reshape(-1, self.hidden_size))
        return self.fc2(hh).view(b, a, -1), hh.view(b, a, -1)

    def load_from(self, agent: nn.Module) -> PyMARL2Agent:
        """Take the weights of a `common.networks.RNNAgent` (nn.GRU names -> nn.GRUCell names)."""
        state = {k.replace("_l0", ""): v.clone() for k, v in agent.state_dict().items()}
        self.load_state_dict(state)
        return self


class PyMARL2Mixer(nn.Module):
    """PyMARL2's `nmix.Mixer` (QMIX with hypernetworks, abs weights, ELU), its forward written out
    with batched matrix products as PyMARL2 does, not with `common.networks.mix`. Parameter names
    match `common.networks.QMixer`, so it loads that mixer's weights."""

    def __init__(self, n_agents: int, state_size: int, embed_dim: int, hypernet_embed: int):
        super().__init__()
        self.n_agents, self.state_size, self.embed_dim = n_agents, state_size, embed_dim
        self.hyper_w1 = nn.Sequential(
            nn.Linear(state_size, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, n_agents * embed_dim)
        )
        self.hyper_b1 = nn.Linear(state_size, embed_dim)
        self.hyper_w2 = nn.Sequential(
            nn.Linear(state_size, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, embed_dim)
        )
        self.hyper_b2 = nn.Sequential(nn.Linear(state_size, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, qvals: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        b, t, _ = qvals.size()
        qvals = qvals.reshape(b * t, 1, self.n_agents)
        states = states.reshape(-1, self.state_size)
        w1 = self.hyper_w1(states).abs().view(-1, self.n_agents, self.embed_dim)
        b1 = self.hyper_b1(states).view(-1, 1, self.embed_dim)
        w2 = self.hyper_w2(states).abs().view(-1, self.embed_dim, 1)
        b2 = self.hyper_b2(states).view(-1, 1, 1)
        hidden = F.elu(torch.bmm(qvals, w1) + b1)
        return (torch.bmm(hidden, w2) + b2).view(b, t, -1)

    def load_from(self, mixer: nn.Module) -> PyMARL2Mixer:
        self.load_state_dict({k: v.clone() for k, v in mixer.state_dict().items()})
        return self


def pymarl2_td_lambda_targets(rewards, terminated, mask, target_qs, gamma: float, td_lambda: float):
    """PyMARL2's `build_td_lambda_targets` (src/utils/rl_utils.py) as that function computes it:
    ret_T = Qbar_T * (1 - any terminal), ret_t = lambda gamma ret_{t+1} + mask_t [r_t + (1 - lambda)
    gamma Qbar_{t+1} (1 - term_t)]. Ours differs only on shorter time-limit episodes, which PyMARL2's
    data (and `make_batch`) never hold."""
    ret = target_qs.new_zeros(*target_qs.shape)
    ret[:, -1] = target_qs[:, -1] * (1 - torch.sum(terminated, dim=1))
    for t in range(ret.shape[1] - 2, -1, -1):
        ret[:, t] = td_lambda * gamma * ret[:, t + 1] + mask[:, t] * (
            rewards[:, t] + (1 - td_lambda) * gamma * target_qs[:, t + 1] * (1 - terminated[:, t])
        )
    return ret[:, 0:-1]


class PyMARL2StyleLearner:
    """PyMARL2's `NQLearner.train` (+ CFCQL's raw CQL, + OVM) for the same config and weights as
    `learner`."""

    def __init__(self, learner: QMixLearner, seed: int = 0):
        self.cfg = cfg = learner.cfg
        self.n_agents, self.n_actions = learner.n_agents, learner.n_actions
        make = lambda: PyMARL2Agent(learner.input_size, learner.n_actions, cfg.rnn_hidden_dim)  # noqa: E731
        self.agent = make().load_from(learner.agent).to(learner.device)
        self.target_agent = make().load_from(learner.target_agent).to(learner.device)
        mixer = lambda: PyMARL2Mixer(  # noqa: E731
            learner.n_agents, learner.state_size, cfg.mixing_embed_dim, cfg.hypernet_embed_dim
        ).to(learner.device)
        self.mixer = mixer().load_from(learner.mixer)
        self.target_mixer = mixer().load_from(learner.target_mixer)
        self.offline_agent = self.offline_mixer = None
        if learner.offline_agent is not None:
            self.offline_agent = make().load_from(learner.offline_agent).to(learner.device)
            self.offline_mixer = mixer().load_from(learner.offline_mixer)
        self.params = list(self.agent.parameters()) + list(self.mixer.parameters())
        self.optimiser = torch.optim.Adam(self.params, lr=cfg.lr)
        self.generator = torch.Generator(device=learner.device).manual_seed(seed)
        self.last_target_update_episode = 0

    def _build_inputs(self, batch, actions_onehot, t):
        bs = batch.batch_size
        inputs = [batch.obs[:, t]]
        inputs.append(torch.zeros_like(actions_onehot[:, t]) if t == 0 else actions_onehot[:, t - 1])
        inputs.append(torch.eye(self.n_agents, device=batch.obs.device).unsqueeze(0).expand(bs, -1, -1))
        return torch.cat([x.reshape(bs, self.n_agents, -1) for x in inputs], dim=-1)

    def _unroll(self, agent, batch, actions_onehot):
        hidden = torch.zeros(batch.batch_size, self.n_agents, agent.hidden_size, device=batch.obs.device)
        out = []
        for t in range(batch.max_seq_length):
            q, hidden = agent(self._build_inputs(batch, actions_onehot, t), hidden)
            out.append(q)
        return torch.stack(out, dim=1)

    def update(self, batch: TrainingBatch, phase: str, memory_coef: float, episodes_seen: int) -> float:
        cfg = self.cfg
        rewards = batch.reward[:, :-1]
        actions = batch.actions[:, :-1]
        terminated = batch.terminated[:, :-1].float()
        mask = batch.filled[:, :-1].clone()  # PyMARL2 edits its sampled batch in place; ours is reused
        mask[:, 1:] = mask[:, 1:] * (1 - terminated[:, :-1])
        avail_actions = batch.avail_actions
        actions_onehot = F.one_hot(batch.actions.squeeze(-1), self.n_actions).float()

        agent_qs = self._unroll(self.agent, batch, actions_onehot)
        taken_qs = torch.gather(agent_qs[:, :-1], dim=3, index=actions).squeeze(3)
        with torch.no_grad():
            target_agent_qs = self._unroll(self.target_agent, batch, actions_onehot)
            masked_qs = agent_qs.clone().detach()
            masked_qs[avail_actions == 0] = -1e9
            greedy = masked_qs.max(dim=3, keepdim=True)[1]
            target_values = torch.gather(target_agent_qs, 3, greedy).squeeze(3)
            target_values = self.target_mixer(target_values, batch.state)
            targets = pymarl2_td_lambda_targets(
                rewards, terminated, mask, target_values, cfg.gamma, cfg.td_lambda
            )
        q_tot = self.mixer(taken_qs, batch.state[:, :-1])

        def masked_loss(y):
            return (0.5 * (q_tot - y.detach()).pow(2) * mask).sum() / mask.sum()

        if phase == "online" and cfg.use_offline_value_memory:
            with torch.no_grad():
                off = self._unroll(self.offline_agent, batch, actions_onehot)
                off = self.offline_mixer(
                    torch.gather(off[:, :-1], 3, actions).squeeze(3), batch.state[:, :-1]
                )
            loss = memory_coef * masked_loss(torch.maximum(off, targets))
            if memory_coef < 1.0:
                loss = loss + (1 - memory_coef) * masked_loss(targets)
        else:
            loss = masked_loss(targets)

        weight = cfg.online_cql_weight if phase == "online" else cfg.offline_cql_weight
        if cfg.offline_cql == "cql" and weight > 0:  # CFCQL's raw_cql: the mixer once per sample
            K = cfg.cql_sampled_actions
            bs, ts = actions.shape[:2]
            draw = sample_uniform_actions if cfg.cql_sampler == "all_actions" else sample_available_actions
            # The learner's draws: one set per trained step (padding steps draw nothing there, and
            # are masked out here).
            avail_steps = avail_actions[:, :-1]
            rows = trained_rows(mask)
            drawn = draw(avail_steps.flatten(0, 1)[rows].unsqueeze(1), K, self.generator)  # [N, 1, K, n]
            sampled = avail_steps.new_zeros((bs * ts, K, avail_steps.shape[2]), dtype=torch.long)
            sampled[rows] = drawn.squeeze(1)
            sampled = sampled.view(bs, ts, K, -1)  # [B, T, K, n]
            sampled = sampled.permute(2, 0, 1, 3).unsqueeze(-1)  # [K, B, T, n, 1]
            tiled_avail = torch.repeat_interleave(
                avail_actions[:, :-1].float().unsqueeze(0), repeats=K, dim=0
            )
            valid = torch.gather(tiled_avail, dim=-1, index=sampled).min(dim=-2).values  # [K, B, T, 1]
            tiled_qs = torch.repeat_interleave(agent_qs[:, :-1].unsqueeze(0), repeats=K, dim=0)
            sampled_qs = torch.gather(tiled_qs, dim=-1, index=sampled).squeeze(-1)
            repeat_state = torch.repeat_interleave(batch.state[:, :-1].unsqueeze(0), repeats=K, dim=0)
            sampled_q_tot = self.mixer(sampled_qs.view(K * bs, ts, -1), repeat_state.view(K * bs, ts, -1))
            push_down = torch.logsumexp(sampled_q_tot.view(K, bs, ts, 1) * valid, dim=0)
            cql = ((push_down - q_tot) * mask).sum() / mask.sum()
            loss = loss + weight * cql

        self.optimiser.zero_grad()
        loss.backward()
        clip = cfg.grad_clip_online if phase == "online" else cfg.grad_clip_offline
        torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.optimiser.step()
        if (episodes_seen - self.last_target_update_episode) / cfg.target_update_interval >= 1.0:
            self.target_agent.load_state_dict(self.agent.state_dict())
            self.target_mixer.load_state_dict(self.mixer.state_dict())
            self.last_target_update_episode = episodes_seen
        return float(loss.item())


# --- measurement ---------------------------------------------------------------------------------


def make_learners(kind: str, device: str, seed: int = 0, precision: str = "fp32"):
    phase, fields = KINDS[kind]
    cfg = dataclasses.replace(LearnerConfig(), device=device, precision=precision, **fields)
    ours = QMixLearner(ENV_INFO, cfg, seed=seed)
    if phase == "online" and cfg.use_offline_value_memory:
        ours.freeze_offline_memory()
    return phase, ours


def bench_batch(batch_size: int, shape: str, seed: int | None = None) -> TrainingBatch:
    """The benchmark's batch of `shape` ("uniform" | "lite"), seeded by the batch size by default."""
    seed = batch_size if seed is None else seed
    lengths = None
    if shape == "lite":
        lengths = lite_lengths(batch_size, seed=seed)
        lengths[0] = ENV_INFO["episode_limit"]  # one time-limit episode: see LITE_TIME_LIMIT_SHARE
    return make_batch(batch_size, seed=seed, lengths=lengths)


def measure_cpu(kind: str, batch_size: int, repeats: int, shape: str, precisions: list[str]) -> list[dict]:
    """One row per precision: our learner in that precision against the (fp32) PyMARL2-style
    learner, all from the same weights; each round times the reference and then every precision,
    so background load hits them alike."""
    learners = {p: make_learners(kind, "cpu", precision=p) for p in precisions}
    phase = next(iter(learners.values()))[0]
    ref = PyMARL2StyleLearner(next(iter(learners.values()))[1])
    batch = bench_batch(batch_size, shape)
    episodes = 0
    ref_loss = ref.update(batch, phase, memory_coef=1.0, episodes_seen=episodes)
    agreement = {}
    for p, (_, ours) in learners.items():
        ours_loss = ours.update(batch, phase, env_steps=0, episodes_seen=episodes)["loss_total"]
        agreement[p] = abs(ours_loss - ref_loss) / max(1e-8, abs(ref_loss))
    times = {"reference": [], **{p: [] for p in learners}}
    for _ in range(repeats):
        episodes += 2  # batch_size_run 2: a target copy every 25 updates, as on 3s5z
        t0 = time.perf_counter()
        ref.update(batch, phase, memory_coef=1.0, episodes_seen=episodes)
        times["reference"].append(time.perf_counter() - t0)
        for p, (_, ours) in learners.items():
            t0 = time.perf_counter()
            ours.update(batch, phase, env_steps=0, episodes_seen=episodes)
            times[p].append(time.perf_counter() - t0)
    ref_s = statistics.median(times["reference"])
    rows = []
    for p, (_, ours) in learners.items():
        ours_s = statistics.median(times[p])
        rows.append(
            {
                "kind": kind,
                "batch_size": batch_size,
                "shape": shape,
                "precision": ours.precision,
                "padded_steps": batch.reward.shape[1] - 1,
                "mean_steps": float(batch.filled.sum() / batch_size - 1),
                "ours_updates_per_s": 1.0 / ours_s,
                "reference_updates_per_s": 1.0 / ref_s,
                **paired_speedup(times["reference"], times[p]),
                "ratio_of_medians": ref_s / ours_s,
                "ours_ms": [round(t * 1000, 1) for t in times[p]],
                "reference_ms": [round(t * 1000, 1) for t in times["reference"]],
                "first_update_loss_relative_difference": agreement[p],
            }
        )
    return rows


def paired_speedup(reference_s: list[float], ours_s: list[float]) -> dict:
    """The speedup from rounds that each time the reference and then ours back to back: the median
    of the per-round ratios, and their 25th and 75th percentiles. Paired within a round, it holds
    when the host's speed drifts during the run (a shared host's does, by 20% within minutes),
    where the ratio of the two medians can mix a fast round of one with a slow round of the other."""
    ratios = [r / o for r, o in zip(reference_s, ours_s, strict=True)]
    if len(ratios) < 2:
        return {"speedup": ratios[0], "speedup_middle_half": [ratios[0], ratios[0]]}
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"speedup": median, "speedup_middle_half": [q1, q3]}


# GPU precisions: "fp32" strict (TF32 off), "tf32" (learner.precision fp32, which allows TF32 on
# CUDA), "bf16".
GPU_PRECISIONS = ("fp32", "tf32", "bf16")


def set_gpu_precision(label: str) -> None:
    """The process-wide TF32 switches for a GPU row (the learner sets "high" for precision fp32)."""
    tf32 = label == "tf32"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32


def measure_gpu(
    kind: str, batch_size: int, repeats: int, shape: str = "uniform", label: str = "fp32"
) -> dict:
    """The learner on the GPU, fed by a producer thread handing over pinned CPU batches; then the
    PyMARL2-style learner on the same device and TF32 setting, batches already there."""
    phase, ours = make_learners(kind, "cuda", precision="bf16" if label == "bf16" else "fp32")
    set_gpu_precision(label)
    pinned = ours.device.type == "cuda"
    pool = [bench_batch(batch_size, shape, seed=batch_size + i) for i in range(3)]
    ready: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            item = pool[i % len(pool)].pin_memory() if pinned else pool[i % len(pool)]
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            i += 1

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        for _ in range(3):  # warm-up (cuDNN plans, allocator)
            ours.update(ready.get(), phase, env_steps=0, episodes_seen=0)
        waits, steps = [], []
        for k in range(repeats * 5):
            t0 = time.perf_counter()
            batch = ready.get()
            t1 = time.perf_counter()
            ours.update(batch, phase, env_steps=0, episodes_seen=2 * k)  # returns after a device sync
            t2 = time.perf_counter()
            waits.append(t1 - t0)
            steps.append(t2 - t0)
    finally:
        stop.set()
        producer.join(timeout=5)
    ref = PyMARL2StyleLearner(ours)
    on_device = pool[0].to(ours.device)
    ref.update(on_device, phase, memory_coef=1.0, episodes_seen=0)  # warm-up
    ref_times = []
    for k in range(repeats):
        t0 = time.perf_counter()
        ref.update(on_device, phase, memory_coef=1.0, episodes_seen=2 * k)  # .item(): a device sync
        ref_times.append(time.perf_counter() - t0)
    ref_s = statistics.median(ref_times)
    return {
        "kind": kind,
        "batch_size": batch_size,
        "shape": shape,
        "precision": label,
        "learner_precision": ours.precision,
        "updates_per_s": len(steps) / sum(steps),
        "wait_share": sum(waits) / sum(steps),
        "reference_updates_per_s": 1.0 / ref_s,
        "speedup": ref_s * len(steps) / sum(steps),
        "device": torch.cuda.get_device_name(ours.device) if pinned else str(ours.device),
    }


def agent_gflop_per_td_update(batch_size: int, steps: int = STEPS, info: dict = ENV_INFO, hidden: int = 64):
    """Matrix-product work of the agent network in one TD update (online forward + backward, target
    forward), in GFLOP: the part no implementation can avoid."""
    n, A = info["n_agents"], info["n_actions"]
    d = info["obs_shape"] + A + n
    macs = d * hidden + 2 * 3 * hidden * hidden + hidden * A  # fc1, GRU input + hidden, fc2
    rows = batch_size * n * (steps + 1)
    forward = 2 * macs * rows
    backward = 2 * forward - 2 * d * hidden * rows  # no gradient for the inputs
    return (2 * forward + backward) / 1e9


def matmul_gflops(rows: int = 82944, repeats: int = 10) -> float:
    """This machine's fp32 matrix-product rate on the GRU's input projection shape."""
    a, b, out = torch.randn(rows, 64), torch.randn(64, 192), torch.empty(rows, 192)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * rows * 64 * 192 / best / 1e9


def _cpu_recurrence(choice: str) -> str:
    """What ran our learner's CPU recurrence in this run."""
    if choice != "fused" or not kernels.available():
        return "torch (nn.GRU)"
    return "fused, bf16 products on AMX tiles" if kernels.amx_active() else "fused"


def cpu_description() -> dict:
    """The CPU model and the flags that matter for bf16 (from /proc/cpuinfo; empty where absent)."""
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        pass
    wanted = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512_fp16", "avx512f")
    return {"model": machine()["cpu"], "bf16_flags": [f for f in wanted if f in flags]}


def _csv(text: str, known, parser, what: str) -> list[str]:
    items = [x for x in text.split(",") if x]
    unknown = [x for x in items if x not in known]
    if unknown:
        parser.error(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 timed rounds per cell instead of 7")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per cell (overrides --quick)")
    parser.add_argument("--batch-sizes", default="32,128", help="episodes per batch, comma-separated")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--shapes", default="uniform,lite", help="batch shapes, comma-separated, of uniform, lite"
    )
    parser.add_argument("--precisions", default="fp32,bf16", help="CPU rows' learner.precision values")
    parser.add_argument(
        "--gpu-precisions", default=",".join(GPU_PRECISIONS), help="GPU rows: fp32 (TF32 off), tf32, bf16"
    )
    parser.add_argument("--devices", default="cpu,cuda", help="cpu and/or cuda (cuda rows only with a GPU)")
    parser.add_argument(
        "--gru",
        choices=("fused", "torch"),
        default="fused",
        help="our learner's CPU recurrence: the fused kernel (common.kernels, where it builds) or nn.GRU",
    )
    parser.add_argument(
        "--omsd-batch",
        type=int,
        default=512,
        help="OMSD's rows (particle world, one thread): transitions per update; 0 leaves them out",
    )
    parser.add_argument("--out", default=None, help="folder for learner.md/.json (default docs/bench)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/bench alone")
    args = parser.parse_args(argv)
    repeats = args.rounds if args.rounds is not None else (3 if args.quick else 7)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    kinds = _csv(args.kinds, KINDS, parser, "kind(s)")
    shapes = _csv(args.shapes, ("uniform", "lite"), parser, "shape(s)")
    precisions = _csv(args.precisions, ("fp32", "bf16", "auto"), parser, "precision(s)")
    gpu_precisions = _csv(args.gpu_precisions, GPU_PRECISIONS, parser, "GPU precision(s)")
    devices = _csv(args.devices, ("cpu", "cuda"), parser, "device(s)")
    RNNAgent.fused_cpu_gru = args.gru == "fused"
    torch.set_num_threads(args.threads)
    keep_freed_host_memory()  # what the learner does on CPU; applies to both sides of the comparison
    cpu = cpu_description()
    print(f"learner bench: torch {torch.__version__}, {torch.get_num_threads()} threads, {repeats} rounds")
    print(f"  cpu: {cpu['model']}; bf16-relevant flags: {' '.join(cpu['bf16_flags']) or 'none'}")
    print(f"  learner.precision=auto here: cpu -> {resolve_precision('auto', torch.device('cpu'))}")

    cpu_rows, floors, gflops = [], {}, None
    if "cpu" in devices:
        gflops = matmul_gflops()
        print(f"  fp32 matrix products on this machine: {gflops:.0f} GFLOP/s")
        for shape, kind, B in ((x, k, b) for x in shapes for k in kinds for b in batch_sizes):
            print(f"  cpu {shape:7s} {kind:12s} B={B:4d}", flush=True)
            for row in measure_cpu(kind, B, repeats, shape, precisions):
                cpu_rows.append(row)
                print(
                    f"      {row['precision']}: ours {row['ours_updates_per_s']:6.2f} upd/s,"
                    f" PyMARL2-style {row['reference_updates_per_s']:6.2f} upd/s,"
                    f" speedup {row['speedup']:.2f}x"
                    f" (loss difference {row['first_update_loss_relative_difference']:.1e})",
                    flush=True,
                )
        floors = {
            B: {
                "gflop": agent_gflop_per_td_update(B),
                "max_updates_per_s": gflops / agent_gflop_per_td_update(B),
            }
            for B in batch_sizes
        }
    gpu_rows = []
    if "cuda" in devices and torch.cuda.is_available():
        print(f"  gpu: {torch.cuda.get_device_name()}, cuda {torch.version.cuda}")
        for shape, kind, B in ((x, k, b) for x in shapes for k in kinds for b in batch_sizes):
            for label in gpu_precisions:
                print(f"  gpu {shape:7s} {kind:12s} B={B:4d} {label}...", end="", flush=True)
                row = measure_gpu(kind, B, repeats, shape, label)
                gpu_rows.append(row)
                print(
                    f" {row['updates_per_s']:7.2f} upd/s, waiting {100 * row['wait_share']:.1f}%,"
                    f" PyMARL2-style {row['reference_updates_per_s']:7.2f} upd/s ({row['speedup']:.1f}x)",
                    flush=True,
                )
    elif "cuda" in devices:
        print("  gpu: none (torch.cuda.is_available() is False)")

    omsd = None
    if "cpu" in devices and args.omsd_batch > 0:
        from bench_omsd import measure as measure_omsd

        print(f"  cpu OMSD, particle world, batch {args.omsd_batch}, one thread", flush=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the paper's unit of cost: one core
        try:
            omsd = {"batch": args.omsd_batch, "ms": measure_omsd(args.omsd_batch, repeats)}
        finally:
            torch.set_num_threads(threads)

    results = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": repeats,
        "cpu_model": cpu["model"],
        "cpu_bf16_flags": cpu["bf16_flags"],
        "auto_precision_cpu": resolve_precision("auto", torch.device("cpu")),
        "cpu_gru": _cpu_recurrence(args.gru),
        "shape": {**ENV_INFO, "steps": STEPS},
        "matmul_gflops": gflops,
        "td_matmul_floor": floors,
        "cpu": cpu_rows,
        "gpu": gpu_rows,
        "omsd": omsd,
    }
    md = _markdown(results, " ".join(argv if argv is not None else sys.argv[1:]))
    if not args.no_write:
        print(f"wrote {write('learner', results, md, Path(args.out) if args.out else None)}")
    return 0


def _markdown(results: dict, arguments: str) -> str:
    m = machine()
    command = f"python benchmarks/bench_learner.py {arguments}".strip()
    flags = " ".join(results["cpu_bf16_flags"]) or "none"
    lines = [
        "# Learner update speed",
        "",
        f"`{command}` — {m['cpu']} (bf16 flags: {flags}), {m['cores']} cores, torch {results['torch']},"
        f" {results['threads']} threads, load average {m['load_average_1m']}, {m['date']}."
        f" `learner.precision: auto` picks {results['auto_precision_cpu']} on this CPU."
        + f" Our learner's CPU recurrence: {results['cpu_gru']}.",
        "",
        "3s5z-shaped batches (8 agents, obs 128, state 216, 14 actions), one `QMixLearner.update` against"
        " a learner written the way PyMARL2's code is (per-step GRUCell loop; CFCQL's raw CQL re-runs the"
        " mixer per sampled joint action; always fp32), same weights, same batch, same loss; median of"
        f" {results['rounds']} alternating rounds (reference, then ours in each precision), wall-clock"
        " time. Episode lengths: *uniform* 60-80"
        " steps (the design's anchor); *lite* as the lite world plays 3s5z (focus fire, epsilon 0.2), with"
        " one episode at the 150-step time limit (87% of 128-episode batches of this policy hold one)."
        " Both learners pad to the longest episode; ours unrolls episodes of similar length together,"
        " so it skips most of that padding. *speedup*: the median over rounds of each round's reference"
        " time over that round's update, and in brackets the middle half of those ratios."
        " *loss diff*: relative difference of the first update's loss from the reference's.",
        "",
    ]
    if results["cpu"]:
        lines += [
            "| update | lengths | batch | mean / padded steps | precision | ours upd/s | PyMARL2-style upd/s"
            " | speedup | loss diff |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["cpu"]:
            lines.append(
                f"| {KIND_TITLES[r['kind']]} | {r['shape']} | {r['batch_size']} | "
                f"{r['mean_steps']:.0f} / {r['padded_steps']} | {r['precision']} | "
                f"{r['ours_updates_per_s']:.2f} | {r['reference_updates_per_s']:.2f} | {r['speedup']:.2f}x "
                f"({r['speedup_middle_half'][0]:.2f}-{r['speedup_middle_half'][1]:.2f}) | "
                f"{r['first_update_loss_relative_difference']:.1e} |"
            )
        lines += [
            "",
            "What bounds the fp32 TD update on this CPU: the agent network's matrix products alone (online"
            " forward and backward, target forward) at this machine's measured fp32 rate of"
            f" {results['matmul_gflops']:.0f} GFLOP/s:",
            "",
            "| batch | GFLOP per update | at most upd/s |",
            "|---|---|---|",
        ]
        for B, floor in results["td_matmul_floor"].items():
            lines.append(f"| {B} | {floor['gflop']:.1f} | {floor['max_updates_per_s']:.1f} |")
    if results["gpu"]:
        gpu = results["gpu"][0]["device"]
        lines += [
            "",
            f"GPU ({gpu}): batches from a producer thread (pinned), copied non-blocking; the PyMARL2-style"
            " learner on the same GPU and TF32 setting (batch already there). Precision *fp32*: TF32"
            " off; *tf32*: `learner.precision: fp32`, which allows TF32 on CUDA; *bf16*: bf16 autocast.",
            "",
            "| update | lengths | batch | precision | upd/s | share of step waiting for a batch"
            " | PyMARL2-style upd/s | speedup |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results["gpu"]:
            lines.append(
                f"| {KIND_TITLES[r['kind']]} | {r['shape']} | {r['batch_size']} | {r['precision']} | "
                f"{r['updates_per_s']:.1f} | {100 * r['wait_share']:.1f}% | "
                f"{r['reference_updates_per_s']:.1f} | {r['speedup']:.2f}x |"
            )
    else:
        lines += ["", "No GPU rows: they are produced where `torch.cuda.is_available()`."]
    if results.get("omsd"):
        from bench_omsd import ACTION, N_AGENTS, OBS, STATE, table_lines

        omsd = results["omsd"]
        lines += [
            "",
            f"OMSD on the particle world (one thread; batch {omsd['batch']} transitions; {N_AGENTS} agents,"
            f" observation {OBS}, action {ACTION}, state {STATE}; the paper's network sizes), median of"
            f" {results['rounds']} timed updates after warm-up. The actors' update calls each agent's"
            " denoiser once, not a reverse chain.",
            "",
            *table_lines(omsd["ms"]),
        ]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
