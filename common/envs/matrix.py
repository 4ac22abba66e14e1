"""One-step cooperative matrix games behind the battle-world protocol (SMAC's API and `BatchEnv`).

Two agents each pick one action; both receive the payoff of the joint action and the episode ends.
The agents observe a constant (a one-step game has no state to tell apart), so a policy is one
distribution per agent, and a learner's joint policy is the product of the two. These worlds are
small enough to check offline multi-agent methods on the coordination failures that matter:

- "xor": payoff 1 when the agents pick different actions, 0 when they pick the same. Two optimal
  joint actions, (A, B) and (B, A); an agent that plays each action half of the time, as each does
  in a balanced dataset, leaves its team miscoordinated half of the time.
- "mne": three actions, three pure Nash equilibria on the diagonal with different payoffs (1.0,
  0.5, 0.8) and 0 for any miscoordination. Averaging between equilibria costs; so does settling on
  the equilibrium the data visits most when a better one is in the data too.

The paper that motivates these games (InSPO, arXiv 2412.07639) could not be read here; these are
the standard XOR payoff and a multi-equilibrium matrix of our own (NOT FROM THE PAPER), see
docs and `GAMES`. `dataset_joint_distribution` gives the behaviour distributions over joint actions
that the balanced and imbalanced datasets are drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.envs.protocol import BatchObservation, BatchStep


@dataclass(frozen=True)
class MatrixGame:
    """A two-agent one-step game: payoff[a1, a2] is the team's reward."""

    name: str
    payoff: tuple[tuple[float, ...], ...]

    @property
    def n_actions(self) -> int:
        return len(self.payoff)

    def payoff_array(self) -> np.ndarray:
        return np.asarray(self.payoff, dtype=np.float32)

    @property
    def best_payoff(self) -> float:
        return float(self.payoff_array().max())

    def optimal_joint_actions(self) -> list[tuple[int, int]]:
        table = self.payoff_array()
        return [(int(i), int(j)) for i, j in zip(*np.nonzero(table == table.max()), strict=True)]


GAMES: dict[str, MatrixGame] = {
    "xor": MatrixGame("xor", ((0.0, 1.0), (1.0, 0.0))),
    "mne": MatrixGame("mne", ((1.0, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 0.8))),
}
N_AGENTS = 2
OBS_SIZE = 1  # a constant 1: nothing to observe in a one-step game
STATE_SIZE = 1
EPISODE_LIMIT = 1


def get_game(name: str) -> MatrixGame:
    try:
        return GAMES[name]
    except KeyError:
        raise ValueError(f"unknown matrix game {name!r} (known: {', '.join(GAMES)})") from None


# Behaviour distributions over joint actions, per (game, dataset kind), as [A, A] tables.
# xor balanced: every joint action equally often, so each agent's own actions are 50/50.
# xor imbalanced: the two optimal joint actions 3:1 and the miscoordinated ones rarer.
# mne balanced: every joint action equally often. mne imbalanced: the team mostly plays the middle
# (worst) equilibrium's actions; the best equilibrium is in the data, but rarely.
DATASET_KINDS = ("balanced", "imbalanced")


def dataset_joint_distribution(game: str, kind: str) -> np.ndarray:
    """P(a1, a2) of the behaviour policy behind the `kind` dataset of `game` ([A, A], sums to 1)."""
    n = get_game(game).n_actions
    if kind == "balanced":
        return np.full((n, n), 1.0 / (n * n))
    if kind != "imbalanced":
        raise ValueError(f"unknown dataset kind {kind!r} (known: {', '.join(DATASET_KINDS)})")
    if game == "xor":
        table = np.array([[0.1, 0.6], [0.2, 0.1]])
    else:  # each agent independently: 0.2 / 0.6 / 0.2
        marginal = np.array([0.2, 0.6, 0.2])
        table = np.outer(marginal, marginal)
    return table / table.sum()


class MatrixBatchEnv:
    """`num_envs` independent plays of one matrix game (the `BatchEnv` protocol). Every step ends
    every episode, so `next` is always a fresh first observation."""

    n_agents = N_AGENTS
    n_enemies = 0
    episode_limit = EPISODE_LIMIT

    def __init__(self, game: str, num_envs: int = 1):
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        self.game = get_game(game)
        self.num_envs = num_envs
        self.n_actions = self.game.n_actions
        self._payoff = self.game.payoff_array()
        self.battles_game = 0
        self.battles_won = 0

    def get_env_info(self) -> dict:
        return {
            "state_shape": STATE_SIZE,
            "obs_shape": OBS_SIZE,
            "n_actions": self.n_actions,
            "n_agents": N_AGENTS,
            "episode_limit": EPISODE_LIMIT,
        }

    def _observation(self, rows: int) -> BatchObservation:
        return BatchObservation(
            obs=np.ones((rows, N_AGENTS, OBS_SIZE), dtype=np.float32),
            state=np.ones((rows, STATE_SIZE), dtype=np.float32),
            avail=np.ones((rows, N_AGENTS, self.n_actions), dtype=bool),
        )

    def reset(self) -> BatchObservation:
        return self._observation(self.num_envs)

    def step(self, actions: np.ndarray) -> BatchStep:
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs, N_AGENTS)
        reward = self._payoff[actions[:, 0], actions[:, 1]].astype(np.float32)
        # "Won": the team earned the game's best payoff (a win rate is then the optimal-play rate).
        won = reward >= self.game.best_payoff
        B = self.num_envs
        self.battles_game += B
        self.battles_won += int(won.sum())
        return BatchStep(
            reward=reward,
            terminated=np.ones(B, dtype=bool),
            battle_won=won,
            episode_limit=np.zeros(B, dtype=bool),
            dead_allies=np.zeros(B, dtype=np.int64),
            dead_enemies=np.zeros(B, dtype=np.int64),
            next=self._observation(B),
            done_index=np.arange(B),
            final=self._observation(B),
        )

    def get_stats(self) -> dict:
        return {
            "battles_won": self.battles_won,
            "battles_game": self.battles_game,
            "battles_draw": 0,
            "win_rate": self.battles_won / self.battles_game if self.battles_game else 0.0,
            "timeouts": 0,
        }

    def close(self) -> None:
        pass


class MatrixGameEnv:
    """One play at a time, with SMAC's `StarCraft2Env` methods."""

    n_enemies = 0

    def __init__(self, game: str, seed: int | None = None):
        self._batch = MatrixBatchEnv(game, 1)
        self.n_agents = N_AGENTS
        self.episode_limit = EPISODE_LIMIT
        self._seed = seed

    def reset(self) -> tuple[list[np.ndarray], np.ndarray]:
        return self.get_obs(), self.get_state()

    def step(self, actions) -> tuple[float, bool, dict]:
        result = self._batch.step(np.asarray(actions).reshape(1, N_AGENTS))
        return float(result.reward[0]), True, {"battle_won": bool(result.battle_won[0])}

    def get_obs(self) -> list[np.ndarray]:
        return [self.get_obs_agent(i) for i in range(N_AGENTS)]

    def get_obs_agent(self, agent_id: int) -> np.ndarray:
        return np.ones(OBS_SIZE, dtype=np.float32)

    def get_obs_size(self) -> int:
        return OBS_SIZE

    def get_state(self) -> np.ndarray:
        return np.ones(STATE_SIZE, dtype=np.float32)

    def get_state_size(self) -> int:
        return STATE_SIZE

    def get_avail_actions(self) -> list[list[int]]:
        return [self.get_avail_agent_actions(i) for i in range(N_AGENTS)]

    def get_avail_agent_actions(self, agent_id: int) -> list[int]:
        return [1] * self._batch.n_actions

    def get_total_actions(self) -> int:
        return self._batch.n_actions

    def get_env_info(self) -> dict:
        return self._batch.get_env_info()

    def get_stats(self) -> dict:
        return self._batch.get_stats()

    def seed(self) -> int | None:
        return self._seed

    def close(self) -> None:
        pass


def dataset_episodes(game: str, kind: str, count: int, seed: int = 0) -> list:
    """`count` one-step episodes with joint actions drawn from the `kind` behaviour distribution, in
    the episode schema of `common.episode` (row 0: the play; row 1: the final observation)."""
    from common.episode import Episode, EpisodeMeta

    table = dataset_joint_distribution(game, kind)
    n = table.shape[0]
    payoff = get_game(game).payoff_array()
    best = get_game(game).best_payoff
    rng = np.random.default_rng(seed)
    flat = rng.choice(n * n, size=count, p=table.reshape(-1))
    episodes = []
    for joint in flat.tolist():
        a1, a2 = divmod(int(joint), n)
        reward = float(payoff[a1, a2])
        actions = np.zeros((2, N_AGENTS, 1), dtype=np.int64)
        actions[0, :, 0] = (a1, a2)
        episodes.append(
            Episode(
                state=np.ones((2, STATE_SIZE), dtype=np.float32),
                obs=np.ones((2, N_AGENTS, OBS_SIZE), dtype=np.float32),
                actions=actions,
                avail_actions=np.ones((2, N_AGENTS, n), dtype=np.int32),
                reward=np.array([[reward], [0.0]], dtype=np.float32),
                terminated=np.array([[1], [0]], dtype=np.uint8),
                filled=np.ones((2, 1), dtype=np.uint8),
                meta=EpisodeMeta(episode_return=reward, battle_won=reward >= best, source="offline"),
            )
        )
    return episodes
