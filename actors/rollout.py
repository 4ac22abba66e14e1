"""Playing a batch of battles with the agent network: the acting loop shared by actors, the evaluator
and the synchronous trainer.

Each battle keeps its agents' GRU state and the policy version it started its episode with: new
weights (versions only go forward) take effect in a battle at its next episode boundary, so every
episode is produced by exactly one version, which it records.
"""

from __future__ import annotations

import copy

import numpy as np

from actors.exploration import select_actions
from actors.numpy_agent import NumpyAgent
from actors.tiles_agent import TilesAgent
from actors.torch_agent import TorchAgent
from common.envs.protocol import BatchEnv
from common.episode import Episode, EpisodeBuilder, EpisodeMeta
from common.networks import RNNAgent
from common.snapshot import capture, restore

INFERENCE = {"numpy": NumpyAgent, "torch": TorchAgent, "tiles": TilesAgent}  # the one-step forward for acting


class RolloutWorker:
    """Steps `env` (B battles) with greedy-or-exploring actions from the agent network on the CPU."""

    def __init__(
        self,
        env: BatchEnv,
        agent: RNNAgent,
        exploration: str = "decentralized_se",
        seed: int = 0,
        actor_id: int = 0,
        version: int = 0,
        inference: str = "torch",
    ):
        if inference not in INFERENCE:
            raise ValueError(f"inference: expected one of {', '.join(INFERENCE)}, got {inference!r}")
        self._acting_agent = INFERENCE[inference]
        self.env = env
        self.exploration = exploration
        self.actor_id = actor_id
        self.rng = np.random.default_rng(seed)
        self.n_agents = env.n_agents
        self.n_actions = env.n_actions
        agent = agent.to("cpu").eval()
        self._agents: dict[int, RNNAgent] = {version: agent}  # weights per version (torch)
        self._acting = {version: self._acting_agent(agent)}  # the same, for acting
        self.newest_version = version
        B, n = env.num_envs, self.n_agents
        self.battle_version = np.full(B, version, dtype=np.int64)
        self.hidden = np.zeros((B * n, agent.hidden_size), dtype=np.float32)
        self.prev_actions = np.zeros((B, n, self.n_actions), dtype=np.float32)
        # Agent inputs [obs | previous action one-hot | agent id], refilled in place every step.
        obs_size = agent.input_size - self.n_actions - n
        self._inputs = np.zeros((B, n, agent.input_size), dtype=np.float32)
        self._inputs[:, :, obs_size + self.n_actions :] = np.eye(n, dtype=np.float32)
        self._obs_size = obs_size
        self.builder = EpisodeBuilder(B, self.n_agents, env.episode_limit)
        self.env_steps = 0
        self.episodes = 0
        self._obs = None

    # ------------------------------------------------------------------ state (resumable runs)
    SNAPSHOT_SKIP = ("_agents", "_acting")

    def state_dict(self) -> dict:
        """Everything stepping on needs, as tensors and plain values: the battles mid-episode, the
        partial episodes, the GRU states, the exploration generator, the weights of every version
        still playing."""
        return {
            "worker": capture(self),
            "versions": {v: capture(agent) for v, agent in self._agents.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state_dict` was taken, in a worker built the same way."""
        template = self._agents[self.newest_version]
        agents, acting = {}, {}
        for version, weights in state["versions"].items():
            agent = restore(copy.deepcopy(template), weights).eval()
            agents[int(version)], acting[int(version)] = agent, self._acting_agent(agent)
        restore(self, state["worker"])
        self._agents, self._acting = agents, acting

    # ------------------------------------------------------------------ weights
    def set_weights(self, state_dict: dict, version: int) -> bool:
        """Adopt weights `version` for episodes that start from now on; stale versions are ignored."""
        if version <= self.newest_version:
            return False
        agent = copy.deepcopy(self._agents[self.newest_version])
        agent.load_state_dict(state_dict)
        self._agents[version] = agent.eval()
        self._acting[version] = self._acting_agent(agent)
        self.newest_version = version
        self._forget_unused_versions()
        return True

    @property
    def newest_agent(self) -> RNNAgent:
        """The agent network (torch, CPU) of the newest weights."""
        return self._agents[self.newest_version]

    def _forget_unused_versions(self) -> None:
        in_use = set(self.battle_version.tolist()) | {self.newest_version}
        for v in list(self._agents):
            if v not in in_use:
                del self._agents[v]
                del self._acting[v]

    # ------------------------------------------------------------------ acting
    def reset(self) -> None:
        self._obs = self.env.reset()
        self.builder.start(self._obs.state, self._obs.obs, self._obs.avail)
        self.battle_version[:] = self.newest_version
        self._forget_unused_versions()
        self.hidden[:] = 0.0
        self.prev_actions[:] = 0.0

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q [B, n, A] for the current observations, advancing each battle's GRU state."""
        B, n = obs.shape[:2]
        O, A = self._obs_size, self.n_actions
        self._inputs[:, :, :O] = obs
        self._inputs[:, :, O : O + A] = self.prev_actions
        inputs = self._inputs.reshape(B * n, -1)
        versions = np.unique(self.battle_version)
        if len(versions) == 1:
            q, self.hidden = self._acting[int(versions[0])].step(inputs, self.hidden)
        else:
            q = np.empty((B * n, A), dtype=np.float32)
            for v in versions:
                rows = np.repeat(self.battle_version == v, n)
                q[rows], self.hidden[rows] = self._acting[int(v)].step(inputs[rows], self.hidden[rows])
        return q.reshape(B, n, A)

    def step(self, epsilon: float) -> list[Episode]:
        """One step of every battle; returns the episodes that ended, tagged with version and actor."""
        return self._step(epsilon)[0]

    def _step(self, epsilon: float) -> tuple[list[Episode], np.ndarray]:
        """`step`, also returning the battle each ended episode came from (`done_index`, in order)."""
        if self._obs is None:
            self.reset()
        obs = self._obs
        q = self.q_values(obs.obs)
        actions, _ = select_actions(q, obs.avail, epsilon, self.exploration, self.rng)
        result = self.env.step(actions)
        self.env_steps += self.env.num_envs
        finished = self.builder.record(
            actions,
            result,
            meta_for=lambda b: EpisodeMeta(
                policy_version=int(self.battle_version[b]), actor_id=self.actor_id, source="online"
            ),
        )
        self.prev_actions[:] = 0.0
        np.put_along_axis(self.prev_actions, actions[..., None], 1.0, axis=-1)
        done = result.done_index
        if done.size:
            self.episodes += int(done.size)
            hidden = self.hidden.reshape(self.env.num_envs, self.n_agents, -1)
            hidden[done] = 0.0
            self.prev_actions[done] = 0.0
            self.battle_version[done] = self.newest_version
            self._forget_unused_versions()
        self._obs = result.next
        return finished, done

    def run_episodes(self, count: int, epsilon: float = 0.0) -> list[Episode]:
        """Play `count` test episodes in rounds, as PyMARL2's test runs do; return them.

        Each round starts from `reset()` and takes exactly one episode from each battle: its first.
        Keeping the first `count` episodes to end instead would over-count short episodes (a battle
        with short ones ends several while another plays one long one), biasing the win rate. In
        a final partial round only battles 0..k-1 count, chosen by index, never by finish order.
        Battles that are done for the round keep stepping (the env resets them automatically), but
        what they play is discarded. Episodes come back round by round in battle order.
        """
        out: list[Episode] = []
        while len(out) < count:
            counted = min(self.env.num_envs, count - len(out))
            self.reset()
            taken: list[Episode | None] = [None] * counted
            waiting = counted
            while waiting:
                finished, done = self._step(epsilon)
                for episode, b in zip(finished, done.tolist(), strict=True):
                    if b < counted and taken[b] is None:
                        taken[b] = episode
                        waiting -= 1
            out += taken
        return out
