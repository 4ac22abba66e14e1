"""The studies' learning curves as PNG files: one line per method over env steps with a 95% band.

`plot_bands` draws them; `plot_mean_curves` is the mean over seeds with a Student's t band (the seed
study, the precision study); `plot_curves` is a reproduce sweep's median over seeds with a bootstrap
band, and its unlearning probe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from common.atomic_files import atomic_path
from common.stats import T95, Z95
from deploy.studies.bootstrap import bootstrap_ci, median
from deploy.studies.sweep import Sweep


@dataclass
class Band:
    """One line of a plot: `mid` over `steps`, shaded from `low` to `high`."""

    label: str
    steps: Sequence[float]
    mid: Sequence[float]
    low: Sequence[float]
    high: Sequence[float]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bands(
    path: Path, bands: list[Band], xlabel: str, ylabel: str, title: str, legend_fontsize: float | None = None
) -> Path:
    """One plot of `bands`, written (atomically) as a PNG to `path`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for band in bands:
        ax.plot(band.steps, band.mid, marker="o", ms=3, label=band.label)
        ax.fill_between(band.steps, band.low, band.high, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
    return path


def save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path


def plot_mean_curves(path: Path, series: dict[str, list], xlabel: str, ylabel: str, title: str) -> None:
    """One line per label: the mean over its seeds' curves ([(step, value)] each, cut to the
    shortest) with a 95% t-interval band, written as a PNG to `path`."""
    bands = []
    for label, curves in series.items():
        if not curves:
            continue
        length = min(len(c) for c in curves)
        steps = [c[0] for c in curves[0][:length]]
        values = np.array([[c[i][1] for i in range(length)] for c in curves])
        mean = values.mean(axis=0)
        n = len(curves)
        half = T95.get(n - 1, Z95) * values.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else 0 * mean
        bands.append(Band(f"{label} ({n} seeds)", steps, mean, mean - half, mean + half))
    plot_bands(path, bands, xlabel, ylabel, title)


# --- a reproduce sweep ---------------------------------------------------------------------------------


class Run(Protocol):
    """One finished online trial (`deploy.studies.report.RunRecord`): what its curves are read from."""

    start: dict | None  # the starting (offline) policy's evaluation; None for QMIX from scratch
    evals: list[dict]  # the online evaluations, in order


def aligned(records: Sequence[Run], key: str, with_start: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(env steps [k], values [seeds, k]) over the first k evaluations every seed has; the starting
    policy's evaluation first when every seed has one."""
    series = []
    for r in records:
        rows = ([r.start] if with_start and r.start is not None else []) + r.evals
        series.append([(e["env_steps"], e.get(key)) for e in rows if e.get(key) is not None])
    k = min(len(s) for s in series)
    if k == 0:
        return np.zeros(0), np.zeros((len(series), 0))
    steps = np.median(np.array([[p[0] for p in s[:k]] for s in series], dtype=float), axis=0)
    values = np.array([[p[1] for p in s[:k]] for s in series], dtype=float)
    return steps, values


def plot_curves(out: Path, sweep: Sweep, runs: dict[str, Sequence[Run]], reps: int = 500) -> list[Path]:
    """curves_win_rate.png and curves_return.png (median over seeds, 95% bootstrap band of the
    median) and curves_probe.png (the unlearning probe) in `out`."""
    written = []
    title = sweep.title
    for key, label in (("win_rate", "test win rate"), ("return", "test return")):
        lines = []
        for algorithm, records in runs.items():
            if not records:
                continue
            steps, values = aligned(records, key)
            if not values.size:
                continue
            bands = [bootstrap_ci(values[:, i][:, None], median, reps=reps) for i in range(values.shape[1])]
            mid = np.array([b.point for b in bands])
            low, high = [b.low for b in bands], [b.high for b in bands]
            lines.append(Band(f"{algorithm} ({len(records)} seeds)", steps, mid, low, high))
        written.append(
            plot_bands(
                out / f"curves_{key}.png",
                lines,
                "environment steps (online)",
                label,
                f"{title}: median over seeds, 95% bootstrap band",
                legend_fontsize=8,
            )
        )
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    drawn = False
    for algorithm, records in runs.items():
        if not records or any(r.start is None for r in records):
            continue  # from scratch: no offline policy to forget
        for ax, key in zip(axes, ("probe_q", "policy_agreement"), strict=True):
            steps, values = aligned(records, key)
            if values.size:
                ax.plot(steps, np.median(values, axis=0), marker="o", ms=3, label=algorithm)
                drawn = True
    if not drawn:  # every method from scratch: nothing was pre-trained, so no probe
        plt.close(fig)
        return written
    axes[0].set_ylabel("mean Q_tot on the starting policy's episodes")
    axes[1].set_ylabel("agreement with the starting policy")
    for ax in axes:
        ax.set_xlabel("environment steps (online)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: unlearning probe (median over seeds)")
    fig.tight_layout()
    written.append(save(fig, out / "curves_probe.png"))
    plt.close(fig)
    return written
