"""Pre-trainings that another sweep already finished, taken into this one instead of run again
(`ovmse reproduce --pretrained-from DIR`).

A pre-training depends on its dataset, offline loss, offline budget, seed and `--set` values, not
on the online budget that follows it: a short sweep and a long one over the same data, or sweeps of
one seed each, can share them. The test is the sweep's own rule for sharing: the other sweep's
finished trial, resolved as if it belonged to this sweep (this sweep's online budget and this
trial's method, its own seed, dataset, budget and `--set` values), must give this trial's
configuration in every field but where the run is written. It is then copied whole (into a
temporary directory, renamed into place), and its done.json says where it came from.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from common.atomic_files import write_json
from deploy.studies.sweep import (
    DONE_FILE,
    SWEEP_FILE,
    ReproduceError,
    Sweep,
    Trial,
    is_done,
    load_sweep,
    plan,
    sweep_offline_key,
    trial_config,
)

PLACE_FIELDS = ("run.run_dir", "run.name")  # where a run is written, not what it computes
ONLINE_BUDGET_FIELDS = ("evals", "drop_window", "target_win_rate", "bootstrap_reps")


def flat_fields(config) -> dict[str, object]:
    """A resolved configuration as {"section.field": value}, without the fields of its place."""
    fields = {
        f"{section}.{name}": value
        for section, values in dataclasses.asdict(config).items()
        for name, value in values.items()
    }
    for name in PLACE_FIELDS:
        fields.pop(name, None)
    return fields


def as_if_in(source: Sweep, sweep: Sweep) -> Sweep:
    """The source sweep with this sweep's online budget and methods: what is left to differ is what
    a pre-training reads."""
    budget = dataclasses.replace(
        source.budget, **{name: getattr(sweep.budget, name) for name in ONLINE_BUDGET_FIELDS}
    )
    return dataclasses.replace(
        source,
        methods=sweep.methods,
        online_steps=sweep.online_steps,
        mixing_ratios=sweep.mixing_ratios,
        budget=budget,
    )


def check_sources(sources: list[Path]) -> None:
    """Refuse, before anything is written, a --pretrained-from that is not a sweep's directory."""
    for source in sources:
        if not (source / SWEEP_FILE).is_file():
            raise ReproduceError(f"--pretrained-from {source}: no sweep there ({SWEEP_FILE} is missing)")


def finished_pretrainings(source: Path) -> tuple[Sweep, list[Trial]]:
    check_sources([source])
    other = load_sweep(source)
    return other, [t for t in plan(other) if t.kind == "pretrain" and is_done(source, t.name)]


def differences(mine: dict[str, object], theirs: dict[str, object]) -> list[str]:
    return [
        f"{key} {theirs.get(key)!r} (here {mine.get(key)!r})" for key in mine if mine[key] != theirs.get(key)
    ]


def adopt_pretrainings(out: Path, sweep: Sweep, sources: list[Path]) -> list[str]:
    """Copy into `out` every pre-training of `sweep` that is not finished there and that one of the
    `sources` (other sweeps' directories) finished with the same configuration. Returns a line per
    pre-training: where it came from, or why none was taken (the nearest candidate's differences)."""
    offers = []  # (source directory, its sweep as if it were this one, a finished pre-training)
    for source in sources:
        other, finished = finished_pretrainings(source)
        offers += [(source, as_if_in(other, sweep), candidate) for candidate in finished]
    lines = []
    for trial in plan(sweep):
        if trial.kind != "pretrain" or is_done(out, trial.name):
            continue
        key = sweep_offline_key(sweep, trial.method)
        mine = flat_fields(trial_config(out, sweep, trial))
        found, nearest = None, None
        for source, here, candidate in offers:
            if sweep_offline_key(here, trial.method) != key or not candidate.name.startswith(
                f"pretrain/{key}_s"
            ):
                continue
            theirs = flat_fields(
                trial_config(source, here, dataclasses.replace(candidate, method=trial.method))
            )
            missing = differences(mine, theirs)
            if not missing:
                found = source / candidate.name
                break
            if nearest is None or len(missing) < len(nearest[1]):
                nearest = (source / candidate.name, missing)
        if found:
            copy_trial(found, out / trial.name, trial)
            lines.append(f"{trial.name}: taken from {found}")
        elif nearest:
            lines.append(
                f"{trial.name}: runs here; nearest, {nearest[0]}, differs in {'; '.join(nearest[1][:3])}"
            )
    return lines


def copy_trial(source: Path, destination: Path, trial: Trial) -> None:
    """The finished trial directory `source` as `destination`, whole or not at all (whatever an
    unfinished attempt left there is replaced); its done.json names `trial`, and the source's own
    name, seed and method under "adopted_from"."""
    partial = destination.with_name(f".{destination.name}.adopting")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    done = json.loads((partial / DONE_FILE).read_text())
    origin = {key: done.get(key) for key in ("trial", "seed", "method")}
    done.update(
        trial=trial.name, seed=trial.seed, method=trial.method, adopted_from={"dir": str(source), **origin}
    )
    write_json(partial / DONE_FILE, done)
    shutil.rmtree(destination, ignore_errors=True)
    partial.rename(destination)
