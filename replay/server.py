"""The Reverb replay server: its two tables, the item layout they hold, checkpoints and restore.

Tables:
- `offline`: the dataset, loaded once at start. Uniform sampling, never evicted (capacity = the
  dataset's episodes), and a MinSize limiter at that same size, so nobody samples it while it is
  still loading (or after a failed load emptied it again).
- `online`: the actors' episodes. Uniform sampling, FIFO eviction at `replay.online_capacity`, and
  Reverb's SampleToInsertRatio limiter with the values of `rate_limit(cfg)`: after
  `min_size_to_sample` episodes, the learner may run at most `error_buffer` samples ahead of
  `samples_per_insert` x inserts, and actors at most that far behind. With a mixing ratio of 1 the
  online table is never sampled and gets a plain MinSize limiter (inserts never block).

Each item is one whole episode, laid out as replay/tables.py says.

Persistence: with `replay.checkpoint_dir` set, Reverb restores both tables from the newest
checkpoint there when the server starts (Reverb keeps only the newest), `serve` checkpoints every
`checkpoint_interval_s` and once more when stopped (SIGTERM in `ovmse replay-server`). Reverb
restores tables with the options they were checkpointed with, not the current configuration.
Reverb writes into `checkpoint_dir/reverb/`; `checkpoint_dir/offline.json` records which dataset
(by content hash) the offline table holds: a restart with the same dataset skips the load, a
different one is refused.

Reverb is imported inside the functions that need it: it pulls in TensorFlow (seconds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.atomic_files import write_json
from common.config.sections import Config, rate_limit
from common.net import pick_free_port
from replay.dataset import READ_CHUNK, dataset_layout, expected_layout, file_fingerprint, iter_episodes
from replay.tables import OFFLINE_TABLE, ONLINE_TABLE, import_reverb

log = logging.getLogger("ovmse.replay")

OFFLINE_RECORD = "offline.json"  # in checkpoint_dir: which dataset the offline table holds
REVERB_SUBDIR = "reverb"  # in checkpoint_dir: Reverb's checkpoints

# --- table specifications (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class TableSpec:
    """One table: uniform sampling, FIFO removal, and a rate limiter.

    `samples_per_insert` None means Reverb's MinSize limiter (inserts never block); otherwise
    SampleToInsertRatio(samples_per_insert, min_size_to_sample, error_buffer)."""

    name: str
    capacity: int
    min_size_to_sample: int
    samples_per_insert: float | None = None
    error_buffer: float | None = None


def table_specs(cfg: Config, offline_episodes: int) -> tuple[TableSpec, TableSpec]:
    """The offline and online tables for `cfg` and a dataset of `offline_episodes` (0: none)."""
    size = max(1, int(offline_episodes))
    offline = TableSpec(OFFLINE_TABLE, capacity=size, min_size_to_sample=size)
    limit = rate_limit(cfg)
    capacity = int(cfg.replay.online_capacity)
    if limit.min_size_to_sample > capacity:
        raise ValueError(
            f"replay.min_size_to_sample ({limit.min_size_to_sample}) exceeds replay.online_capacity "
            f"({capacity}): the learner could never sample"
        )
    if limit.samples_per_insert > 0:
        online = TableSpec(
            ONLINE_TABLE, capacity, limit.min_size_to_sample, limit.samples_per_insert, limit.error_buffer
        )
    else:
        online = TableSpec(ONLINE_TABLE, capacity, max(1, limit.min_size_to_sample))
    return offline, online


def build_table(spec: TableSpec):
    reverb = import_reverb()
    if spec.samples_per_insert is None:
        limiter = reverb.rate_limiters.MinSize(spec.min_size_to_sample)
    else:
        limiter = reverb.rate_limiters.SampleToInsertRatio(
            samples_per_insert=spec.samples_per_insert,
            min_size_to_sample=spec.min_size_to_sample,
            error_buffer=spec.error_buffer,
        )
    return reverb.Table(
        name=spec.name,
        sampler=reverb.selectors.Uniform(),
        remover=reverb.selectors.Fifo(),
        max_size=spec.capacity,
        rate_limiter=limiter,
    )


# --- the server -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableStats:
    """One table as the server reports it."""

    name: str
    size: int
    capacity: int
    inserts: int
    samples: int
    min_size_to_sample: int
    samples_per_insert: float


def table_stats(client) -> dict[str, TableStats]:
    """Size, capacity and insert/sample counts of every table, from a `reverb.Client`."""
    stats = {}
    for name, info in client.server_info().items():
        limiter = info.rate_limiter_info
        stats[name] = TableStats(
            name=name,
            size=int(info.current_size),
            capacity=int(info.max_size),
            inserts=int(limiter.insert_stats.completed),
            samples=int(limiter.sample_stats.completed),
            min_size_to_sample=int(limiter.min_size_to_sample),
            samples_per_insert=float(limiter.samples_per_insert),
        )
    return stats


class ReplayServer:
    """A running Reverb server with the offline and online tables.

    Build it with `start_replay_server`; it serves until `stop()`. `serve(stop_event)` blocks and
    checkpoints periodically (the `ovmse replay-server` process); embedded runs and tests just keep
    the object and call `stop()`."""

    def __init__(
        self,
        specs: Sequence[TableSpec],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        checkpoint_dir: str | os.PathLike | None = None,
    ):
        reverb = import_reverb()
        self.host = host
        self.port = int(port) or pick_free_port()
        self.specs = tuple(specs)
        # Without a checkpoint directory Reverb would make a temporary one per start and leave it
        # behind; we make it ourselves and remove it on stop.
        self._own_dir = checkpoint_dir is None
        self.checkpoint_dir = Path(checkpoint_dir or tempfile.mkdtemp(prefix="ovmse-replay-"))
        # Reverb owns the `reverb` subdirectory: it treats every entry of its root as a checkpoint
        # (keeping only the newest by name), so our own files live one level up.
        self.reverb_dir = self.checkpoint_dir / REVERB_SUBDIR
        self.reverb_dir.mkdir(parents=True, exist_ok=True)
        self.restored = (not self._own_dir) and any((p / "DONE").exists() for p in self.reverb_dir.iterdir())
        checkpointer = reverb.checkpointers.DefaultCheckpointer(str(self.reverb_dir))
        self._server = reverb.Server(
            [build_table(s) for s in self.specs], port=self.port, checkpointer=checkpointer
        )
        # The server's own client (checkpoints, stats) dials loopback: `host` is what *others* dial
        # (a compose service name, say), which need not resolve here.
        self._client = reverb.Client(f"127.0.0.1:{self.port}")
        self._lock = threading.Lock()
        self._stopped = False
        self.loaded_offline = False  # set by start_replay_server: the dataset was loaded this start

    @property
    def address(self) -> str:
        """host:port for `reverb.Client`, writers and samplers."""
        return f"{self.host}:{self.port}"

    @property
    def checkpoints_enabled(self) -> bool:
        return not self._own_dir

    def client(self):
        """A new `reverb.Client` for this server."""
        reverb = import_reverb()
        return reverb.Client(self.address)

    def stats(self) -> dict[str, TableStats]:
        return table_stats(self._client)

    def checkpoint(self) -> str | None:
        """Write a checkpoint of both tables (None when no checkpoint_dir was configured)."""
        if not self.checkpoints_enabled:
            return None
        with self._lock:
            path = self._client.checkpoint()
        log.info("replay checkpoint written to %s", path)
        return path

    def serve(self, stop: threading.Event, checkpoint_interval_s: float | None = None) -> None:
        """Block until `stop` is set, checkpointing every `checkpoint_interval_s` seconds (if
        checkpoints are on); then write a last checkpoint and shut the server down."""
        interval = checkpoint_interval_s if (checkpoint_interval_s and self.checkpoints_enabled) else None
        while not stop.wait(interval):
            self.checkpoint()
        self.stop(checkpoint=True)

    def stop(self, checkpoint: bool = False) -> None:
        """Shut the server down (after a final checkpoint if asked and enabled). Idempotent."""
        if self._stopped:
            return
        if checkpoint:
            self.checkpoint()
        self._stopped = True
        self._server.stop()
        if self._own_dir:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def __enter__(self) -> ReplayServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the offline table: loading it exactly once --------------------------------------------------


class OfflineDataError(RuntimeError):
    """The offline table and the configured dataset disagree (one line, names the file)."""


@dataclass(frozen=True)
class OfflineRecord:
    """What `offline.json` says about the offline table in the checkpoints next to it."""

    dataset: str | None
    fingerprint: str | None
    episodes: int

    @classmethod
    def read(cls, directory: Path) -> OfflineRecord | None:
        path = directory / OFFLINE_RECORD
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(data.get("dataset"), data.get("fingerprint"), int(data.get("episodes", 0)))

    def write(self, directory: Path) -> None:
        write_json(
            directory / OFFLINE_RECORD,
            {"dataset": self.dataset, "fingerprint": self.fingerprint, "episodes": self.episodes},
        )


def load_offline(
    client, path: str | os.PathLike, expected=None, progress: bool = False, chunk: int = READ_CHUNK
) -> int:
    """Insert every episode of a dataset file into the offline table; returns how many.

    The file is checked as it streams in; at the first problem the table is emptied again (and its
    MinSize limiter, set to the file's size, kept it unsampleable meanwhile), so a truncated or
    invalid file never leaves a half-loaded table. Raises DatasetError."""
    from tqdm import tqdm

    from replay.writer import EpisodeWriter

    total = dataset_layout(path, expected).episodes
    count = 0
    bar = tqdm(total=total, desc=f"load {Path(path).name}", unit="ep", disable=not progress)
    try:
        with EpisodeWriter(client, table=OFFLINE_TABLE) as writer:
            for episode in iter_episodes(path, expected, chunk=chunk):
                writer.write(episode)
                count += 1
                bar.update(1)
    except BaseException:
        with contextlib.suppress(Exception):
            client.reset(OFFLINE_TABLE)
        raise
    finally:
        bar.close()
    return count


class _FromConfig:
    """Default of `start_replay_server(dataset=...)`: use `cfg.run.dataset`."""

    def __repr__(self) -> str:
        return "cfg.run.dataset"


FROM_CONFIG = _FromConfig()


def start_replay_server(
    cfg: Config,
    *,
    dataset: str | os.PathLike | None | _FromConfig = FROM_CONFIG,
    port: int | None = None,
    progress: bool = False,
) -> ReplayServer:
    """Start the server for `cfg`, restore its checkpoint if there is one, and make sure the
    offline table holds the dataset exactly once.

    `dataset` defaults to `cfg.run.dataset`; None starts with an empty offline table. `port`
    defaults to `cfg.replay.port` (0 = a free port; see `ReplayServer.address`). Raises DatasetError
    for a bad dataset file and OfflineDataError when a restored checkpoint holds another dataset."""
    path = cfg.run.dataset if isinstance(dataset, _FromConfig) else dataset
    expected = expected_layout(cfg.env)
    episodes = dataset_layout(path, expected).episodes if path else 0
    fingerprint = file_fingerprint(path) if path else None
    specs = table_specs(cfg, episodes)
    server = ReplayServer(
        specs,
        host=cfg.replay.address,
        port=cfg.replay.port if port is None else port,
        checkpoint_dir=cfg.replay.checkpoint_dir,
    )
    try:
        server.loaded_offline = _ensure_offline(server, path, fingerprint, episodes, expected, progress)
    except BaseException:
        server.stop()
        raise
    return server


def _ensure_offline(server: ReplayServer, path, fingerprint, episodes: int, expected, progress: bool) -> bool:
    """Load the dataset unless the restored checkpoint already holds it. True if it loaded now."""
    client = server._client
    record = OfflineRecord.read(server.checkpoint_dir) if server.checkpoints_enabled else None
    if server.restored and record is not None:
        if record.fingerprint != fingerprint:
            raise OfflineDataError(
                f"replay checkpoint {server.checkpoint_dir} holds offline data from {record.dataset} "
                f"({record.episodes} episodes), not {path}: use the same dataset or another "
                "replay.checkpoint_dir"
            )
        size = server.stats()[OFFLINE_TABLE].size
        if size == record.episodes:
            log.info("offline table restored from checkpoint (%d episodes); not loading %s again", size, path)
            return False
        # The record says loaded but the table disagrees: reload from scratch below.
    if server.restored:
        restored = server.stats()[OFFLINE_TABLE]
        if restored.capacity != max(1, episodes):
            raise OfflineDataError(
                f"replay checkpoint {server.checkpoint_dir} has an offline table for {restored.capacity} "
                f"episodes but {path} holds {episodes}: use another replay.checkpoint_dir"
            )
        client.reset(OFFLINE_TABLE)
    loaded = load_offline(client, path, expected, progress) if path else 0
    if server.checkpoints_enabled:
        # Checkpoint first, record second: a crash in between means a reload, never a double load.
        server.checkpoint()
        OfflineRecord(str(path) if path else None, fingerprint, loaded).write(server.checkpoint_dir)
    return bool(path)


def wait_for_offline_table(address: str, dataset: str | None, stop: threading.Event, timeout_s: float = 600):
    """Block until the replay server holds the whole dataset in its offline table: sampling a
    half-loaded table would bias the first offline batches."""
    expected = dataset_layout(dataset).episodes if dataset and Path(dataset).exists() else None
    client = import_reverb().Client(address)
    deadline = time.monotonic() + timeout_s
    last, stable_since = -1, time.monotonic()
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            size = table_stats(client)[OFFLINE_TABLE].size
        except Exception:  # the server is not up yet
            size = -1
        if expected is not None and size >= expected:
            return
        if expected is None and size > 0 and size == last and time.monotonic() - stable_since > 2.0:
            return
        if size != last:
            last, stable_since = size, time.monotonic()
        time.sleep(0.2)
    if not stop.is_set():
        raise TimeoutError(f"replay server {address}: offline table not loaded within {timeout_s:.0f}s")
