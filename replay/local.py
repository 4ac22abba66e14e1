"""An in-process replay for one process: the offline dataset in memory and a FIFO online buffer,
sampled by one seeded generator. No Reverb (so no TensorFlow), and repeatable: the same seed gives
the same batches in the same order.

It samples as PyMARL2's buffer and CFCQL's offline loader do: the episodes of one batch are drawn
uniformly *without replacement* (a batch never holds an episode twice), offline and online at the
exact split `batch_split(B, m)`, offline episodes first. The distributed system keeps Reverb; this
is for the one-process trainer and offline pre-training, whose dataset never changes.

Memory: episodes are held unpadded as numpy arrays, about 5.5 KB per step on 3s5z (a 5,000-episode
3s5z dataset of ~70-step episodes takes ~2 GB).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Sequence

import numpy as np

from common.config.sections import batch_split
from common.episode import Episode, TrainingBatch, to_training_batch
from common.episode_checks import episode_problem
from common.snapshot import capture, restore

log = logging.getLogger(__name__)


class LocalReplay:
    """`offline` episodes (fixed) plus an online FIFO of `online_capacity` episodes.

    `write(episode)` adds an online episode (the EpisodeWriter interface); `sample()` returns a
    padded `TrainingBatch` of `batch_size` episodes at `mixing_ratio`; `close()` does nothing.
    An online episode that fails `common.episode_checks.episode_problem` against `expected` (the
    map's `MapLayout`: sizes and the world's bounds) is refused and counted in `dropped` by reason,
    as the distributed learner's sampler does. Each batch names its episodes (`TrainingBatch.items`)
    so that `discard` can take out the ones an update found it cannot train on."""

    def __init__(
        self,
        offline: Sequence[Episode],
        *,
        batch_size: int,
        mixing_ratio: float,
        online_capacity: int,
        seed: int | Sequence[int],
        expected=None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= mixing_ratio <= 1.0:
            raise ValueError(f"mixing_ratio must be in [0, 1], got {mixing_ratio}")
        self.offline = list(offline)
        self.online: collections.deque[Episode] = collections.deque(maxlen=online_capacity)
        self.batch_size = batch_size
        self.offline_count, self.online_count = batch_split(batch_size, mixing_ratio)
        if self.offline_count and len(self.offline) < self.offline_count:
            raise ValueError(
                f"the offline data holds {len(self.offline)} episodes, fewer than the "
                f"{self.offline_count} each batch draws from it without replacement"
            )
        self.rng = np.random.default_rng(seed)
        self.episodes_written = 0
        self.expected = expected
        self.dropped: dict[str, int] = {}  # reason -> online episodes refused

    def with_mixing_ratio(self, mixing_ratio: float, seed: int | Sequence[int]) -> LocalReplay:
        """Another view of the same episodes with another split and its own generator (offline
        pre-training samples offline-only batches from the data the online phase mixes in)."""
        view = LocalReplay(
            self.offline,
            batch_size=self.batch_size,
            mixing_ratio=mixing_ratio,
            online_capacity=self.online.maxlen or 1,
            seed=seed,
            expected=self.expected,
        )
        view.online = self.online
        view.dropped = self.dropped
        return view

    # --- the writer side ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The online episodes, the sampling generator and the counts (the offline episodes are the
        dataset's, loaded again by whoever rebuilds this replay)."""
        return {
            "online": capture(self.online),
            "rng": capture(self.rng),
            "episodes_written": self.episodes_written,
            "dropped": dict(self.dropped),
        }

    def load_state_dict(self, state: dict) -> None:
        self.online = restore(self.online, state["online"])
        self.rng = restore(self.rng, state["rng"])
        self.episodes_written = int(state["episodes_written"])
        self.dropped = {str(k): int(v) for k, v in state["dropped"].items()}

    def write(self, episode: Episode) -> None:
        self.write_all([episode])

    def write_all(self, episodes: Iterable[Episode]) -> int:
        """Add the episodes that can be trained on; returns how many were added."""
        good = [e for e in episodes if self._acceptable(e)]
        self.online.extend(good)  # the FIFO drops the oldest past its capacity
        self.episodes_written += len(good)
        return len(good)

    def _acceptable(self, episode: Episode) -> bool:
        problem = episode_problem(episode, self.expected)
        if problem is None:
            return True
        self.dropped[problem.reason] = self.dropped.get(problem.reason, 0) + 1
        log.warning(
            "dropped an online episode from actor %d, not trained on: %s: %s: %s",
            episode.meta.actor_id,
            problem.reason,
            problem.field,
            problem.detail,
        )
        return False

    def discard(self, blamed: Iterable[tuple[tuple[str, int], str]]) -> int:
        """Take out the episodes `((table, id), reason)` of a batch (`TrainingBatch.items`) that the
        learner cannot train on, counted in `dropped` by reason; returns how many were still held."""
        gone: dict[str, set[int]] = {"offline": set(), "online": set()}
        for (table, ident), reason in blamed:
            gone.setdefault(table, set()).add(int(ident))
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            log.warning(
                "dropped an %s episode after a non-finite update, never sampled again: %s", table, reason
            )
        before = len(self.offline) + len(self.online)
        self.offline[:] = [e for e in self.offline if id(e) not in gone["offline"]]
        kept = [e for e in self.online if id(e) not in gone["online"]]
        self.online.clear()
        self.online.extend(kept)
        return before - len(self.offline) - len(self.online)

    # --- the sampler side -----------------------------------------------------------------------
    def can_sample(self) -> bool:
        return len(self.online) >= self.online_count

    def sample_episodes(self) -> list[Episode]:
        """One batch's episodes, offline first, each drawn at most once."""
        if not self.can_sample():
            raise ValueError(
                f"the online buffer holds {len(self.online)} episodes; a batch needs {self.online_count}"
            )
        offline = [self.offline[i] for i in self._draw(len(self.offline), self.offline_count)]
        online = [self.online[i] for i in self._draw(len(self.online), self.online_count)]
        return offline + online

    def sample(self, timeout: float | None = None) -> TrainingBatch:
        """A padded batch, naming its episodes (`items`: table and the episode's identity while it is
        held here). `timeout` is accepted for the sampler interface: nothing here waits."""
        episodes = self.sample_episodes()
        tables = ["offline"] * self.offline_count + ["online"] * self.online_count
        items = tuple((table, id(e)) for table, e in zip(tables, episodes, strict=True))
        return to_training_batch(episodes, items=items)

    def _draw(self, population: int, count: int) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        return self.rng.choice(population, size=count, replace=False)

    def close(self) -> None:
        pass
