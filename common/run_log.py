"""A run directory: the resolved config, metrics as JSONL and CSV, PNG curves, a progress line.

Layout of `runs/<name>/`: config.yaml, metrics.jsonl (every record, one JSON object per line),
<kind>.csv (one file per record kind, e.g. eval.csv, train.csv), checkpoints/, and plots:
test_win_rate.png and test_return.png against environment steps, each with its 95% interval shaded
when the eval records carry one. tensorboard/<process>/ holds TensorBoard event files with the same
numbers: each record's numeric fields as scalars tagged `<kind>/<field>` (e.g. `eval/win_rate`,
`train/loss_total`), at its env_steps (else its update count); one directory per process that logs
(learner, evaluator, trainer), so `tensorboard --logdir runs` shows every run and process.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path

TENSORBOARD_DIR = "tensorboard"
STEP_FIELDS = ("env_steps", "updates", "update")  # a record's x axis, the first it has
_event_files = itertools.count()


def fresh_run_dir(path: str | Path) -> Path:
    """`path`, or `path_2`, `path_3`, ... if a run already wrote there: runs never mix their logs."""
    path = Path(path)
    candidate, n = path, 1
    while (candidate / "metrics.jsonl").exists():
        n += 1
        candidate = path.with_name(f"{path.name}_{n}")
    return candidate


@contextlib.contextmanager
def discarded_on_failure(run_dir: str | Path):
    """For a job that makes `run_dir`: if the job fails (or is interrupted) before it has saved a
    checkpoint there, the directory is removed, so the next run takes the same name instead of
    `<name>_2`. A directory that existed before, or holds a checkpoint, is kept."""
    run_dir = Path(run_dir)
    existed = run_dir.exists()
    try:
        yield run_dir
    except BaseException as error:
        checkpoints = run_dir / "checkpoints"
        saved = checkpoints.is_dir() and any(p.is_file() for p in checkpoints.iterdir())
        if not existed and run_dir.exists() and not saved:
            shutil.rmtree(run_dir, ignore_errors=True)
            # A note, so that whoever reports the error says the cause first, then this.
            error.add_note(f"removed {run_dir}: the job stopped before saving anything in it")
        raise


class EventFile:
    """One TensorBoard event file, written with TensorBoard's own record writer and protocol
    buffers. (TensorBoard's EventFileWriter would import TensorFlow, seconds and hundreds of MB, to
    open a file; this imports only the protos.) Each `scalars` call is flushed to disk."""

    def __init__(self, logdir: Path):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        logdir.mkdir(parents=True, exist_ok=True)
        stamp = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_event_files)}"
        name = f"events.out.tfevents.{stamp}"
        self.path = logdir / name
        self._records = RecordWriter(open(self.path, "ab"))
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def scalars(self, step: int, wall_time: float, values: dict[str, float]) -> None:
        summary = self._summary(value=[self._summary.Value(tag=t, simple_value=v) for t, v in values.items()])
        self._write(self._event(wall_time=wall_time, step=int(step), summary=summary))

    def close(self) -> None:
        self._records.close()


class RunLog:
    def __init__(self, run_dir: str | Path, process: str = "main"):
        """`process` names this process's TensorBoard directory (tensorboard/<process>/)."""
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "checkpoints").mkdir(exist_ok=True)
        self._jsonl = open(self.dir / "metrics.jsonl", "a", buffering=1)
        self._csv_fields: dict[str, list[str]] = {}
        self.tensorboard_dir = self.dir / TENSORBOARD_DIR / process
        self._events: EventFile | None = None  # opened at the first record
        self._counts: dict[str, int] = {}

    def write_config(self, cfg) -> Path:
        from common.config import write_config

        path = self.dir / "config.yaml"
        write_config(cfg, path)
        return path

    def log(self, kind: str, **record) -> None:
        """Append a record of `kind` (e.g. "eval") to metrics.jsonl and <kind>.csv."""
        row = {"time": round(time.time(), 3), **record}
        self._jsonl.write(json.dumps({"kind": kind, **row}) + "\n")
        path = self.dir / f"{kind}.csv"
        fields = self._csv_fields.get(kind)
        if fields is None:
            fields = list(row)
            self._csv_fields[kind] = fields
            if not path.exists() or path.stat().st_size == 0:
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerow(fields)
        with open(path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in fields])
        self._tensorboard(kind, row)

    def _tensorboard(self, kind: str, row: dict) -> None:
        """The record's finite numbers as scalars `<kind>/<field>` at its step."""
        self._counts[kind] = self._counts.get(kind, 0) + 1
        step_field = next((f for f in STEP_FIELDS if isinstance(row.get(f), (int, float))), None)
        step = row[step_field] if step_field else self._counts[kind]
        values = {
            f"{kind}/{name}": float(value)
            for name, value in row.items()
            if name not in ("time", step_field) and isinstance(value, (int, float)) and math.isfinite(value)
        }
        if not values:
            return
        if self._events is None:
            self._events = EventFile(self.tensorboard_dir)
        self._events.scalars(step, row["time"], values)

    def read(self, kind: str) -> list[dict]:
        """The records of `kind` so far. Other processes of the run append to the same file, so a
        last line without its newline is still being written and is left out."""
        out = []
        with open(self.dir / "metrics.jsonl") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                record = json.loads(line)
                if record.get("kind") == kind:
                    out.append(record)
        return out

    def plot_eval(self, offline_win_rate: float | None = None) -> list[Path]:
        """test_win_rate.png and test_return.png against env steps, from the eval records."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = self.read("eval")
        if not records:
            return []
        steps = [r["env_steps"] for r in records]
        bands = eval_bands(records)
        paths = []
        for key, label in (("win_rate", "test win rate"), ("return", "test return")):
            fig, ax = plt.subplots(figsize=(6, 3.5))
            (line,) = ax.plot(steps, [r[key] for r in records], marker="o", ms=3)
            if key in bands:
                ax.fill_between(*bands[key], color=line.get_color(), alpha=0.2, lw=0, label="95% interval")
            if key == "win_rate" and offline_win_rate is not None:
                ax.axhline(offline_win_rate, ls="--", color="grey", label="after offline pre-training")
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
            ax.set_xlabel("environment steps (online)")
            ax.set_ylabel(label)
            ax.set_title(f"{self.dir.name}: {label}")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = self.dir / f"test_{key}.png"
            tmp = path.with_suffix(".tmp.png")
            fig.savefig(tmp, dpi=100)
            plt.close(fig)
            os.replace(tmp, path)
            paths.append(path)
        return paths

    def plot_offline_curve(self) -> Path | None:
        """offline_win_rate.png: the test win rate during pre-training, from "offline_eval" records,
        and beside it, where the records carry them, the value diagnostics on held-out dataset
        episodes: the greedy policy's agreement with the data, Q(greedy) - Q(data), and Q(data)
        against the Monte-Carlo return (an under-trained or over-conservative pre-training shows)."""
        return plot_panels(
            self.read("offline_eval"),
            "updates",
            [
                ({"win_rate": "test win rate"}, f"{self.dir.name}: pre-training (95% Wilson band)"),
                ({"greedy_agreement": "greedy = data action"}, "held-out data: agreement"),
                ({"q_greedy_minus_data": "Q(greedy) - Q(data)"}, "held-out data: value gap"),
                ({"q_data": "Q(data)", "mc_return": "Monte-Carlo return"}, "held-out data: Q vs return"),
            ],
            self.dir / "offline_win_rate.png",
            "offline updates",
            bands={"win_rate": ("win_rate_low", "win_rate_high")},
        )

    def plot_probe(self) -> Path | None:
        """probe.png: policy agreement on the probe episodes and the OVM-active fraction, online."""
        return plot_records(
            self.read("eval"),
            "env_steps",
            {"policy_agreement": "policy agreement", "ovm_active_fraction": "OVM-active fraction"},
            self.dir / "probe.png",
            "environment steps (online)",
            f"{self.dir.name}: probe episodes",
        )

    def close(self) -> None:
        self._jsonl.close()
        if self._events is not None:
            self._events.close()
            self._events = None


def eval_bands(records: list[dict]) -> dict[str, tuple[list, list, list]]:
    """The 95% interval around each eval curve as (env steps, low, high), from the records that
    carry it: the Wilson interval for "win_rate", mean +- return_ci for "return". Logs written
    before intervals were recorded have none, so they get no band."""
    bands = {}
    rows = [r for r in records if r.get("win_rate_low") is not None and r.get("win_rate_high") is not None]
    if rows:
        bands["win_rate"] = (
            [r["env_steps"] for r in rows],
            [r["win_rate_low"] for r in rows],
            [r["win_rate_high"] for r in rows],
        )
    rows = [r for r in records if r.get("return_ci") is not None]
    if rows:
        bands["return"] = (
            [r["env_steps"] for r in rows],
            [r["return"] - r["return_ci"] for r in rows],
            [r["return"] + r["return_ci"] for r in rows],
        )
    return bands


def win_rate_text(record: dict) -> str:
    """An eval record's win rate for people, with its 95% interval when the record has one."""
    text = f"{record['win_rate']:.3f}"
    if record.get("win_rate_low") is not None and record.get("win_rate_high") is not None:
        text += f" [{record['win_rate_low']:.3f}, {record['win_rate_high']:.3f}]"
    return text


class ProgressLine:
    """A periodic one-line status with rates and ETA (a new line each time, so logs stay readable).
    The rate counts the steps made since this process started from `start_steps`: a resumed job
    starts at the steps it had, which were not made in its first seconds."""

    def __init__(
        self,
        total_steps: int,
        every_s: float = 10.0,
        stream=None,
        unit: str = "env steps",
        start_steps: int = 0,
    ):
        self.total = total_steps
        self.start_steps = start_steps
        self.unit = unit
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.start = time.monotonic()
        self._last = -1e9

    def maybe_print(self, env_steps: int, force: bool = False, **fields) -> bool:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return False
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        rate = max(env_steps - self.start_steps, 0) / elapsed
        eta = max(self.total - env_steps, 0) / rate if rate > 0 else float("inf")
        parts = [f"{self.unit} {env_steps:,}/{self.total:,}", f"{rate:,.1f} {self.unit.split()[-1]}/s"]
        parts += [
            f"{k.replace('_', ' ')} {v:.3g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
            for k, v in fields.items()
        ]
        parts.append(f"ETA {format_duration(eta)}")
        print("  " + " | ".join(parts), file=self.stream, flush=True)
        return True


def format_duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def plot_records(
    records: list[dict],
    x: str,
    series: dict[str, str],
    path: Path,
    xlabel: str,
    title: str,
    bands: dict[str, tuple[str, str]] | None = None,
) -> Path | None:
    """One PNG with a line per `series` key (key -> legend label) against `x`, from `records`;
    `bands` maps a series key to the (low, high) record keys of its interval, drawn shaded. Records
    missing a key are skipped for that line. Written atomically; None when there is nothing to draw."""
    return plot_panels(records, x, [(series, title)], path, xlabel, bands)


def plot_panels(
    records: list[dict],
    x: str,
    panels: list[tuple[dict[str, str], str]],
    path: Path,
    xlabel: str,
    bands: dict[str, tuple[str, str]] | None = None,
) -> Path | None:
    """`plot_records` with several panels, two a row, each (series, title); panels with nothing to
    draw are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rows_of(key: str) -> list[dict]:
        return [r for r in records if r.get(key) is not None and r.get(x) is not None]

    drawable = [(series, title) for series, title in panels if any(rows_of(k) for k in series)]
    if not drawable:
        return None
    cols = min(2, len(drawable))  # two panels a row, so each stays readable
    rows = math.ceil(len(drawable) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat[len(drawable) :]:
        ax.set_visible(False)
    for ax, (series, title) in zip(axes.flat, drawable, strict=False):
        for key, label in series.items():
            rows = rows_of(key)
            if not rows:
                continue
            xs = [r[x] for r in rows]
            ax.plot(xs, [r[key] for r in rows], marker="o", ms=3, label=label)
            low, high = (bands or {}).get(key, (None, None))
            if low and all(low in r and high in r for r in rows):
                ax.fill_between(xs, [r[low] for r in rows], [r[high] for r in rows], alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
