"""The sweep of `ovmse reproduce`: what it runs (its budget, methods and seeds), the plan of its
trials and each trial's configuration, and the state of its trials on disk.

A sweep is a small graph of trials, each a directory under the output directory:

    behaviour                  QMIX from scratch until a stated test win rate (the "medium" level);
                               its replay buffer at the end is the medium-replay dataset
    dataset                    medium = greedy rollouts of that policy (CFCQL's layout, with a card)
    pretrain/<loss>_s<seed>    one offline pre-training per (dataset, offline loss, seed), shared by
                               every method whose offline phase is that loss
    online/<algorithm>_s<seed> each method fine-tuned from its seed's pre-training with its preset
                               (qmix from scratch, with its own schedule), one-process trainer;
                               offline methods (inspo, bc, qmix_cql, cfcql) have none: their
                               pre-training, scored greedily at its end, is their result

A trial is finished when its directory holds `done.json` (written last, atomically, by
`deploy/studies/trials.py`). The sweep's definition is `sweep.json` in the output directory.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic_files import write_json
from common.config import Config, resolve_config
from common.config.algorithms import algorithm_spec
from common.config.presets import METHODS, map_hyperparameters, preset, preset_config

DEFAULT_METHODS = ("ovmse", "switch_cql", "macql", "macal_ql", "qmix")
SWEEP_FILE = "sweep.json"
DONE_FILE = "done.json"


class ReproduceError(ValueError):
    """Bad input to `ovmse reproduce`; the message names the flag."""


@dataclass(frozen=True)
class Budget:
    """What a sweep spends besides the online budget. The defaults fit the 2-core check
    (`--map 3m --methods ovmse,switch_cql --seeds 2 --online-steps 20000`) in a few minutes; the
    paper's values are in the comments."""

    behaviour_win_rate: float = 0.5  # QMIX from scratch stops at this test win rate ("medium") ...
    behaviour_return: float | None = None  # ... or at this test return, when given (CFCQL's 2s3z
    # medium data has mean return 12.76)
    behaviour_max_steps: int = 200_000  # ... or here, whatever it reached
    behaviour_eval_interval: int = 5_000
    behaviour_epsilon_anneal_steps: int = 50_000  # PyMARL2: 100k over a 2M run
    dataset_episodes: int = 5_000  # medium: greedy rollouts; medium-replay: buffer size (paper: 5,000)
    offline_updates: int = 500  # pre-training updates (project default 2,000 of batch 128)
    batch_size: int = 32  # episodes per gradient step, offline and online (paper: 128)
    # The learner's default too; recorded here so that a sweep's trials keep their meaning if that
    # default changes (docs/learner.md: CFCQL's all-actions draws left pre-training at no wins).
    cql_sampler: str = "available_only"
    evals: int = 10  # online evaluations over the budget (paper: every 10k of 1M = 100)
    test_episodes: int = 32  # per online evaluation (paper: 32)
    final_test_episodes: int = 640  # final policy (paper: 640)
    drop_window: int = 3  # the offline-to-online drop looks at the first k online evaluations
    target_win_rate: float = 0.5  # the table's "env steps to reach" this test win rate
    bootstrap_reps: int = 2000


# The fields of a sweep whose change makes finished trials mean something else, and the flag of each.
FLAG_OF = {
    "map_name": "--map",
    "dataset_kind": "--dataset-kind",
    "online_steps": "--online-steps",
    "dataset": "--dataset",
    "overrides": "--set",
    "budget": "the budget flags",
}


@dataclass(frozen=True)
class Sweep:
    map_name: str
    dataset_kind: str
    methods: tuple[str, ...]
    seeds: int
    online_steps: int
    mixing_ratios: tuple[float, ...] | None = None  # None: each preset's own
    dataset: str | None = None  # a given dataset file; None: made the paper's way
    overrides: tuple[str, ...] = ()  # --set, applied to every trial
    budget: Budget = field(default_factory=Budget)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Sweep:
        data = dict(data)
        data["budget"] = Budget(**data.get("budget", {}))
        data["methods"] = tuple(data["methods"])
        data["overrides"] = tuple(data.get("overrides", ()))
        if data.get("mixing_ratios") is not None:
            data["mixing_ratios"] = tuple(data["mixing_ratios"])
        return cls(**data)

    # Fields whose change makes finished trials mean something else.
    FIXED = tuple(FLAG_OF)

    @property
    def uses_dataset(self) -> bool:
        return any(METHODS[m].offline_phase for m in self.methods)

    @property
    def title(self) -> str:
        """How its tables and figures name the task: the map and its dataset, or from scratch."""
        return f"lite {self.map_name} {self.dataset_kind if self.uses_dataset else 'from scratch'}"


@dataclass(frozen=True)
class Trial:
    name: str  # also its directory under the output directory
    kind: str  # "behaviour" | "dataset" | "pretrain" | "online"
    seed: int = 0
    method: str | None = None  # online: the method; pretrain: a method whose offline phase this is
    algorithm: str | None = None  # online: its label in the results
    mixing_ratio: float | None = None  # online: None = the preset's
    needs: tuple[str, ...] = ()


# --- the plan --------------------------------------------------------------------------------


def dataset_path(out: Path, sweep: Sweep) -> Path:
    if sweep.dataset:
        return Path(sweep.dataset)
    return out / "datasets" / f"{sweep.map_name}_{sweep.dataset_kind}.h5"


@functools.lru_cache(maxsize=256)
def offline_key(map_name: str, dataset_kind: str, method: str, overrides: tuple[str, ...] = ()) -> str:
    """The offline loss a method pre-trains with ("cql", "cfcql", "cql_calql", "none" ...), after
    the sweep's `--set` learner overrides (a sweep with learner.offline_cql=none pre-trains without
    CQL, and its trials say so): methods with the same key share a pre-training."""
    learner = preset_config(map_name, dataset_kind, method).learner
    own = [text for text in overrides if text.startswith("learner.")]
    if own:
        learner = resolve_config(
            map_name=map_name, dataset=dataset_kind, method=method, overrides=own
        ).learner
    return algorithm_spec(learner.algorithm).pretraining_key(learner, METHODS[method].policy_updates)


def sweep_offline_key(sweep: Sweep, method: str) -> str:
    return offline_key(sweep.map_name, sweep.dataset_kind, method, tuple(sweep.overrides))


def algorithm_label(method: str, ratio: float | None) -> str:
    return method if ratio is None else f"{method}_m{ratio:g}"


def plan(sweep: Sweep) -> list[Trial]:
    """Every trial of the sweep, each after the trials it needs."""
    trials: list[Trial] = []
    o2o = [m for m in sweep.methods if METHODS[m].offline_phase]
    data_needs: tuple[str, ...] = ()
    if o2o and not sweep.dataset:
        trials.append(Trial("datasets/behaviour", "behaviour"))
        data_needs = ("datasets/behaviour",)
        if sweep.dataset_kind == "medium":
            trials.append(Trial("datasets/medium", "dataset", needs=data_needs))
            data_needs = ("datasets/medium",)
    keys: dict[str, str] = {}
    for method in o2o:
        keys.setdefault(sweep_offline_key(sweep, method), method)
    ratios: tuple[float | None, ...] = sweep.mixing_ratios or (None,)
    # Seed by seed, so that a sweep stopped part-way has whole seeds of every method.
    for seed in range(sweep.seeds):
        for key, method in keys.items():
            trials.append(Trial(f"pretrain/{key}_s{seed}", "pretrain", seed, method, needs=data_needs))
        for method in sweep.methods:
            if not METHODS[method].online_phase:  # an offline method: its pre-training is the trial
                continue
            if not METHODS[method].offline_phase:
                trials.append(Trial(f"online/{method}_s{seed}", "online", seed, method, method))
                continue
            key = sweep_offline_key(sweep, method)
            for ratio in ratios:
                label = algorithm_label(method, ratio)
                needs = (f"pretrain/{key}_s{seed}",)
                trials.append(Trial(f"online/{label}_s{seed}", "online", seed, method, label, ratio, needs))
    return trials


def scaled(paper_steps: int, online_steps: int, paper_budget: int) -> int:
    """A schedule length of the paper's run, scaled to this budget (e.g. epsilon's 100k of 1M)."""
    return max(1, round(paper_steps * online_steps / paper_budget)) if paper_steps else 0


def trial_config(out: Path, sweep: Sweep, trial: Trial) -> Config:
    """The resolved configuration a trial runs with: the method's preset, the sweep's budget, the
    seed, then the sweep's --set overrides."""
    b = sweep.budget
    method = trial.method or "qmix"
    settings: dict[str, object] = {
        "run.seed": trial.seed,
        "env.seed": trial.seed,
        "run.run_dir": str(out / Path(trial.name).parent),
        "run.name": Path(trial.name).name,
        "run.log_interval_s": 60,
        "learner.batch_size": b.batch_size,
        "learner.cql_sampler": b.cql_sampler,
        "actor.test_episodes": b.test_episodes,
        "actor.final_test_episodes": b.final_test_episodes,
        "run.offline_eval_interval": max(1, b.offline_updates // 2),
    }
    if trial.kind == "behaviour":
        settings.update(
            {
                "run.online_env_steps": b.behaviour_max_steps,
                "run.eval_interval_steps": b.behaviour_eval_interval,
                "actor.epsilon_anneal_steps": b.behaviour_epsilon_anneal_steps,
                "replay.online_capacity": b.dataset_episodes,
                "actor.final_test_episodes": 0,
            }
        )
    else:
        paper = preset(sweep.map_name, sweep.dataset_kind if method != "qmix" else None, method)
        paper_budget = map_hyperparameters(sweep.map_name).online_env_steps
        settings.update(
            {
                "run.online_env_steps": sweep.online_steps,
                "run.eval_interval_steps": max(1, sweep.online_steps // b.evals),
                "actor.epsilon_anneal_steps": scaled(
                    paper["actor"]["epsilon_anneal_steps"], sweep.online_steps, paper_budget
                ),
            }
        )
        anneal = paper["learner"].get("memory_anneal_steps", 0)
        if anneal:
            settings["learner.memory_anneal_steps"] = scaled(anneal, sweep.online_steps, paper_budget)
        if not METHODS[method].online_phase:  # offline methods keep their budget of 0
            del settings["run.online_env_steps"], settings["run.eval_interval_steps"]
        if METHODS[method].offline_phase:
            settings["run.dataset"] = str(dataset_path(out, sweep))
            if METHODS[method].policy_updates:  # bc: behaviour cloning only
                settings["learner.offline_updates"] = b.offline_updates
    if trial.kind == "online" and trial.needs:
        settings["run.init_checkpoint"] = str(out / trial.needs[0] / "checkpoints" / "offline.pt")
    if trial.mixing_ratio is not None:
        settings["replay.mixing_ratio"] = trial.mixing_ratio
    overrides = [f"{k}={v}" for k, v in settings.items()] + list(sweep.overrides)
    kind = None if method == "qmix" else sweep.dataset_kind
    return resolve_config(map_name=sweep.map_name, dataset=kind, method=method, overrides=overrides)


# --- the trials on disk ----------------------------------------------------------------------


def is_done(out: Path, name: str) -> bool:
    return (out / name / DONE_FILE).is_file()


def read_done(out: Path, name: str) -> dict:
    return json.loads((out / name / DONE_FILE).read_text())


def read_records(run_dir: Path, kind: str | None = None) -> list[dict]:
    """The rows of a run's metrics.jsonl (only those of `kind` when given); none when it has none."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows if kind is None else [r for r in rows if r.get("kind") == kind]


# --- the sweep file --------------------------------------------------------------------------


def load_sweep(out: Path) -> Sweep:
    return Sweep.from_json(json.loads((out / SWEEP_FILE).read_text()))


def store_sweep(out: Path, sweep: Sweep) -> None:
    """Write the sweep's definition; refuse one whose finished trials would mean something else."""
    path = out / SWEEP_FILE
    if path.exists():
        old = load_sweep(out)
        for name in Sweep.FIXED:
            if getattr(old, name) != getattr(sweep, name):
                raise ReproduceError(
                    f"{FLAG_OF[name]}: {getattr(sweep, name)!r} differs from the sweep already in {out} "
                    f"({getattr(old, name)!r}); rerun with the same values or choose another --out"
                )
    write_json(path, sweep.to_json())
