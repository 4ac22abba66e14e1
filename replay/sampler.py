"""The learner's mixed sampler: exact offline/online mixing, padding, background prefetch.

Every batch of B episodes holds exactly `batch_split(B, m)` = (round(m * B), B - round(m * B))
episodes from the offline and online tables, offline ones first; a table with a count of 0 is never
read (m = 0 never touches the offline table, m = 1 never the online one). Episodes are padded to
the longest one in the batch (`common.episode.to_training_batch`), with `filled` as the mask and
`offline` saying where each came from. Once a table holds 8x a batch's share of it, a batch never
holds one of its items twice (PyMARL2's buffer and CFCQL sample without replacement; Reverb draws
with replacement, so repeats are drawn again; see `_take` for the cost and why smaller tables keep
their repeats).

Repeatability: Reverb's selectors take no seed, so a distributed run is repeatable statistically
(the same distribution of batches), not bitwise; `ovmse train --mode sync` is the bitwise one.

Waiting for data happens here, not inside Reverb: before sampling, the sampler asks the server how
many samples the table's rate limiter would grant (`samples_allowed`) and waits, in short
interruptible sleeps, until at least one is; then it samples no more than that. The learner is
therefore held back exactly as Reverb's limiter would hold it, but `close()` can always stop a
waiting sampler (a thread blocked inside Reverb's sampler could only be released by an insert).
The learner is the only consumer of the tables, so the count stays exact between server queries.

With `prefetch_batches` > 0 a background thread keeps that many batches ready, so the learner does
not wait when data is there; 0 samples on demand in the caller's thread.

Every item drawn is checked before it can join a batch (`replay.tables.decode_checked`, i.e.
`common.episode_checks.episode_problem`, the check the dataset reader and the one-process replay
apply too): one that does not decode, has shapes other than the map's, holds NaN or infinity,
values the map's world cannot produce (a reward, return, observation or state beyond its bounds),
an impossible structure (filled, terminated, the action mask) or actions out of range or
unavailable is dropped, counted (`stats.dropped`, and `on_drop(table, reason)`, which the learner
turns into the `ovmse_replay_items_dropped_total` metric), logged with the actor id it carries,
deleted from its table (by key, so no later draw, and no restarted learner, meets it again) and
another item is drawn in its place. The table is open to any client; the learner trains only on
items that pass.

Each batch names its episodes (`TrainingBatch.items`: table and key). An item that passed the check
but still made the learner's update non-finite is handed back through `discard`, which deletes
and counts it the same way.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from common.config.sections import Config, batch_split
from common.episode import Episode, TrainingBatch, to_training_batch
from replay.tables import OFFLINE_TABLE, ONLINE_TABLE, BadItem, decode_checked, import_reverb

log = logging.getLogger(__name__)

# Batches are drawn without repeats once a table holds this many times the batch's share (see _take).
DISTINCT_TABLE_FACTOR = 8
# Reverb reports a MinSize limiter's bound as -DBL_MAX; cap "unlimited" at something countable.
UNLIMITED = 1 << 30


def samples_allowed(table_info) -> int:
    """How many samples the table's rate limiter grants right now (a `reverb` TableInfo).

    Reverb's rule: no sample below `min_size_to_sample` items; above it, a sample is allowed while
    inserts x samples_per_insert - samples - 1 stays >= min_diff."""
    limiter = table_info.rate_limiter_info
    if table_info.current_size < max(1, limiter.min_size_to_sample):
        return 0
    error = limiter.insert_stats.completed * limiter.samples_per_insert - limiter.sample_stats.completed
    headroom = error - limiter.min_diff
    if not math.isfinite(headroom) or headroom >= UNLIMITED:
        return UNLIMITED
    return max(0, int(math.floor(headroom + 1e-9)))


def lower_thread_priority(nice: int) -> bool:
    """Raise the calling thread's nice value by `nice` (Linux: niceness is per thread, and threads
    it starts, such as Reverb's sampler workers, inherit it). The prefetcher then gets the cores
    only when the learner's torch threads leave them idle, instead of stalling those threads (which
    spin while waiting for each other) with its padding and decompression. False if not possible."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        return True
    except OSError:
        return False


class SamplerClosed(RuntimeError):
    """The sampler was closed while (or before) a batch was requested."""


@dataclass
class SamplerStats:
    batches: int = 0
    offline_episodes: int = 0
    online_episodes: int = 0
    server_queries: int = 0  # server_info calls made while waiting for the rate limiter
    repeats_redrawn: int = 0  # items drawn twice for one batch and drawn again
    dropped: dict = field(default_factory=dict)  # reason -> items dropped (see replay.tables.BadItem)
    deleted: int = 0  # dropped items deleted from their table


class MixedSampler:
    """Batches of `batch_size` episodes mixed at `mixing_ratio`, as `TrainingBatch`es.

    `client` is a `reverb.Client` or "host:port"; the sampler makes its own client from it (it may
    run on a background thread). Use as an iterator or call `sample()`; `close()` when done.

    prefetch_batches: batches kept ready by a background thread (0: sample in the caller's thread).
    pin_memory: pin each batch's tensors (for a CUDA learner), in the background thread.
    poll_interval_s: sleep between server queries while a table cannot be sampled yet.
    server_timeout_s: deadline of each server query (a dead server surfaces as an error).
    background_nice: how much lower the prefetch thread runs (Linux nice; 0 = unchanged).
    expected: the map's sizes (`replay.dataset.MapLayout`) items must have; None checks only that
    an item's fields agree with each other. on_drop(table, reason): called for each dropped item."""

    def __init__(
        self,
        client,
        batch_size: int,
        mixing_ratio: float,
        *,
        prefetch_batches: int = 2,
        pin_memory: bool = False,
        poll_interval_s: float = 0.005,
        server_timeout_s: float = 30.0,
        background_nice: int = 10,
        expected=None,
        on_drop=None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= mixing_ratio <= 1.0:
            raise ValueError(f"mixing_ratio must be in [0, 1], got {mixing_ratio}")
        import_reverb()
        self.address = client if isinstance(client, str) else client.server_address
        self._client = None  # made by the thread that samples, so its threads inherit its priority
        self.batch_size = int(batch_size)
        self.mixing_ratio = float(mixing_ratio)
        self.offline_count, self.online_count = batch_split(self.batch_size, self.mixing_ratio)
        self.pin_memory = pin_memory
        self.poll_interval_s = poll_interval_s
        self.server_timeout_s = server_timeout_s
        self.background_nice = background_nice
        self.stats = SamplerStats()
        self.expected = expected
        self.on_drop = on_drop
        self._drops_logged: dict[tuple, int] = {}  # (actor, reason) -> log lines written
        self._drop_lock = threading.Lock()  # drops come from the prefetch thread and from discard()
        self._discard_client = None  # discard() runs in the caller's thread, with its own client
        self._granted = {OFFLINE_TABLE: 0, ONLINE_TABLE: 0}  # samples known to be allowed
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if prefetch_batches > 0:
            self._queue = queue.Queue(maxsize=prefetch_batches)
            self._thread = threading.Thread(target=self._prefetch, name="replay-prefetch", daemon=True)
            self._thread.start()

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        client=None,
        *,
        mixing_ratio: float | None = None,
        batch_size: int | None = None,
        **kwargs,
    ) -> MixedSampler:
        """A sampler with the run's batch size, mixing ratio and prefetch depth (offline
        pre-training passes mixing_ratio=1.0)."""
        from replay.dataset import expected_layout

        kwargs.setdefault("prefetch_batches", cfg.replay.prefetch_batches)
        kwargs.setdefault("expected", expected_layout(cfg.env))
        return cls(
            client or f"{cfg.replay.address}:{cfg.replay.port}",
            cfg.learner.batch_size if batch_size is None else batch_size,
            cfg.replay.mixing_ratio if mixing_ratio is None else mixing_ratio,
            **kwargs,
        )

    # --- the consumer side --------------------------------------------------------------------
    def sample(self, timeout: float | None = None) -> TrainingBatch:
        """The next batch. Waits for data (up to `timeout` seconds: TimeoutError); raises
        SamplerClosed after `close()`, or the error the background thread hit."""
        if self._queue is None:
            if self._stop.is_set():
                raise SamplerClosed("sampler is closed")
            return self._make_batch()
        if self._stop.is_set() and self._queue.empty():
            raise SamplerClosed("sampler is closed")
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"no batch within {timeout} s (tables still filling or rate-limited)"
            ) from None
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[TrainingBatch]:
        while True:
            try:
                yield self.sample()
            except SamplerClosed:
                return

    def close(self, timeout: float = 10.0) -> None:
        """Stop prefetching and release the server connection. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            if self._queue is not None:  # unblock a producer waiting on a full queue
                while not self._queue.empty():
                    self._queue.get_nowait()
            self._thread.join(timeout)
        if self._queue is not None:
            with self._queue.mutex:
                self._queue.queue.clear()
            self._queue.put_nowait(SamplerClosed("sampler is closed"))

    @property
    def ready_batches(self) -> int:
        """Batches waiting in the prefetch queue (0 without prefetching)."""
        return 0 if self._queue is None else self._queue.qsize()

    @property
    def prefetching(self) -> bool:
        """True while the background thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> MixedSampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the producer side --------------------------------------------------------------------
    def sample_episodes(self) -> list[Episode]:
        """One batch's episodes (offline first), unpadded, in the calling thread."""
        return self._sample_items()[0]

    def _sample_items(self) -> tuple[list[Episode], tuple]:
        """One batch's episodes (offline first) and their (table, key)s."""
        # Online first: it is the table that may make us wait, and offline episodes drawn before a
        # long wait would be wasted if the sampler is closed meanwhile.
        online = self._take(ONLINE_TABLE, self.online_count)
        offline = self._take(OFFLINE_TABLE, self.offline_count)
        self.stats.offline_episodes += self.offline_count
        self.stats.online_episodes += self.online_count
        taken = offline + online
        return [e for _, e in taken], tuple(item for item, _ in taken)

    def _make_batch(self) -> TrainingBatch:
        episodes, items = self._sample_items()
        batch = to_training_batch(episodes, items=items)
        if self.pin_memory:
            batch = batch.pin_memory()
        self.stats.batches += 1
        return batch

    def _prefetch(self) -> None:
        assert self._queue is not None
        lower_thread_priority(self.background_nice)
        while not self._stop.is_set():
            try:
                batch: object = self._make_batch()
            except SamplerClosed:
                return
            except BaseException as error:  # hand it to the learner; stop producing
                batch = error
            while not self._stop.is_set():
                try:
                    self._queue.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(batch, BaseException):
                return

    def _take(self, table: str, count: int) -> list[tuple[tuple[str, int], Episode]]:
        """`count` episodes of `table`, distinct once the table holds DISTINCT_TABLE_FACTOR x
        `count` items. Reverb's uniform selector draws with replacement, so a repeated item is drawn
        again, and every draw counts as a sample for the rate limiter. In a table of N items a batch
        of k then costs about k^2 / 2N extra samples (at most ~6% of k at N = 8k; 1.3% for k = 128,
        N = 5000); in a smaller table (the first updates of a run) redrawing would cost a large part
        of the learner's sample budget, so repeats are kept there, as Reverb gives them. Each
        episode comes with its (table, key)."""
        episodes: list[tuple[tuple[str, int], Episode]] = []
        seen: set[int] = set()
        while len(episodes) < count:
            if self._granted[table] < 1:
                self._granted[table] = self._ask_server(table)
            if self._granted[table] < 1:
                if self._stop.wait(self.poll_interval_s):
                    raise SamplerClosed("sampler closed while waiting for data")
                continue
            k = min(count - len(episodes), self._granted[table])
            self._granted[table] -= k
            for key, table_size, columns in self._draw(table, k):
                if key in seen and table_size >= DISTINCT_TABLE_FACTOR * count:
                    self.stats.repeats_redrawn += 1
                    continue
                seen.add(key)
                try:
                    episodes.append(((table, key), decode_checked(columns, table, self.expected)))
                except BadItem as bad:
                    self._drop(table, bad)
                    self._delete(self._connection(), table, [key])
        return episodes

    def discard(self, blamed) -> int:
        """Delete items of a batch the learner cannot train on: `blamed` holds ((table, key), reason)
        pairs (keys from `TrainingBatch.items`; reason the check's or "non_finite_loss"). Each is
        counted, logged and deleted like an item dropped at sampling; returns how many."""
        blamed = list(blamed)
        if self._discard_client is None:
            self._discard_client = import_reverb().Client(self.address)
        for (table, key), reason in blamed:
            self._drop(
                table, BadItem(reason, f"item {key}, in a batch whose update was not finite", None, "batch")
            )
        by_table: dict[str, list[int]] = {}
        for (table, key), _ in blamed:
            by_table.setdefault(table, []).append(int(key))
        for table, keys in by_table.items():
            self._delete(self._discard_client, table, keys)
        return len(blamed)

    def _delete(self, client, table: str, keys: list[int]) -> None:
        """Delete dropped items from their table (Reverb ignores keys it no longer holds)."""
        try:
            client.mutate_priorities(table, deletes=keys)
        except Exception as error:  # still dropped at every draw; only the deletion failed
            log.warning("could not delete %d dropped item(s) from the %s table: %s", len(keys), table, error)
            return
        with self._drop_lock:
            self.stats.deleted += len(keys)

    def _drop(self, table: str, bad: BadItem) -> None:
        with self._drop_lock:
            count = self.stats.dropped[bad.reason] = self.stats.dropped.get(bad.reason, 0) + 1
            total = sum(self.stats.dropped.values())
            # A flood of bad items must not flood the log: the first few of each actor and reason,
            # then one line per thousand.
            seen = self._drops_logged.get((bad.actor_id, bad.reason), 0)
            loud = (seen < 3 and len(self._drops_logged) < 1000) or total % 1000 == 0
            if loud:
                self._drops_logged[(bad.actor_id, bad.reason)] = seen + 1
        if self.on_drop is not None:
            self.on_drop(table, bad.reason)
        if loud:
            actor = "an unknown actor" if bad.actor_id is None else f"actor {bad.actor_id}"
            log.warning(
                "dropped an item of the %s table from %s, not trained on (deleted): %s "
                "(%d dropped for %s so far)",
                table,
                actor,
                bad,
                count,
                bad.reason,
            )

    def _ask_server(self, table: str) -> int:
        self.stats.server_queries += 1
        return samples_allowed(
            self._connection().server_info(timeout=max(1, math.ceil(self.server_timeout_s)))[table]
        )

    def _draw(self, table: str, k: int) -> list[tuple[int, int, list]]:
        """k items as (key, table size, columns). Reverb's public `Client.sample` keeps one sample
        in flight at a time; its native sampler with all k in flight is about a quarter faster for
        a 128-episode batch. The native trajectory starts with the info tensors: key, probability,
        table size, priority, times sampled."""
        client = self._connection()
        native = getattr(client, "_client", None)
        if native is not None and hasattr(native, "NewSampler"):
            from reverb import pybind

            skip = pybind.Sampler.NUM_INFO_TENSORS
            sampler = native.NewSampler(table, k, k)
            out = []
            for _ in range(k):
                sample = sampler.GetNextTrajectory()
                out.append((int(sample[0]), int(sample[2]), sample[skip:]))
            return out
        return [
            (int(s.info.key), int(s.info.table_size), s.data)
            for s in client.sample(table, num_samples=k, emit_timesteps=False)
        ]

    def _connection(self):
        if self._client is None:
            self._client = import_reverb().Client(self.address)
        return self._client
