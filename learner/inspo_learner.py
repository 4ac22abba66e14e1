"""InSPO: in-sample sequential policy optimisation (offline), with the QMixLearner's interface.

    learner = InSPOLearner(env_info, cfg.learner, seed=cfg.run.seed)   # deploy/builder.py builds it
    while learner.needs_behaviour_pretraining:      # mu_i by behaviour cloning, and the critic
        learner.pretrain_behaviour(offline_batch)
    metrics = learner.update(batch, phase="offline", env_steps=0, episodes_seen=...)

The parts, each trained only on the dataset's own actions:
- behaviour policy mu: one recurrent network shared by the agents (the agent network's shape and
  inputs), fitted by behaviour cloning with the available-action masks, then frozen. Each policy
  pi_i starts as a copy of it.
- in-sample joint critic: Q(s, a) on the state and the one-hot joint action, V(s) on the state. V is
  the upper expectile of Q over the data's joint actions (IQL); Q regresses on r + gamma V(s'), so
  no target ever evaluates a joint action the data does not hold. It keeps training throughout.
- per agent m, a local critic Q_m(tau_m, .) (the agent network's shape): the joint Q of the data,
  averaged over the teammates' current policies by importance ratios prod_j pi_j / mu_j on the
  dataset's actions (clipped at `inspo_ratio_clip`), i.e. a weighted regression.
- per agent m, a policy pi_m (its own network, so updating one agent leaves the others unchanged),
  fitted by weighted behaviour cloning toward the closed form pi* ~ mu^(a/(a+b)) exp(Q_m/(a+b)).

`update` runs the outer loop one gradient step at a time: one critic step, one step of every
agent's local critic (`inspo_local_critics: all`; `turn`: only the agent whose turn it is), and one
policy step for the agent whose turn it is. A turn is `inspo_agent_updates` steps; an
outer iteration is one turn per agent in a fresh random permutation. With `inspo_sequential` the
ratios use the teammates' policies as they are now (updated earlier in this iteration, else as the
previous iteration left them); without it every teammate counts as in the data (ratio 1).

Online (fine-tuning after the offline phase, on mixed batches of offline and online episodes),
the same updates run with three changes, all choices of ours (the paper is offline only):
- mu keeps learning: one behaviour-cloning step per update on the batch, so that it stays the
  behaviour policy of the data the in-sample weights are computed on (the mixture of the dataset and
  of what the actors played), rather than the dataset's alone;
- the KL anchor of the closed form is `inspo_online_anchor`: pi_m as the offline phase left it
  (frozen at the switch, a memory of the offline policy; the default), pi_m as it is (a
  mirror-descent step) or mu. The weight of a batch action is pi*/mu = (pi*/anchor)(anchor/mu), so
  mu still corrects for who played it;
- with `use_offline_value_memory`, the critic's Q regression is OVM's (Eq. 5): the frozen offline
  critic Q_offline(s, a) at the data's joint action floors the TD target r + gamma V(s'), weighted
  by the memory coefficient lambda_t, exactly as OVMSE floors Q_tot; the value V, the local critics
  and the policies follow that critic.
Networks run in fp32.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from common.agent_stack import AgentStack
from common.config.sections import LearnerConfig
from common.episode import TrainingBatch, training_mask
from common.networks import RNNAgent, agent_network, episode_agent_inputs
from common.probe import greedy_joint_actions
from common.schedules import memory_coefficient_at
from learner import inspo, losses
from learner.shared import env_sizes, episode_lengths, frozen_copy, resolve_device, value_diagnostics

log = logging.getLogger(__name__)

# Width of the joint critic's hidden layers (NOT FROM THE PAPER: twice the agent network's GRU).
CRITIC_HIDDEN = 128
METRIC_KEYS = (
    "loss_bc",
    "loss_q",
    "loss_v",
    "loss_local_q",
    "loss_policy",
    "loss_total",
    "loss_td",
    "loss_ovm",
    "loss_cql",
    "q_tot_mean",
    "ovm_active_fraction",
    "memory_coefficient",
    "update_skipped",
    "ratio_mean",
    "weight_mean",
    "agent",
    "iteration",
)


def _mlp(inputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )


class JointCritic(nn.Module):
    """Q(s, a) on [state, one-hot of every agent's action] and V(s) on the state.

    Not a QMIX mixer: a monotonic mix of per-agent utilities cannot hold XOR-like payoffs (Q(A,B) =
    Q(B,A) = 1 > Q(A,A) = Q(B,B) = 0 has no monotonic decomposition), and telling coordinated from
    miscoordinated joint actions is what the sequential update needs from its critic."""

    def __init__(self, state_size: int, n_agents: int, n_actions: int, hidden: int = CRITIC_HIDDEN):
        super().__init__()
        self.n_actions = n_actions
        self.q = _mlp(state_size + n_agents * n_actions, hidden)
        self.v = _mlp(state_size, hidden)

    def q_value(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """state [..., S], actions [..., n, 1] -> Q [..., 1]."""
        onehot = F.one_hot(actions.squeeze(-1), self.n_actions).to(state.dtype).flatten(-2)
        return self.q(torch.cat([state, onehot], dim=-1))

    def value(self, state: torch.Tensor) -> torch.Tensor:
        return self.v(state)


class InSPOLearner:
    """InSPO (see the module doc); implements `learner.interface.Learner`."""

    ALGORITHM = "inspo"  # its checkpoints' tag (the registry's name for it)

    def __init__(self, env_info: dict, cfg: LearnerConfig, seed: int = 0):
        self.cfg = cfg
        self.env_info = dict(env_info)
        self.n_agents, self.n_actions, self.obs_size, self.state_size = env_sizes(env_info)
        self.device = resolve_device(cfg.device)
        self.precision = "fp32"
        n = self.n_agents
        with torch.random.fork_rng(devices=[]):  # seeded weights; the global RNG is left alone
            torch.manual_seed(seed)
            self.behaviour = self.make_agent().to(self.device)
            self.policies = AgentStack([self.make_agent() for _ in range(n)]).to(self.device)
            self.local_q = AgentStack([self.make_agent() for _ in range(n)]).to(self.device)
            self.critic = JointCritic(self.state_size, n, self.n_actions).to(self.device)
        self.behaviour_optimizer = torch.optim.Adam(self.behaviour.parameters(), lr=cfg.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.local_q_optimizer = torch.optim.Adam(self.local_q.parameters(), lr=cfg.lr)
        self.policy_optimizer = torch.optim.Adam(self.policies.parameters(), lr=cfg.lr)
        self.generator = torch.Generator()  # the agents' permutations
        self.generator.manual_seed(seed)
        self.order: list[int] = list(range(n))
        self.updates = 0
        self.behaviour_updates = 0
        # OVM's memory: the critic frozen at the switch to online (see freeze_offline_memory). The
        # training loop asks `offline_memory_frozen` on every learner.
        self.offline_critic: JointCritic | None = None
        # The policies frozen at the same moment: the online KL anchor "offline_policy".
        self.offline_policies: AgentStack | None = None

    # ------------------------------------------------------------------ networks

    def make_agent(self) -> RNNAgent:
        return agent_network(self.env_info, self.cfg.rnn_hidden_dim)

    def agent_state_dict(self) -> dict[str, torch.Tensor]:
        """The policies' weights (a CPU copy): what acting uses, logits in place of Q-values."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.policies.state_dict().items()}

    @property
    def offline_memory_frozen(self) -> bool:
        return self.offline_critic is not None

    def freeze_offline_memory(self) -> None:
        """Keep frozen copies of the critic (OVM's memory) and of the policies (the anchor
        "offline_policy") as they leave the offline phase."""
        self.offline_critic = frozen_copy(self.critic)
        self.offline_policies = frozen_copy(self.policies)

    # ------------------------------------------------------------------ behaviour cloning + critic

    @property
    def behaviour_pretraining_left(self) -> int:
        return max(0, self.cfg.behaviour_pretrain_updates - self.behaviour_updates)

    @property
    def needs_behaviour_pretraining(self) -> bool:
        return self.behaviour_pretraining_left > 0

    def pretrain_behaviour(self, batch: TrainingBatch) -> float:
        """One behaviour-cloning step of mu and one critic step; after the last, mu is frozen and
        every policy starts as a copy of it. Returns the BC loss."""
        if not self.needs_behaviour_pretraining:
            raise RuntimeError("no behaviour-cloning update is due: the phase is over")
        lengths = episode_lengths(batch)
        batch = batch.to(self.device)
        mask = training_mask(batch.filled, batch.terminated)
        inputs = episode_agent_inputs(batch, self.n_actions)
        loss = self._behaviour_step(inputs, lengths, batch.avail_actions[:, :-1], batch.actions[:, :-1], mask)
        self._critic_step(batch, mask)
        self.behaviour_updates += 1
        if not self.needs_behaviour_pretraining:
            self._start_policies_at_behaviour()
        return float(loss)

    def _start_policies_at_behaviour(self) -> None:
        for p in self.behaviour.parameters():
            p.requires_grad_(False)
        for agent in self.policies.agents:
            agent.load_state_dict(self.behaviour.state_dict())

    def _behaviour_step(self, inputs, lengths, avail, actions, mask) -> torch.Tensor:
        """One behaviour-cloning step of mu on a batch (online: the replay's mixture)."""
        for p in self.behaviour.parameters():
            p.requires_grad_(True)
        logits = self.behaviour.forward_sequence(inputs, lengths=lengths)[:, :-1]
        log_mu = inspo.masked_log_softmax(logits, avail)
        nll = -log_mu.gather(-1, actions).squeeze(-1).mean(-1, keepdim=True)
        loss = (nll * mask).sum() / mask.sum().clamp(min=1.0)
        self.behaviour_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.behaviour.parameters(), self.cfg.grad_clip_offline)
        self.behaviour_optimizer.step()
        return loss.detach()

    def _critic_step(
        self, batch: TrainingBatch, mask: torch.Tensor, memory_coef: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """One step of the in-sample critic; returns (Q loss, V loss, Q at the data's actions, OVM
        parts). With `memory_coef` (online, OVM on) the Q loss is OVM's against the frozen critic."""
        cfg = self.cfg
        state = batch.state
        q = self.critic.q_value(state[:, :-1], batch.actions[:, :-1])  # [B, T, 1]
        with torch.no_grad():
            next_v = self.critic.value(state[:, 1:])
            target = batch.reward[:, :-1] + cfg.gamma * (1.0 - batch.terminated[:, :-1]) * next_v
        loss_td = losses.td_loss(q, target, mask)
        ovm = {"loss_ovm": 0.0, "ovm_active_fraction": 0.0, "memory_coefficient": 0.0}
        loss_q = loss_td
        if memory_coef is not None:
            if self.offline_critic is None:  # no offline phase ran here: the memory is the start
                self.freeze_offline_memory()
            with torch.no_grad():
                q_offline = self.offline_critic.q_value(state[:, :-1], batch.actions[:, :-1])
                active = ((q_offline > target).float() * mask).sum() / mask.sum().clamp(min=1.0)
            loss_q = losses.ovm_loss(q, target, q_offline, mask, memory_coef)
            ovm = {
                "loss_ovm": float(loss_q.detach()),
                "ovm_active_fraction": float(active),
                "memory_coefficient": float(memory_coef),
            }
        ovm["loss_td"] = float(loss_td.detach())
        v = self.critic.value(state[:, :-1])
        loss_v = inspo.expectile_loss(q.detach() - v, cfg.inspo_expectile, mask)
        self.critic_optimizer.zero_grad(set_to_none=True)
        (loss_q + loss_v).backward()
        torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip_offline)
        self.critic_optimizer.step()
        return loss_q.detach(), loss_v.detach(), q.detach(), ovm

    # ------------------------------------------------------------------ the outer loop

    @property
    def turn(self) -> tuple[int, int, int]:
        """(iteration, position in the permutation, step within the turn) of the next update."""
        steps = self.cfg.inspo_agent_updates
        turn, step = divmod(self.updates, steps)
        iteration, position = divmod(turn, self.n_agents)
        return iteration, position, step

    def update(
        self, batch: TrainingBatch, phase: str, env_steps: int, episodes_seen: int
    ) -> dict[str, float]:
        """One step of the critic, and of the local critic and policy of the agent whose turn it is;
        online, first one behaviour-cloning step of mu on the batch (see the module doc)."""
        if phase not in ("offline", "online"):
            raise ValueError(f"phase must be offline or online, got {phase!r}")
        online = phase == "online"
        if self.needs_behaviour_pretraining:
            raise RuntimeError(
                f"InSPO's behaviour policy has had {self.behaviour_updates} of "
                f"{self.cfg.behaviour_pretrain_updates} behaviour-cloning updates; "
                "run pretrain_behaviour first"
            )
        cfg = self.cfg
        iteration, position, step = self.turn
        if position == 0 and step == 0:  # a new outer iteration: a fresh random order of the agents
            self.order = torch.randperm(self.n_agents, generator=self.generator).tolist()
        m = self.order[position]
        lengths = episode_lengths(batch)
        batch = batch.to(self.device)
        mask = training_mask(batch.filled, batch.terminated)
        avail = batch.avail_actions[:, :-1]
        actions = batch.actions[:, :-1]
        inputs = episode_agent_inputs(batch, self.n_actions)

        loss_bc = torch.zeros(())
        if online:  # mu follows the replay's mixture of dataset and online episodes
            loss_bc = self._behaviour_step(inputs, lengths, avail, actions, mask)
        memory_coef = None
        if online and cfg.use_offline_value_memory:
            memory_coef = memory_coefficient_at(cfg, env_steps)
        loss_q, loss_v, q_joint, ovm = self._critic_step(batch, mask, memory_coef)

        with torch.no_grad():
            log_mu = inspo.masked_log_softmax(
                self.behaviour.forward_sequence(inputs, lengths=lengths)[:, :-1], avail
            )
            log_pi = None  # every agent's current policy, when the sequential ratios need it
            if cfg.inspo_sequential:
                log_pi = inspo.masked_log_softmax(
                    self.policies.forward_sequence(inputs, lengths)[:, :-1], avail
                )
        loss_local, ratio = self._local_critic_step(
            m, inputs, lengths, actions, q_joint, log_pi, log_mu, mask
        )

        # pi_m by behaviour cloning weighted with pi* / mu, pi* from the updated Q_m.
        with torch.no_grad():
            q_m = self.local_q.forward_agent(m, inputs, lengths)[:, :-1]
            log_mu_m, avail_m, action_m = log_mu[:, :, m], avail[:, :, m], actions[:, :, m]
            # Offline the KL anchor is mu, the dataset's behaviour (the paper's objective). Online it is
            # `inspo_online_anchor`; mu stays the importance correction (see module doc).
            log_anchor = log_mu_m
            if online:
                log_anchor = self._online_anchor(m, inputs, lengths, avail_m, log_pi, log_mu_m)
            value = inspo.soft_value(log_anchor, q_m, avail_m, cfg.inspo_alpha, cfg.inspo_beta)
            log_w = inspo.anchored_log_weights(
                q_m.gather(-1, action_m),
                value,
                log_anchor.gather(-1, action_m),
                log_mu_m.gather(-1, action_m),
                cfg.inspo_alpha,
                cfg.inspo_beta,
            )
        logits = self.policies.forward_agent(m, inputs, lengths)[:, :-1]
        loss_policy = inspo.weighted_bc_loss(logits, action_m, avail_m, log_w, mask, cfg.inspo_max_log_weight)
        self.policy_optimizer.zero_grad(set_to_none=True)
        loss_policy.backward()
        torch.nn.utils.clip_grad_norm_(self.policies.agents[m].parameters(), cfg.grad_clip_offline)
        self.policy_optimizer.step()
        self.updates += 1

        with torch.no_grad():
            total = mask.sum().clamp(min=1.0)
            values = torch.stack(
                [
                    loss_q,
                    loss_v,
                    loss_local.detach(),
                    loss_policy.detach(),
                    (q_joint * mask).sum() / total,
                    (ratio * mask).sum() / total,
                    (log_w.clamp(max=cfg.inspo_max_log_weight).exp() * mask).sum() / total,
                ]
            ).tolist()
        metrics = dict(
            zip(
                (
                    "loss_q",
                    "loss_v",
                    "loss_local_q",
                    "loss_policy",
                    "q_tot_mean",
                    "ratio_mean",
                    "weight_mean",
                ),
                values,
                strict=True,
            )
        )
        metrics.update(
            loss_bc=float(loss_bc),
            loss_total=metrics["loss_q"]
            + metrics["loss_v"]
            + metrics["loss_local_q"]
            + metrics["loss_policy"],
            loss_cql=0.0,
            update_skipped=0.0,
            agent=float(m),
            iteration=float(iteration),
            **ovm,
        )
        return {key: metrics[key] for key in METRIC_KEYS}

    def _local_critic_step(self, m, inputs, lengths, actions, q_joint, log_pi, log_mu, mask):
        """One step of the local critics Q_i(tau_i, a_i): the joint value averaged over the
        teammates' current policies (importance ratios on the batch's joint actions). Agent m's alone
        (`inspo_local_critics: turn`) or every agent's (`all`). Returns (agent m's loss, its ratio)."""
        cfg = self.cfg
        agents = [m] if cfg.inspo_local_critics == "turn" else list(range(self.n_agents))
        with torch.no_grad():
            if log_pi is None:  # independent: the teammates as in the data
                ratios = torch.ones_like(mask).expand(*mask.shape[:-1], self.n_agents)
            else:
                log_ratios = inspo.teammate_log_ratios(log_pi, log_mu, actions)  # [B, T, n]
                ratios = inspo.clipped_ratio(log_ratios, cfg.inspo_ratio_clip)
        losses_ = {}
        self.local_q_optimizer.zero_grad(set_to_none=True)
        for i in agents:
            local = self.local_q.forward_agent(i, inputs, lengths)[:, :-1]  # [B, T, A]
            loss = inspo.weighted_regression_loss(
                local.gather(-1, actions[:, :, i]), q_joint, ratios[..., i : i + 1], mask
            )
            loss.backward()  # each agent's network gets its own loss only
            torch.nn.utils.clip_grad_norm_(self.local_q.agents[i].parameters(), cfg.grad_clip_offline)
            losses_[i] = loss.detach()
        self.local_q_optimizer.step()
        return losses_[m], ratios[..., m : m + 1]

    def _online_anchor(self, m, inputs, lengths, avail_m, log_pi, log_mu_m) -> torch.Tensor:
        """log of agent m's online KL anchor at the batch's rows, [B, T, A]."""
        anchor = self.cfg.inspo_online_anchor
        if anchor == "behaviour":
            return log_mu_m
        if anchor == "offline_policy":
            if self.offline_policies is None:  # the first online update: pi as the offline phase left it
                self.offline_policies = frozen_copy(self.policies)
            net = self.offline_policies
        elif log_pi is not None:  # "policy": pi_m is unchanged since the ratios read it
            return log_pi[:, :, m]
        else:
            net = self.policies
        return inspo.masked_log_softmax(net.forward_agent(m, inputs, lengths)[:, :-1], avail_m)

    # ------------------------------------------------------------------ reading the policies

    @torch.no_grad()
    def action_probabilities(self, batch: TrainingBatch, behaviour: bool = False) -> torch.Tensor:
        """pi_i(. | tau_i) (or mu_i) at every row of the batch, [B, T, n, A]."""
        lengths = episode_lengths(batch)
        batch = batch.to(self.device)
        inputs = episode_agent_inputs(batch, self.n_actions)
        net = self.behaviour if behaviour else self.policies
        logits = net.forward_sequence(inputs, lengths=lengths)[:, :-1]
        return inspo.masked_log_softmax(logits, batch.avail_actions[:, :-1]).exp()

    @torch.no_grad()
    def probe_q(self, batch: TrainingBatch) -> float:
        """Mean Q(s_t, a_t) of the joint critic over the batch's real steps (the unlearning probe)."""
        batch = batch.to(self.device)
        q = self.critic.q_value(batch.state[:, :-1], batch.actions[:, :-1])
        mask = training_mask(batch.filled, batch.terminated)
        return float((q * mask).sum() / mask.sum().clamp(min=1.0))

    def greedy_joint_actions(self, batch: TrainingBatch) -> torch.Tensor:
        """The policies' greedy joint actions [B, T, n] on the batch's trained steps."""
        return greedy_joint_actions(self.policies, batch)

    @torch.no_grad()
    def value_diagnostics(self, batch: TrainingBatch) -> dict[str, float]:
        """The joint critic's Q of the data's and of the policies' greedy joint actions on `batch`,
        and their agreement (`learner.shared.value_diagnostics`)."""
        greedy = self.greedy_joint_actions(batch).to(self.device).unsqueeze(-1)
        batch = batch.to(self.device)
        state = batch.state[:, :-1]
        q_greedy = self.critic.q_value(state, greedy)
        q_data = self.critic.q_value(state, batch.actions[:, :-1])
        return value_diagnostics(batch, greedy, q_greedy, q_data, self.cfg.gamma)

    # ------------------------------------------------------------------ state (checkpoints)

    def state_dict(self) -> dict:
        """Everything a resumed learner needs, as tensors and plain values (torch.load weights_only)."""
        memory = {
            name: getattr(self, name).state_dict()
            for name in ("offline_critic", "offline_policies")
            if getattr(self, name) is not None
        }
        return {
            "format": 1,
            "algorithm": self.ALGORITHM,
            "shape": self.network_shape(),
            "behaviour": self.behaviour.state_dict(),
            "policies": self.policies.state_dict(),
            "local_q": self.local_q.state_dict(),
            "critic": self.critic.state_dict(),
            "behaviour_optimizer": self.behaviour_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "local_q_optimizer": self.local_q_optimizer.state_dict(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "order": list(self.order),
            "updates": self.updates,
            "behaviour_updates": self.behaviour_updates,
            **memory,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("algorithm") != self.ALGORITHM:
            raise ValueError("checkpoint is not an InSPO learner's (learner.algorithm differs)")
        if state.get("shape") != self.network_shape():
            raise ValueError(
                f"checkpoint is for networks {state.get('shape')}, this learner has {self.network_shape()}"
            )
        for name in ("behaviour", "policies", "local_q", "critic"):
            getattr(self, name).load_state_dict(state[name])
        for name in ("behaviour_optimizer", "critic_optimizer", "local_q_optimizer", "policy_optimizer"):
            getattr(self, name).load_state_dict(state[name])
        self.generator.set_state(state["generator"].cpu())
        self.order = [int(i) for i in state["order"]]
        self.updates = int(state["updates"])
        self.behaviour_updates = int(state["behaviour_updates"])
        self.offline_critic = self.offline_policies = None
        for name, live in (("offline_critic", self.critic), ("offline_policies", self.policies)):
            if name in state:  # the frozen copies share their live networks' shapes
                setattr(self, name, frozen_copy(live))
                getattr(self, name).load_state_dict(state[name])
        if not self.needs_behaviour_pretraining:
            for p in self.behaviour.parameters():
                p.requires_grad_(False)

    def network_shape(self) -> dict:
        return {
            "n_agents": self.n_agents,
            "n_actions": self.n_actions,
            "obs_size": self.obs_size,
            "state_size": self.state_size,
            "rnn_hidden_dim": self.cfg.rnn_hidden_dim,
        }
