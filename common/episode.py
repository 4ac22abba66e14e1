"""One episode schema for actors, replay, learner and dataset files.

Field names and layout follow PyMARL's EpisodeBatch as saved in CFCQL's SMAC datasets: every field
has a leading time axis of length L + 1 for an episode of L agent steps. Index t holds what was seen
before acting at step t (state, obs, avail_actions), what was done (actions) and what followed
(reward, terminated). Index L holds the last observation; its action, reward and terminated are 0.
`filled` is 1 on indices 0..L (PyMARL marks the final observation filled too) and 0 on padding.
`terminated` is 1 only at a true end (win, loss, both dead), not at a time-limit end, so the learner
bootstraps through time-limit ends as PyMARL does.

An `Episode` holds one episode as numpy arrays with exactly L + 1 rows (no padding); a
`TrainingBatch` holds B episodes padded to the longest one, as torch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Field -> numpy dtype, in the fields' order. Dataset files use these names.
FIELD_DTYPES: dict[str, np.dtype] = {
    "state": np.dtype(np.float32),
    "obs": np.dtype(np.float32),
    "actions": np.dtype(np.int64),
    "avail_actions": np.dtype(np.int32),
    "reward": np.dtype(np.float32),
    "terminated": np.dtype(np.uint8),
    "filled": np.dtype(np.uint8),
}
STEP_FIELDS = tuple(FIELD_DTYPES)
SOURCES = ("offline", "online")


@dataclass
class EpisodeMeta:
    """What we know about an episode besides its steps."""

    episode_return: float = 0.0
    battle_won: bool = False
    policy_version: int = -1  # -1: not produced by a learner's policy (dataset, scripted)
    actor_id: int = -1
    source: str = "online"  # "offline" (from a dataset) | "online" (from an actor)


@dataclass
class Episode:
    """One episode of L steps: each field is [L + 1, ...] in PyMARL layout (see module doc)."""

    state: np.ndarray
    obs: np.ndarray
    actions: np.ndarray
    avail_actions: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    filled: np.ndarray
    meta: EpisodeMeta = field(default_factory=EpisodeMeta)

    @property
    def length(self) -> int:
        """Number of agent steps L (one less than the rows held)."""
        return int(self.state.shape[0]) - 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in STEP_FIELDS}


class EpisodeBuilder:
    """Accumulates B concurrent episodes step by step (one per battle) and emits each when it ends.

    Used by actors and dataset collection with a `BatchEnv`: call `start` with the first observation,
    `record` after every env step (with the actions taken and the step result), and collect the
    finished `Episode`s it returns. Steps go into preallocated [B, limit + 1, ...] buffers with one
    vectorised write per field, so the per-step cost does not grow with Python work per battle.
    """

    def __init__(self, num_envs: int, n_agents: int, episode_limit: int):
        self.num_envs = num_envs
        self.n_agents = n_agents
        self.episode_limit = episode_limit
        self._rows = np.arange(num_envs)
        self._t = np.zeros(num_envs, dtype=np.int64)  # the row each battle's next step goes to
        self._returns = np.zeros(num_envs, dtype=np.float64)

    def start(self, state: np.ndarray, obs: np.ndarray, avail: np.ndarray) -> None:
        B, T = self.num_envs, self.episode_limit + 1
        self._state = np.zeros((B, T, *state.shape[1:]), dtype=np.float32)
        self._obs = np.zeros((B, T, *obs.shape[1:]), dtype=np.float32)
        self._avail = np.zeros((B, T, *avail.shape[1:]), dtype=bool)
        self._actions = np.zeros((B, T, self.n_agents), dtype=np.int64)
        self._reward = np.zeros((B, T), dtype=np.float32)
        self._terminated = np.zeros((B, T), dtype=np.uint8)
        self._t[:] = 0
        self._returns[:] = 0.0
        self._state[:, 0], self._obs[:, 0], self._avail[:, 0] = state, obs, avail

    def record(self, actions: np.ndarray, step, meta_for=None) -> list[Episode]:
        """Add one step of every battle; return the episodes that ended with it.

        `step` is a `BatchStep`; `meta_for(b)` may supply an `EpisodeMeta` template for battle b.
        """
        rows, t = self._rows, self._t
        self._actions[rows, t] = actions
        self._reward[rows, t] = step.reward
        self._terminated[rows, t] = step.terminated & ~step.episode_limit  # time limits bootstrap
        self._returns += step.reward
        nxt = t + 1
        going = np.ones(self.num_envs, dtype=bool)
        going[step.done_index] = False
        keep, at = rows[going], nxt[going]
        self._state[keep, at] = step.next.state[going]
        self._obs[keep, at] = step.next.obs[going]
        self._avail[keep, at] = step.next.avail[going]
        finished: list[Episode] = []
        for k, b in enumerate(step.done_index):
            b, L = int(b), int(nxt[b])
            self._state[b, L], self._obs[b, L], self._avail[b, L] = (
                step.final.state[k],
                step.final.obs[k],
                step.final.avail[k],
            )
            episode = self._assemble(b, L)
            meta = meta_for(b) if meta_for else EpisodeMeta()
            meta.episode_return = float(self._returns[b])
            meta.battle_won = bool(step.battle_won[b])
            episode.meta = meta
            finished.append(episode)
            # The battle has already reset: its new episode starts from row 0.
            self._state[b, 0], self._obs[b, 0], self._avail[b, 0] = (
                step.next.state[b],
                step.next.obs[b],
                step.next.avail[b],
            )
            self._returns[b] = 0.0
            nxt[b] = 0
        self._t = nxt
        return finished

    def _assemble(self, b: int, L: int) -> Episode:
        """Battle b's episode of L steps as an Episode (copies, so the buffers can be reused)."""
        actions = np.zeros((L + 1, self.n_agents, 1), dtype=np.int64)
        actions[:L, :, 0] = self._actions[b, :L]
        reward = np.zeros((L + 1, 1), dtype=np.float32)
        reward[:L, 0] = self._reward[b, :L]
        terminated = np.zeros((L + 1, 1), dtype=np.uint8)
        terminated[:L, 0] = self._terminated[b, :L]
        return Episode(
            state=self._state[b, : L + 1].copy(),
            obs=self._obs[b, : L + 1].copy(),
            actions=actions,
            avail_actions=self._avail[b, : L + 1].astype(np.int32),
            reward=reward,
            terminated=terminated,
            filled=np.ones((L + 1, 1), dtype=np.uint8),
        )


@dataclass
class TrainingBatch:
    """B episodes padded to the longest (T + 1 rows), as torch tensors, for the learner.

    state [B, T+1, S] float32; obs [B, T+1, n, O] float32; actions [B, T+1, n, 1] int64;
    avail_actions [B, T+1, n, A] bool; reward, terminated, filled [B, T+1, 1] float32;
    offline [B] bool (the episode came from the offline table); policy_version [B] int64.
    Padding rows are all zero (filled = 0). `items`, when the replay gives them: each episode's
    (table, key) there, so that an episode the learner cannot train on can be taken out (not a
    tensor: moved and pinned as it is).
    """

    state: object
    obs: object
    actions: object
    avail_actions: object
    reward: object
    terminated: object
    filled: object
    offline: object
    policy_version: object
    items: tuple | None = None

    @property
    def batch_size(self) -> int:
        return int(self.state.shape[0])

    @property
    def max_seq_length(self) -> int:
        return int(self.state.shape[1])

    def to(self, device, non_blocking: bool = False) -> TrainingBatch:
        return TrainingBatch(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in _tensors(self)},
            items=self.items,
        )

    def pin_memory(self) -> TrainingBatch:
        return TrainingBatch(
            **{f.name: getattr(self, f.name).pin_memory() for f in _tensors(self)}, items=self.items
        )

    def episode(self, i: int) -> Episode:
        """Episode i, unpadded (its filled rows), back as numpy arrays in the episode schema's
        dtypes, with its return the sum of its rewards: what a replay held, to check it again."""
        rows = max(int(self.filled[i].sum()), 1)
        arrays = {
            name: getattr(self, name)[i, :rows].cpu().numpy().astype(FIELD_DTYPES[name])
            for name in STEP_FIELDS
        }
        meta = EpisodeMeta(
            episode_return=float(arrays["reward"].sum(dtype=np.float64)),
            policy_version=int(self.policy_version[i]),
            source="offline" if bool(self.offline[i]) else "online",
        )
        return Episode(**arrays, meta=meta)


def _tensors(batch: TrainingBatch):
    return [f for f in fields(batch) if f.name != "items"]


def pad_episodes(episodes: list[Episode]) -> dict[str, np.ndarray]:
    """Stack episodes into [B, T+1, ...] numpy arrays padded with zeros to the longest episode."""
    if not episodes:
        raise ValueError("pad_episodes needs at least one episode")
    rows = max(e.length for e in episodes) + 1
    out: dict[str, np.ndarray] = {}
    for name in STEP_FIELDS:
        first = getattr(episodes[0], name)
        buf = np.zeros((len(episodes), rows) + first.shape[1:], dtype=FIELD_DTYPES[name])
        for i, e in enumerate(episodes):
            arr = getattr(e, name)
            buf[i, : arr.shape[0]] = arr
        out[name] = buf
    return out


def to_training_batch(episodes: list[Episode], items: tuple | None = None) -> TrainingBatch:
    """Pad episodes and convert them to the learner's tensors (CPU); `items` names each episode in
    its replay (see `TrainingBatch`)."""
    import torch

    arrays = pad_episodes(episodes)
    return TrainingBatch(
        state=torch.from_numpy(arrays["state"]),
        obs=torch.from_numpy(arrays["obs"]),
        actions=torch.from_numpy(arrays["actions"]),
        avail_actions=torch.from_numpy(arrays["avail_actions"].astype(bool)),
        reward=torch.from_numpy(arrays["reward"]),
        terminated=torch.from_numpy(arrays["terminated"].astype(np.float32)),
        filled=torch.from_numpy(arrays["filled"].astype(np.float32)),
        offline=torch.tensor([e.meta.source == "offline" for e in episodes], dtype=torch.bool),
        policy_version=torch.tensor([e.meta.policy_version for e in episodes], dtype=torch.int64),
        items=items,
    )


def training_mask(filled: torch.Tensor, terminated: torch.Tensor) -> torch.Tensor:
    """Which steps the learner trains on, [B, T, 1] float, from the batch's filled and terminated
    [B, T + 1, 1].

    PyMARL2: mask = filled[:, :-1], with mask[:, 1:] *= 1 - terminated[:, :-1] (nothing after a true
    end). One addition: a step is trained on only if the next row is filled too, which excludes the
    last observation's row of an episode that ended by the time limit *and* is shorter than the batch
    (that row has no action; PyMARL2 would train on it, bootstrapping from padding). On PyMARL2's own
    data this never changes anything: a terminated episode's last row is already masked, and a
    time-limit episode is always the longest one, whose last row is not among the T steps."""
    filled = filled.float()
    mask = filled[:, :-1] * filled[:, 1:]
    mask[:, 1:] = mask[:, 1:] * (1.0 - terminated[:, :-2].float())  # terminated[:, :-1][:, :-1]
    return mask
