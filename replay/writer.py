"""The episode writer actors use: one Reverb item per finished episode, flushed at once.

Each `write` appends the episode's columns (see `tables.encode_episode`), creates the item and
flushes, so at most one episode is ever pending on the writer: memory stays bounded however long
an actor runs, and the item is in the table when `write` returns. `write` blocks while the online
table's rate limiter holds inserts back (the learner is behind), which is how actors are paced.

It uses Reverb's single-step `Writer` (chunk length 1): a whole episode is one step whose arrays
may differ in length from the previous one. Reverb's newer TrajectoryWriter fixes each column's
shape at the first append, so it would need a new writer per episode, which inserts fewer
episodes per second (docs/bench/replay.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from common.episode import Episode
from replay.tables import ONLINE_TABLE, encode_episode, import_reverb


class EpisodeWriter:
    """Writes whole episodes into one table of a replay server.

    `client` is a `reverb.Client` or a "host:port" address."""

    def __init__(self, client, table: str = ONLINE_TABLE, priority: float = 1.0):
        if isinstance(client, str):
            client = import_reverb().Client(client)
        self.client = client
        self.table = table
        self.priority = float(priority)
        # max_in_flight_items=1 with a flush per episode: nothing accumulates client-side.
        self._writer = client.writer(max_sequence_length=1, chunk_length=1, max_in_flight_items=1)
        self.episodes_written = 0
        self.steps_written = 0

    def write(self, episode: Episode) -> None:
        """Insert one episode and wait until the server has it."""
        self._writer.append(encode_episode(episode))
        self._writer.create_item(table=self.table, num_timesteps=1, priority=self.priority)
        self._writer.flush()
        self.episodes_written += 1
        self.steps_written += episode.length

    def write_all(self, episodes: Iterable[Episode]) -> int:
        count = 0
        for episode in episodes:
            self.write(episode)
            count += 1
        return count

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
