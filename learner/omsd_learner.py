"""OMSD: offline MARL by sequential score decomposition (arXiv 2505.05968), for continuous actions.

    learner = OMSDLearner(n_agents, obs_size, state_size, action_size, OMSDConfig(), seed=0)
    for _ in range(cfg.behaviour_steps): learner.update_behaviour(data.sample(512, g))
    for _ in range(cfg.critic_steps):    learner.update_critic(data.sample(512, g))
    for _ in range(cfg.actor_steps):     learner.update_actors(data.sample(512, g))
    actions = learner.act(obs)           # decentralised: agent i reads only obs[:, i]

Three phases, each on the dataset alone (`phase` says which one is due, `update` runs it):
1. behaviour: one conditional diffusion model per agent, mu_i(a_i | o_i, a_<i) in a fixed agent
   order ("sequential", OMSD) or mu_i(a_i | o_i) ("independent", the paper's IND ablation), or one
   model of the joint action mu(a_1..a_n | o_1..o_n) ("joint", the JAL-style ablation), by the
   denoising loss (`learner.diffusion`); frozen afterwards.
2. critic: IQL in-sample, twin Q(s, a) on the joint action and V(s) (`learner.iql_critic`).
3. actors: one deterministic policy per agent, tanh MLP on its own observation, by the score-
   regularised loss of `learner.omsd` (one denoiser call per agent, or one in all for "joint";
   never a reverse chain).

Inside the learner actions live in the normalised box [-1, 1]^A (what the diffusion schedule and
the tanh policies assume); `act` and `sample_behaviour` return them in the world's box. Networks
run in fp32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from common.errors import CheckpointError, InputError
from common.transitions import TransitionBatch
from learner import omsd
from learner.diffusion import BehaviourModels, JointBehaviourModel, draw_training_noise
from learner.iql_critic import IQLCritic, mlp
from learner.shared import resolve_device

VARIANTS = ("sequential", "independent", "joint")


@dataclass(frozen=True)
class OMSDConfig:
    """OMSD's settings. Sources: the paper (arXiv 2505.05968) and the authors' code (github
    qiaodan-cuhk/diffmarl: main.py's flags, algorithms/SRPO.py, algorithms/model.py, the bash/mpe
    scripts). Where the two differ, the code's value is the default."""

    # "sequential": mu_i(a_i | o_i, a_<i) (OMSD); "independent": mu_i(a_i | o_i) (IND ablation);
    # "joint": one mu(a_1..a_n | o_1..o_n) over the joint action (the JAL-style ablation).
    variant: str = "sequential"
    # Weight of the Q guidance against the behaviour score. main.py --beta default 0.01; the
    # paper and bash/mpe/train_omsd.sh tune it per dataset, 0.001 (expert) to 0.7 (random).
    beta: float = 0.01
    # IQL's expectile for V. pretrain_critic's default 0.7 (bash/mpe/pre_critic.sh sweeps 0.5/0.7/0.9).
    expectile: float = 0.7
    gamma: float = 0.99  # IQL_Critic.discount
    target_rate: float = 0.005  # Polyak rate of Q's target (IQL_Critic: update_target(..., 0.005))
    batch_size: int = 512  # main.py --batch_size (actors, diffusion and critic alike)
    # Diffusion behaviour models: AdamW (torch's default weight decay 0.01), cosine decay from 3e-4
    # to 1e-5 (SRPO.py MASRPO_Behavior; main.py --learning_rates) over pre-training's 200 epochs
    # x 10k steps (pretrain_behavior.py n_epochs, steps per epoch; the scheduler's T_max 2M).
    behaviour_lr: float = 3e-4
    behaviour_lr_final: float = 1e-5
    behaviour_steps: int = 2_000_000
    # Critic: Adam at 3e-4, no decay (IQL_Critic; main.py --iql_critic_lr), 500 epochs x 1000 steps
    # (bash/mpe/pre_critic.sh training_epoch, training_steps_per_epoch).
    critic_lr: float = 3e-4
    critic_steps: int = 500_000
    # Actors: Adam at 3e-4 (SRPO_ssd's SRPO_policy_optimizer), cosine decay to 0 (eta_min=0.) over
    # the training's steps (T_max n_policy_epochs x 10k = 100k in bash/mpe/train_omsd.sh). The paper
    # writes AdamW with decay to 1e-5; the code is followed. 100k steps for MPE, 1M for MaMuJoCo.
    actor_lr: float = 3e-4
    actor_lr_final: float = 0.0
    actor_steps: int = 100_000
    # Networks (model.py): policies MLP 256 x 2 + tanh (Dirac_Policy, --policy_layer 2); twin Q and
    # V MLP 256 x 2 (TwinQ, --q_layer 2; ValueFunction); the noise predictor a residual MLP of width
    # 256 with 2 blocks (ScoreNet_IDQL, MLPResNet; --actor_blocks 2), dropout 0.1, 64 Fourier time
    # features into an MLP 128 x 2 (cond_model).
    policy_hidden: int = 256
    policy_layers: int = 2
    critic_hidden: int = 256
    critic_layers: int = 2
    denoiser_hidden: int = 256
    denoiser_blocks: int = 2
    denoiser_time_features: int = 64
    denoiser_dropout: float = 0.1
    # dQ/da divided by its RMS per agent (the code's --regq, on only for maze tasks).
    normalise_q_grad: bool = False
    # The regulariser's weight w(t) (the code's --WT): "VDS" sigma_t^2 (its default), "stable" 1 or
    # "score" alpha_t / sigma_t; `subtract_noise` is its "noise" suffix (eps - z). See learner/omsd.py.
    regulariser_weighting: str = "VDS"
    subtract_noise: bool = False
    device: str = "cpu"  # "auto": cuda when available

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise InputError(f"OMSDConfig.variant: {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if self.regulariser_weighting not in omsd.REGULARISER_WEIGHTS:
            raise InputError(
                f"OMSDConfig.regulariser_weighting: {self.regulariser_weighting!r} is not one of "
                f"{', '.join(omsd.REGULARISER_WEIGHTS)}"
            )
        if not 0.0 < self.expectile < 1.0:
            raise InputError(f"OMSDConfig.expectile: {self.expectile} is not in (0, 1)")
        if not 0.0 <= self.gamma <= 1.0:
            raise InputError(f"OMSDConfig.gamma: {self.gamma} is not in [0, 1]")
        if not 0.0 < self.target_rate <= 1.0:
            raise InputError(f"OMSDConfig.target_rate: {self.target_rate} is not in (0, 1]")
        if self.beta < 0 or not math.isfinite(self.beta):
            raise InputError(f"OMSDConfig.beta: {self.beta} must be a finite number >= 0")
        if not 0.0 <= self.denoiser_dropout < 1.0:
            raise InputError(f"OMSDConfig.denoiser_dropout: {self.denoiser_dropout} is not in [0, 1)")
        for name in ("behaviour_lr", "critic_lr", "actor_lr"):
            if not getattr(self, name) > 0:
                raise InputError(f"OMSDConfig.{name}: {getattr(self, name)} must be > 0")
        for name in ("behaviour_lr_final", "actor_lr_final"):
            if getattr(self, name) < 0:
                raise InputError(f"OMSDConfig.{name}: {getattr(self, name)} must be >= 0")
        for name in ("behaviour_steps", "critic_steps", "actor_steps"):
            if getattr(self, name) < 0:
                raise InputError(f"OMSDConfig.{name}: {getattr(self, name)} must be >= 0")
        for name in ("batch_size", "policy_hidden", "policy_layers", "critic_hidden", "critic_layers"):
            if getattr(self, name) < 1:
                raise InputError(f"OMSDConfig.{name}: {getattr(self, name)} must be >= 1")
        for name in ("denoiser_hidden", "denoiser_blocks"):
            if getattr(self, name) < 1:
                raise InputError(f"OMSDConfig.{name}: {getattr(self, name)} must be >= 1")
        if self.denoiser_time_features < 2 or self.denoiser_time_features % 2:
            raise InputError(
                f"OMSDConfig.denoiser_time_features: {self.denoiser_time_features} must be even and >= 2"
            )

    @property
    def sequential(self) -> bool:
        return self.variant == "sequential"

    @property
    def joint(self) -> bool:
        return self.variant == "joint"


def action_box(
    low: float | list[float], high: float | list[float], action_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The world's box as float32 tensors [A] (a scalar bound applies to every action dimension)."""
    low_t = torch.as_tensor(low, dtype=torch.float32).expand(action_size).clone()
    high_t = torch.as_tensor(high, dtype=torch.float32).expand(action_size).clone()
    if not bool((high_t > low_t).all()):
        raise InputError(
            f"OMSDLearner: action_high {high_t.tolist()} must exceed action_low {low_t.tolist()}"
        )
    return low_t, high_t


def box_from_unit(unit: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the box [low, high]: the learner's actions and a saved policy's, the same bits."""
    return low + (unit + 1.0) * 0.5 * (high - low)


def _cosine(optimizer: torch.optim.Optimizer, steps: int, final_lr: float):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1), eta_min=final_lr)


class Policies(nn.Module):
    """One deterministic tanh MLP per agent on its own observation, in the normalised box."""

    def __init__(self, n_agents: int, obs_size: int, action_size: int, hidden: int, layers: int):
        super().__init__()
        self.nets = nn.ModuleList(mlp(obs_size, hidden, layers, action_size) for _ in range(n_agents))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [B, n, O] -> actions [B, n, A] in [-1, 1]; agent i reads only obs[:, i]."""
        return torch.stack([torch.tanh(net(obs[:, i])) for i, net in enumerate(self.nets)], dim=1)


class OMSDLearner:
    """OMSD (see the module doc)."""

    ALGORITHM = "omsd"  # its checkpoints' tag

    def __init__(
        self,
        n_agents: int,
        obs_size: int,
        state_size: int,
        action_size: int,
        cfg: OMSDConfig | None = None,
        seed: int = 0,
        action_low: float | list[float] = -1.0,
        action_high: float | list[float] = 1.0,
    ):
        self.cfg = cfg = cfg or OMSDConfig()
        self.sizes = {
            "n_agents": n_agents,
            "obs_size": obs_size,
            "state_size": state_size,
            "action_size": action_size,
        }
        for name, size in self.sizes.items():
            if size < 1:
                raise InputError(f"OMSDLearner: {name} must be >= 1, got {size}")
        self.device = resolve_device(cfg.device)
        low, high = action_box(action_low, action_high, action_size)
        self.action_low, self.action_high = low.to(self.device), high.to(self.device)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            denoiser = (
                cfg.denoiser_hidden,
                cfg.denoiser_blocks,
                cfg.denoiser_time_features,
                cfg.denoiser_dropout,
            )
            self.behaviour: BehaviourModels | JointBehaviourModel = (
                JointBehaviourModel(n_agents, obs_size, action_size, *denoiser)
                if cfg.joint
                else BehaviourModels(n_agents, obs_size, action_size, cfg.sequential, *denoiser)
            ).to(self.device)
            self.critic = IQLCritic(
                state_size, n_agents, action_size, cfg.critic_hidden, cfg.critic_layers
            ).to(self.device)
            self.policies = Policies(
                n_agents, obs_size, action_size, cfg.policy_hidden, cfg.policy_layers
            ).to(self.device)
        self.generator = torch.Generator().manual_seed(seed)  # every t and z the updates draw

        self.behaviour_optim = torch.optim.AdamW(self.behaviour.parameters(), lr=cfg.behaviour_lr)
        self.behaviour_sched = _cosine(self.behaviour_optim, cfg.behaviour_steps, cfg.behaviour_lr_final)
        critic_params = list(self.critic.q.parameters()) + list(self.critic.v.parameters())
        self.critic_optim = torch.optim.Adam(critic_params, lr=cfg.critic_lr)
        self.actor_optim = torch.optim.Adam(self.policies.parameters(), lr=cfg.actor_lr)
        self.actor_sched = _cosine(self.actor_optim, cfg.actor_steps, cfg.actor_lr_final)
        self.steps = {"behaviour": 0, "critic": 0, "actors": 0}

    # ---- the action box
    def to_unit(self, actions: torch.Tensor) -> torch.Tensor:
        """World-box actions -> [-1, 1]."""
        return 2.0 * (actions - self.action_low) / (self.action_high - self.action_low) - 1.0

    def from_unit(self, actions: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> the world's box."""
        return box_from_unit(actions, self.action_low, self.action_high)

    def _prepare(self, batch: TransitionBatch) -> TransitionBatch:
        """The batch on the learner's device, actions normalised; its sizes checked against ours."""
        got = {
            "n_agents": batch.n_agents,
            "obs_size": batch.obs_size,
            "state_size": batch.state_size,
            "action_size": batch.action_size,
        }
        wrong = {k: v for k, v in got.items() if v != self.sizes[k]}
        if wrong:
            raise InputError(f"TransitionBatch: sizes {wrong} do not match the learner's {self.sizes}")
        batch = batch.to(self.device)
        return TransitionBatch(
            obs=batch.obs,
            state=batch.state,
            actions=self.to_unit(batch.actions),
            reward=batch.reward,
            next_obs=batch.next_obs,
            next_state=batch.next_state,
            terminal=batch.terminal,
        )

    # ---- the phases
    @property
    def phase(self) -> str:
        """The phase whose configured steps are not done yet: behaviour, critic, actors, or done."""
        for name, target in (
            ("behaviour", self.cfg.behaviour_steps),
            ("critic", self.cfg.critic_steps),
            ("actors", self.cfg.actor_steps),
        ):
            if self.steps[name] < target:
                return name
        return "done"

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        """One step of the phase that is due (`phase`); {} when all are done."""
        step = {
            "behaviour": self.update_behaviour,
            "critic": self.update_critic,
            "actors": self.update_actors,
        }
        phase = self.phase
        return step[phase](batch) if phase in step else {}

    def update_behaviour(self, batch: TransitionBatch) -> dict[str, float]:
        """One denoising step of every agent's behaviour model (or the joint model, one t per
        sample) on the data's actions."""
        data = self._prepare(batch)
        b, n, a = data.actions.shape
        self.behaviour.train()
        if self.cfg.joint:
            t, z = draw_training_noise(b, n * a, self.generator, self.device)
            loss = self.behaviour.loss(data.obs, data.actions, t, z)
        else:
            t, z = draw_training_noise(b * n, a, self.generator, self.device)
            loss = self.behaviour.loss(data.obs, data.actions, t.view(b, n), z.view(b, n, a))
        self.behaviour_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.behaviour_optim.step()
        self.behaviour_sched.step()
        self.steps["behaviour"] += 1
        return {"loss_behaviour": loss.item() / n, "lr_behaviour": self.behaviour_sched.get_last_lr()[0]}

    def update_critic(self, batch: TransitionBatch) -> dict[str, float]:
        """One IQL step (V by expectile regression, twin Q on r + gamma (1 - terminal) V(s')), then
        the Polyak step of Q's target."""
        data = self._prepare(batch)
        out = self.critic.losses(data, self.cfg.expectile, self.cfg.gamma)
        self.critic_optim.zero_grad(set_to_none=True)
        (out["loss_v"] + out["loss_q"]).backward()
        self.critic_optim.step()
        self.critic.update_target(self.cfg.target_rate)
        self.steps["critic"] += 1
        return {name: value.item() for name, value in out.items()}

    def _guidance_q(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """What the actors climb: the mean of the target's two heads (SRPO_ssd: (qs[0] + qs[1]) / 2)."""
        q1, q2 = self.critic.target_both(state, actions)
        return 0.5 * (q1 + q2)

    def _denoise(
        self, agent: int, noised: torch.Tensor, t: torch.Tensor, condition: torch.Tensor
    ) -> torch.Tensor:
        return self.behaviour.models[agent](noised, t, condition)

    def update_actors(self, batch: TransitionBatch) -> dict[str, float]:
        """One step of every agent's policy on its score-regularised loss (`learner.omsd`)."""
        data = self._prepare(batch)
        self.behaviour.eval()  # no dropout in the score the actors follow (the authors' .eval())
        actions = self.policies(data.obs)  # [B, n, A], each agent's from its own network
        if self.cfg.beta == 0:  # the Q term weighs nothing: no critic pass for it
            q_grad = torch.zeros_like(actions.detach())
        else:
            q_grad = omsd.q_action_gradient(self._guidance_q, data.state, actions, self.cfg.normalise_q_grad)
        b, n, a = actions.shape
        if self.cfg.joint:
            t, z = omsd.draw_joint_actor_noise(b, n, a, self.generator, self.device)
            losses = omsd.joint_actor_losses(
                actions,
                data.obs,
                q_grad,
                self.behaviour.model,
                self.cfg.beta,
                t,
                z,
                self.cfg.regulariser_weighting,
                self.cfg.subtract_noise,
            )
        else:
            t, z = omsd.draw_actor_noise(b, n, a, self.generator, self.device)
            losses = omsd.actor_losses(
                actions,
                data.obs,
                q_grad,
                self._denoise,
                self.cfg.beta,
                t,
                z,
                self.cfg.sequential,
                self.cfg.regulariser_weighting,
                self.cfg.subtract_noise,
            )
        self.actor_optim.zero_grad(set_to_none=True)
        sum(losses).backward()
        self.actor_optim.step()
        self.actor_sched.step()
        self.steps["actors"] += 1
        with torch.no_grad():
            q_policy = self._guidance_q(data.state, actions).mean().item()
        metrics = {f"loss_actor_{i}": loss.item() for i, loss in enumerate(losses)}
        metrics.update(
            q_policy=q_policy,
            action_gap=(actions.detach() - data.actions).abs().mean().item(),  # the code's error_a, absolute
            lr_actors=self.actor_sched.get_last_lr()[0],
        )
        return metrics

    # ---- acting and sampling
    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Decentralised greedy actions in the world's box: obs [B, n, O] -> [B, n, A] (or [n, O] ->
        [n, A]); agent i's action depends only on obs[..., i, :]."""
        single = obs.dim() == 2
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if single:
            obs = obs[None]
        actions = self.from_unit(self.policies(obs))
        return actions[0] if single else actions

    @torch.no_grad()
    def sample_behaviour(
        self, obs: torch.Tensor, steps: int = 50, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Joint actions [B, n, A] (world box) drawn from the behaviour models by the reverse chain:
        the chain-rule joint (sequential), the product of marginals (independent) or the joint
        model's own draw (joint)."""
        self.behaviour.eval()
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        unit = self.behaviour.sample_joint(obs, steps, generator or self.generator)
        return self.from_unit(unit)

    # ---- checkpoints (tensors and plain values only: loads with torch.load(weights_only=True))
    def network_shape(self) -> dict:
        shape = dict(self.sizes)
        shape.update(
            variant=self.cfg.variant,
            policy=[self.cfg.policy_hidden, self.cfg.policy_layers],
            critic=[self.cfg.critic_hidden, self.cfg.critic_layers],
            denoiser=[self.cfg.denoiser_hidden, self.cfg.denoiser_blocks, self.cfg.denoiser_time_features],
        )
        return shape

    def state_dict(self) -> dict:
        return {
            "algorithm": self.ALGORITHM,
            "config": asdict(self.cfg),
            "network_shape": self.network_shape(),
            "behaviour": self.behaviour.state_dict(),
            "critic": self.critic.state_dict(),
            "policies": self.policies.state_dict(),
            "behaviour_optim": self.behaviour_optim.state_dict(),
            "behaviour_sched": self.behaviour_sched.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "actor_sched": self.actor_sched.state_dict(),
            "steps": dict(self.steps),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`; a checkpoint of another algorithm or shape is a one-line error."""
        if state.get("algorithm") != self.ALGORITHM:
            raise CheckpointError(
                "state", f"algorithm {state.get('algorithm')!r}, expected {self.ALGORITHM!r}"
            )
        saved_variant = (state.get("network_shape") or {}).get("variant")
        if saved_variant != self.cfg.variant:
            raise CheckpointError("state", f"OMSD variant {saved_variant!r}, expected {self.cfg.variant!r}")
        if state.get("network_shape") != self.network_shape():
            raise CheckpointError(
                "state", f"network shape {state.get('network_shape')} does not match {self.network_shape()}"
            )
        self.behaviour.load_state_dict(state["behaviour"])
        self.critic.load_state_dict(state["critic"])
        self.policies.load_state_dict(state["policies"])
        self.behaviour_optim.load_state_dict(state["behaviour_optim"])
        self.behaviour_sched.load_state_dict(state["behaviour_sched"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.actor_sched.load_state_dict(state["actor_sched"])
        self.steps = {name: int(state["steps"][name]) for name in self.steps}
        self.generator.set_state(state["generator"])
