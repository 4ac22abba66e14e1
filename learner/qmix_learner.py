"""The QMIX learner: one gradient step per `update`, offline (TD + CQL) or online (TD or OVM, plus
online CQL where its weight is set).

    learner = QMixLearner(env_info, cfg.learner, seed=cfg.run.seed)   # deploy/builder.py builds it
    while learner.needs_behaviour_pretraining:   # CFCQL only: clone the behaviour policy first
        learner.pretrain_behaviour(offline_batch)
    metrics = learner.update(batch, phase="offline", env_steps=0, episodes_seen=k * batch_size_run)
    ...
    learner.freeze_offline_memory()          # at the switch to online (OVM's Q_offline)
    metrics = learner.update(batch, phase="online", env_steps=online_steps, episodes_seen=...)
    weights = learner.agent_state_dict()     # for the actors' RNNAgent

What each `LearnerConfig` field does here:
- lr (Adam), gamma, td_lambda: the TD(lambda) targets (`targets.td_lambda_targets`, double Q).
- target_update_interval: hard copy of agent + mixer to the targets once `episodes_seen` has grown
  by this much since the last copy (PyMARL2 counts episodes, `batch_size_run` per update).
- grad_clip_offline / grad_clip_online: global gradient-norm clip of agent + mixer per phase.
- offline_cql: the CQL variant, "cql" (raw MACQL over `cql_sampled_actions` joint actions drawn
  by `cql_sampler`), "cfcql" (counterfactual, agent weights from `cfcql_softmax_temperature` and
  a behaviour-cloning policy) or "none". Offline the loss is TD + offline_cql_weight * CQL; online
  the same variant is added with online_cql_weight when that is > 0.
- calql_floor: Cal-QL on top of either variant: the current policy's (greedy) actions in the
  push-down term are floored at the Monte-Carlo return-to-go.
- behaviour_pretrain_updates: CFCQL's behaviour-cloning phase, `pretrain_behaviour` once per batch
  before the CQL updates; then the behaviour policy is frozen. 0 = no behaviour policy (uniform
  agent weights, as tau = 0).
- use_offline_value_memory, memory_coef_start/end, memory_anneal_steps, ovm_target: online loss OVM
  (Eq. 5) with lambda_t from `common.schedules.memory_coefficient_at(env_steps)` and y_TD the
  TD(lambda) or one-step target, else plain TD(lambda).
- rnn_hidden_dim, mixing_embed_dim, hypernet_embed_dim: network sizes. device: "auto" = cuda when
  available, else cpu.
- precision: "fp32" | "bf16" | "auto" (`resolve_precision`). In bf16 the networks' passes (agent
  sequence, mixer hypernetworks, target and OVM-memory networks) run under bf16 autocast; their
  outputs are cast back to fp32 before Q_tot is mixed, so the mixing sum, the targets' recursion,
  the losses and their reductions, the gradients' accumulation into fp32 weights and Adam stay fp32.
`method`, `batch_size`, `batch_size_run`, `offline_updates`, `weight_publish_interval` and
`checkpoint_interval` are for the caller (the sampler and the training loop).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import sys

import torch

from common.config.sections import LearnerConfig
from common.episode import TrainingBatch, training_mask
from common.networks import (
    MixingWeights,
    QMixer,
    RNNAgent,
    agent_input_size,
    agent_network,
    episode_agent_inputs,
    mix,
)
from common.probe import greedy_joint_actions
from common.schedules import memory_coefficient_at
from learner import losses
from learner.shared import env_sizes, episode_lengths, frozen_copy, resolve_device, value_diagnostics
from learner.targets import double_q_max, one_step_targets, td_lambda_targets

log = logging.getLogger(__name__)

PHASES = ("offline", "online")
# The keys of `QMixLearner.update`'s metrics, always all present (0.0 where a part is inactive).
METRIC_KEYS = (
    "loss_td",
    "loss_ovm",
    "loss_cql",
    "loss_bc",
    "loss_total",
    "q_tot_mean",
    "target_mean",
    "ovm_active_fraction",
    "memory_coefficient",
    "cql_weight",
    "grad_norm",
    "update_skipped",
)


# /proc/cpuinfo flags of CPU units that run bf16 matrix products natively: AMX tiles (Sapphire
# Rapids on), AVX512-BF16 dot products (Cooper Lake, Zen 4 on). Without them oneDNN emulates bf16 by
# converting to fp32, which is slower than plain fp32.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """Which of `CPU_BF16_FLAGS` this CPU has ([] where /proc/cpuinfo cannot be read)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


def resolve_precision(name: str, device: torch.device) -> str:
    """Precision "auto" -> "bf16" where the device computes bf16 fast (a CPU with `CPU_BF16_FLAGS`
    and oneDNN, a CUDA device with native bf16), else "fp32"; "fp32" and "bf16" as given."""
    if name != "auto":
        return name
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.3 has no emulation and no argument
            native = torch.cuda.is_bf16_supported()
        return "bf16" if native else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_flags() and torch.backends.mkldnn.is_available() else "fp32"
    return "fp32"


def keep_freed_host_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    A CPU update allocates and frees tensors of tens of MB; by default glibc serves those with fresh
    mmap()s, and touching every new page costs more than the matrix products themselves (measured:
    ~70k page faults and 0.3 s of system time per 128-episode update). With mmap off and trimming
    off, freed blocks are reused, like a caching allocator. Process-wide and idempotent; returns
    False where it does not apply (not Linux/glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_trim_threshold, 2**31 - 1)) and bool(libc.mallopt(m_mmap_max, 0))
    except (OSError, AttributeError):
        return False


class QMixLearner:
    """QMIX with double Q and TD(lambda), CQL/CFCQL/Cal-QL and OVM (see the module doc)."""

    def __init__(self, env_info: dict, cfg: LearnerConfig, seed: int = 0):
        self.cfg = cfg
        self.env_info = dict(env_info)
        self.n_agents, self.n_actions, self.obs_size, self.state_size = env_sizes(env_info)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu":
            keep_freed_host_memory()
        self.precision = resolve_precision(cfg.precision, self.device)  # "fp32" | "bf16"
        if self.device.type == "cuda" and self.precision == "fp32":
            # TF32 matmuls: fp32 storage, 10-bit mantissa products on the tensor cores. Process-wide.
            torch.set_float32_matmul_precision("high")
        log.info(
            "learner precision: %s (learner.precision=%s, device %s)",
            self.precision,
            cfg.precision,
            self.device,
        )
        self.input_size = agent_input_size(self.obs_size, self.n_actions, self.n_agents)
        # CFCQL's agent weights need a behaviour-cloning policy (CFCQL's `behaviour_mac`).
        self.uses_behaviour_policy = (
            cfg.offline_cql == "cfcql"
            and cfg.cfcql_softmax_temperature > 0
            and cfg.behaviour_pretrain_updates > 0
        )
        with torch.random.fork_rng(devices=[]):  # seed the initial weights, leave global RNG alone
            torch.manual_seed(seed)
            self.agent = self.make_agent().to(self.device)
            self.mixer = QMixer(
                self.n_agents, self.state_size, cfg.mixing_embed_dim, cfg.hypernet_embed_dim
            ).to(self.device)
            self.behaviour = self.make_agent().to(self.device) if self.uses_behaviour_policy else None
        self.target_agent = frozen_copy(self.agent)
        self.target_mixer = frozen_copy(self.mixer)
        self.offline_agent: RNNAgent | None = None  # OVM's frozen Q_offline, see freeze_offline_memory
        self.offline_mixer: QMixer | None = None
        self.params = list(self.agent.parameters()) + list(self.mixer.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr)
        self.behaviour_optimizer = (
            torch.optim.Adam(self.behaviour.parameters(), lr=cfg.lr) if self.behaviour is not None else None
        )
        self.generator = torch.Generator(device=self.device)  # CQL's sampled joint actions
        self.generator.manual_seed(seed)
        self.updates = 0  # gradient steps taken
        self.skipped_updates = 0  # steps not taken: the loss or the gradient was not finite
        self.behaviour_updates = 0  # steps of the behaviour-cloning phase taken
        self.target_updates = 0
        self.last_target_update_episode = 0

    # ------------------------------------------------------------------ networks

    def make_agent(self) -> RNNAgent:
        """A fresh agent network of this learner's shape (what actors build to load weights into)."""
        return agent_network(self.env_info, self.cfg.rnn_hidden_dim)

    def agent_state_dict(self) -> dict[str, torch.Tensor]:
        """The online agent network's weights as CPU tensors (a copy), for broadcasting to actors."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.agent.state_dict().items()}

    @property
    def offline_memory_frozen(self) -> bool:
        return self.offline_agent is not None

    def freeze_offline_memory(self) -> None:
        """Keep a frozen copy of the current *target* agent and mixer as OVM's Q_offline. Call once,
        at the switch from offline to online training."""
        self.offline_agent = frozen_copy(self.target_agent)
        self.offline_mixer = frozen_copy(self.target_mixer)

    def update_targets(self) -> None:
        """Hard copy of agent and mixer into the target networks."""
        self.target_agent.load_state_dict(self.agent.state_dict())
        self.target_mixer.load_state_dict(self.mixer.state_dict())
        self.target_updates += 1

    # ------------------------------------------------------------------ CFCQL's behaviour policy

    @property
    def behaviour_pretraining_left(self) -> int:
        """Behaviour-cloning updates still to run before CQL may use the behaviour policy (0 when
        this learner has none, or its phase is over)."""
        if self.behaviour is None:
            return 0
        return max(0, self.cfg.behaviour_pretrain_updates - self.behaviour_updates)

    @property
    def needs_behaviour_pretraining(self) -> bool:
        return self.behaviour_pretraining_left > 0

    def pretrain_behaviour(self, batch: TrainingBatch) -> float:
        """One behaviour-cloning step on `batch`'s actions (CFCQL trains its behaviour policy in a
        phase of its own, before CQL); returns the loss. After the last one the policy is frozen."""
        if not self.needs_behaviour_pretraining:
            raise RuntimeError("no behaviour-cloning update is due: the phase is over or not configured")
        assert self.behaviour is not None and self.behaviour_optimizer is not None
        lengths = episode_lengths(batch)
        batch = self._to_device(batch)
        mask = training_mask(batch.filled, batch.terminated)
        with self._compute():
            logits = self.behaviour.forward_sequence(self._agent_inputs(batch), lengths=lengths)[:, :-1]
        loss = losses.behaviour_cloning_loss(
            logits.float(), batch.actions[:, :-1], batch.avail_actions[:, :-1], mask
        )
        self.behaviour_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.behaviour.parameters(), self.cfg.grad_clip_offline)
        self.behaviour_optimizer.step()
        self.behaviour_updates += 1
        self._freeze_behaviour_when_done()
        return float(loss.detach())

    def _freeze_behaviour_when_done(self) -> None:
        if self.behaviour is not None and not self.needs_behaviour_pretraining:
            for p in self.behaviour.parameters():
                p.requires_grad_(False)

    # ------------------------------------------------------------------ the update

    def update(
        self, batch: TrainingBatch, phase: str, env_steps: int, episodes_seen: int
    ) -> dict[str, float]:
        """One gradient step on `batch` for `phase` ("offline" | "online").

        env_steps: environment steps of the online phase so far (sets OVM's lambda_t; ignored
        offline). episodes_seen: episodes credited to the learner over both phases, never
        decreasing (sets the target-network copies). Returns `METRIC_KEYS` as floats."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        cfg = self.cfg
        online = phase == "online"
        lengths = episode_lengths(batch)  # before the transfer: no device sync for it
        batch = self._to_device(batch)
        state = batch.state
        avail = batch.avail_actions
        actions = batch.actions[:, :-1]
        reward = batch.reward[:, :-1]
        terminated = batch.terminated[:, :-1]
        mask = training_mask(batch.filled, batch.terminated)  # [B, T, 1]
        inputs = self._agent_inputs(batch)  # [B, T+1, n, in]

        # Q(tau_t, .) for every row, and Q_tot of the data actions on the trained rows.
        with self._compute():
            agent_qs = self.agent.forward_sequence(inputs, lengths=lengths)  # [B, T+1, n, A]; 0 on padding
            weights = self.mixer.mixing_weights(state[:, :-1])
        # Gathered in the compute dtype, then cast: the same values as casting all of agent_qs first.
        chosen = agent_qs[:, :-1].gather(-1, actions).squeeze(-1).float()  # [B, T, n]
        q_tot = mix(chosen, weights)  # [B, T, 1]; fp32 sums of bf16 weights read as fp32

        uses_memory = online and cfg.use_offline_value_memory
        with torch.no_grad():
            with self._compute():
                target_qs = self.target_agent.forward_sequence(inputs, lengths=lengths)
                target_weights = self.target_mixer.mixing_weights(state)
            greedy_values = double_q_max(agent_qs.detach(), target_qs, avail)  # [B, T+1, n], fp32
            bootstrap = mix(greedy_values, target_weights)  # [B, T+1, 1]
            if uses_memory and cfg.ovm_target == "one_step":  # the paper's Eq. 4, inside OVM only
                y_td = one_step_targets(reward, terminated, bootstrap, cfg.gamma)
            else:
                y_td = td_lambda_targets(reward, terminated, mask, bootstrap, cfg.gamma, cfg.td_lambda)

        zero = q_tot.new_zeros(())
        loss_td = losses.td_loss(q_tot, y_td, mask)
        loss_ovm, active, memory_coef = zero, zero, 0.0
        if uses_memory:
            memory_coef = memory_coefficient_at(cfg, env_steps)
            if self.offline_agent is None:  # no offline phase ran: the memory is the start point
                self.freeze_offline_memory()
            with torch.no_grad():
                q_offline = self._offline_q_tot(inputs, actions, state, lengths)
                active = masked_fraction(q_offline > y_td, mask)
            loss_ovm = losses.ovm_loss(q_tot, y_td, q_offline, mask, memory_coef)
            loss = loss_ovm
        else:
            loss = loss_td

        cql_weight = cfg.online_cql_weight if online else cfg.offline_cql_weight
        loss_cql, loss_bc = zero, zero
        if cfg.offline_cql != "none" and cql_weight > 0:
            behaviour_logits = None
            if self.behaviour is not None:
                if self.needs_behaviour_pretraining:  # weights from a half-trained policy would be noise
                    raise RuntimeError(
                        f"CFCQL's behaviour policy has had {self.behaviour_updates} of "
                        f"{cfg.behaviour_pretrain_updates} behaviour-cloning updates; run "
                        "pretrain_behaviour on offline batches before the CQL updates"
                    )
                with torch.no_grad():  # frozen: only read, and its fit to this batch reported
                    with self._compute():
                        behaviour_logits = self.behaviour.forward_sequence(inputs, lengths=lengths)[:, :-1]
                    behaviour_logits = behaviour_logits.float()
                    loss_bc = losses.behaviour_cloning_loss(behaviour_logits, actions, avail[:, :-1], mask)
            loss_cql = self._cql_term(
                agent_qs[:, :-1].float(),
                chosen,
                _float_weights(weights),
                q_tot,
                batch,
                mask,
                behaviour_logits,
            )
            loss = loss + cql_weight * loss_cql

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.grad_clip_online if online else cfg.grad_clip_offline
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        with torch.no_grad():
            values = torch.stack(
                [
                    loss_td.detach(),
                    loss_ovm.detach(),
                    loss_cql.detach(),
                    loss_bc.detach(),
                    loss.detach(),
                    losses.masked_mean(q_tot.detach(), mask),
                    losses.masked_mean(y_td, mask),
                    active,
                    grad_norm.to(zero.dtype),
                ]
            ).tolist()  # one device sync, before the step: it decides whether the step is taken
        metrics = dict(zip(METRIC_KEYS[:8] + ("grad_norm",), values, strict=True))
        metrics["memory_coefficient"] = float(memory_coef)
        metrics["cql_weight"] = float(cql_weight) if cfg.offline_cql != "none" else 0.0
        # A non-finite loss or gradient would make every weight NaN: skip the step (nothing changes,
        # not even the counters) and say so; the caller counts it.
        skipped = not (math.isfinite(metrics["loss_total"]) and math.isfinite(metrics["grad_norm"]))
        metrics["update_skipped"] = float(skipped)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            log.warning(
                "skipped a %s update: loss %s, gradient norm %s (not finite)",
                phase,
                metrics["loss_total"],
                metrics["grad_norm"],
            )
            return {key: metrics[key] for key in METRIC_KEYS}
        self.optimizer.step()
        self.updates += 1
        if episodes_seen < self.last_target_update_episode:  # the caller's count restarted
            self.last_target_update_episode = episodes_seen
        if (episodes_seen - self.last_target_update_episode) / cfg.target_update_interval >= 1.0:
            self.update_targets()
            self.last_target_update_episode = episodes_seen
        return {key: metrics[key] for key in METRIC_KEYS}

    # ------------------------------------------------------------------ pieces of the update

    def _compute(self) -> contextlib.AbstractContextManager:
        """The context the networks' passes run in: bf16 autocast for precision "bf16"."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, batch: TrainingBatch) -> TrainingBatch:
        if batch.state.device == self.device:
            return batch
        if self.device.type == "cuda" and batch.state.device.type == "cpu":
            if not batch.state.is_pinned():
                batch = batch.pin_memory()
            return batch.to(self.device, non_blocking=True)
        return batch.to(self.device)

    def _agent_inputs(self, batch: TrainingBatch) -> torch.Tensor:
        """What the agents saw on the batch's episodes, [B, T+1, n, in], in the compute dtype (bf16
        autocast would cast them again for each of the up to four networks that read them)."""
        dtype = torch.bfloat16 if self.precision == "bf16" else None
        return episode_agent_inputs(batch, self.n_actions, dtype)

    def _offline_q_tot(
        self, inputs: torch.Tensor, actions: torch.Tensor, state: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        assert self.offline_agent is not None and self.offline_mixer is not None
        with self._compute():
            qs = self.offline_agent.forward_sequence(inputs, lengths=lengths)[:, :-1]
            weights = self.offline_mixer.mixing_weights(state[:, :-1])
        return mix(qs.gather(-1, actions).squeeze(-1).float(), weights)

    def _cql_term(self, agent_qs, chosen, weights, q_tot, batch, mask, behaviour_logits) -> torch.Tensor:
        cfg = self.cfg
        avail = batch.avail_actions[:, :-1]
        floor = None
        if cfg.calql_floor:  # Cal-QL: the floor is the return-to-go, a sum along each episode
            floor = losses.mc_returns(batch.reward[:, :-1], mask, cfg.gamma)
        # Every term below is a masked mean over steps, each step on its own: computed on the
        # trained steps alone, flattened to [N, 1, ...], it is the same mean without the padding.
        rows = losses.trained_rows(mask)

        def trained(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.flatten(0, 1)[rows].unsqueeze(1)

        agent_qs, chosen, q_tot, mask, avail = map(trained, (agent_qs, chosen, q_tot, mask, avail))
        floor, behaviour_logits = trained(floor), trained(behaviour_logits)
        weights = MixingWeights(*map(trained, weights))
        policy_actions = None
        if cfg.calql_floor:  # the current policy: the greedy one over available actions
            policy_actions = losses.greedy_actions(agent_qs, avail)
        if cfg.offline_cql == "cfcql":
            return losses.counterfactual_cql_term(
                agent_qs,
                chosen,
                weights,
                avail,
                q_tot,
                mask,
                behaviour_logits,
                cfg.cfcql_softmax_temperature,
                floor,
                policy_actions,
            )
        if cfg.cql_sampler == "all_actions":
            sampled = losses.sample_uniform_actions(avail, cfg.cql_sampled_actions, self.generator)
        else:
            sampled = losses.sample_available_actions(avail, cfg.cql_sampled_actions, self.generator)
        return losses.sampled_cql_term(agent_qs, weights, avail, q_tot, mask, sampled, floor, policy_actions)

    # ------------------------------------------------------------------ the probe

    @torch.no_grad()
    def probe_q(self, batch: TrainingBatch) -> float:
        """Mean Q_tot(s_t, a_t) of the online networks over the batch's real steps (the unlearning
        probe, the paper's Figure 1)."""
        batch = batch.to(self.device)
        q = self.agent.forward_sequence(episode_agent_inputs(batch, self.n_actions))[:, :-1]
        chosen = torch.gather(q, dim=3, index=batch.actions[:, :-1]).squeeze(3)
        q_tot = self.mixer(chosen, batch.state[:, :-1])
        mask = training_mask(batch.filled, batch.terminated)
        return float((q_tot * mask).sum() / mask.sum().clamp(min=1))

    def greedy_joint_actions(self, batch: TrainingBatch) -> torch.Tensor:
        """The online agent network's greedy joint actions [B, T, n] on the batch's trained steps."""
        return greedy_joint_actions(self.agent, batch)

    @torch.no_grad()
    def value_diagnostics(self, batch: TrainingBatch) -> dict[str, float]:
        """Q_tot of the data's and of the greedy joint actions on `batch`, and their agreement
        (`learner.shared.value_diagnostics`)."""
        batch = batch.to(self.device)
        q = self.agent.forward_sequence(episode_agent_inputs(batch, self.n_actions))[:, :-1]
        greedy = q.masked_fill(~batch.avail_actions[:, :-1].bool(), float("-inf")).argmax(-1, keepdim=True)
        state = batch.state[:, :-1]
        q_greedy = self.mixer(q.gather(-1, greedy).squeeze(-1), state)
        q_data = self.mixer(q.gather(-1, batch.actions[:, :-1]).squeeze(-1), state)
        return value_diagnostics(batch, greedy, q_greedy, q_data, self.cfg.gamma)

    # ------------------------------------------------------------------ state (checkpoints)

    def state_dict(self) -> dict:
        """Everything a resumed learner needs, as tensors and plain values only, so that loading
        it back never needs to unpickle arbitrary objects (see learner/checkpoint.py)."""
        state = {
            "format": 1,
            "shape": self.network_shape(),
            "agent": self.agent.state_dict(),
            "mixer": self.mixer.state_dict(),
            "target_agent": self.target_agent.state_dict(),
            "target_mixer": self.target_mixer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "updates": self.updates,
            "target_updates": self.target_updates,
            "last_target_update_episode": self.last_target_update_episode,
        }
        if self.offline_agent is not None and self.offline_mixer is not None:
            state["offline_agent"] = self.offline_agent.state_dict()
            state["offline_mixer"] = self.offline_mixer.state_dict()
        if self.behaviour is not None and self.behaviour_optimizer is not None:
            state["behaviour"] = self.behaviour.state_dict()
            state["behaviour_optimizer"] = self.behaviour_optimizer.state_dict()
            state["behaviour_updates"] = self.behaviour_updates
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("shape") != self.network_shape():
            raise ValueError(
                f"checkpoint is for networks {state.get('shape')}, this learner has {self.network_shape()}"
            )
        self.agent.load_state_dict(state["agent"])
        self.mixer.load_state_dict(state["mixer"])
        self.target_agent.load_state_dict(state["target_agent"])
        self.target_mixer.load_state_dict(state["target_mixer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.updates = int(state["updates"])
        self.target_updates = int(state["target_updates"])
        self.last_target_update_episode = int(state["last_target_update_episode"])
        if "offline_agent" in state:
            self.freeze_offline_memory()  # builds the frozen modules; then their saved weights
            assert self.offline_agent is not None and self.offline_mixer is not None
            self.offline_agent.load_state_dict(state["offline_agent"])
            self.offline_mixer.load_state_dict(state["offline_mixer"])
        else:
            self.offline_agent = self.offline_mixer = None
        if self.behaviour is not None and self.behaviour_optimizer is not None and "behaviour" in state:
            self.behaviour.load_state_dict(state["behaviour"])
            self.behaviour_optimizer.load_state_dict(state["behaviour_optimizer"])
            # Older checkpoints trained it alongside CQL and have no count: its phase is over.
            self.behaviour_updates = int(state.get("behaviour_updates", self.cfg.behaviour_pretrain_updates))
            self._freeze_behaviour_when_done()

    def network_shape(self) -> dict:
        cfg = self.cfg
        return {
            "n_agents": self.n_agents,
            "n_actions": self.n_actions,
            "obs_size": self.obs_size,
            "state_size": self.state_size,
            "rnn_hidden_dim": cfg.rnn_hidden_dim,
            "mixing_embed_dim": cfg.mixing_embed_dim,
            "hypernet_embed_dim": cfg.hypernet_embed_dim,
        }


def masked_fraction(condition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of trained steps where `condition` [B, T, 1] holds."""
    return losses.masked_mean(condition.to(mask.dtype), mask)


def _float_weights(weights: MixingWeights) -> MixingWeights:
    """The mixer's weights in fp32 (a no-op when they are), so Q_tot is summed in fp32."""
    return MixingWeights(*(w.float() for w in weights))
