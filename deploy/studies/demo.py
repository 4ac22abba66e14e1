"""`ovmse demo` (`make demo`): the whole offline-to-online story on the lite 2s3z world.

1. collect an offline dataset with the focus-fire policy (some random actions mixed in);
2. pre-train QMIX + CQL offline on it (`ovmse pretrain`);
3. fine-tune online with OVMSE: replay server, learner, two actor processes and the evaluator
   (`ovmse run`, starting from the offline checkpoint);
4. print the offline and final test win rates and where the plots are.
Sized to finish in a few minutes on a 2-core machine (it prints how long it took); everything lands
in runs/demo/.

The options of every job that takes a configuration apply: --map and --method (2s3z and ovmse
unless given), --dataset-kind, --config FILE, --seed and --set, over the demo's own small budget
(SETTINGS), which stays unless the file or --set changes it; --print-config prints what the demo
would run. A method without pre-training (qmix) skips the dataset and pre-training; an offline-only
one (e.g. cfcql) skips fine-tuning. A run.dataset given by the file or --set that exists is used as
it is instead of collecting one; run.run_dir moves everything out of runs/demo/.

Ctrl-C or SIGTERM stops it at any step, cleanly: a dataset being written is removed, the processes
of the distributed run are stopped, and the demo exits with status 130 (143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from common.config import Config, format_config, resolve_config
from common.lifecycle import sigterm_raises
from common.run_log import format_duration, win_rate_text

DEMO_DIR = Path("runs") / "demo"
DEMO_MAP = "2s3z"
# The demo's budget for the online phase: left out for an offline-only method.
ONLINE_SETTINGS = ("run.online_env_steps", "run.eval_interval_steps", "actor.epsilon_anneal_steps")

SETTINGS = {
    "dataset_episodes": 1000,
    "dataset_epsilon": 0.2,
    "run.online_env_steps": 30_000,
    "run.eval_interval_steps": 5_000,
    # The paper anneals epsilon over the first 10% of a 1M-step run; a 30k-step demo gets the same
    # shape over its first third instead of exploring heavily throughout.
    "actor.epsilon_anneal_steps": 10_000,
    "learner.offline_updates": 400,
    "learner.batch_size": 64,
    "actor.num_actors": 2,
    "actor.envs_per_actor": 4,
    "actor.test_episodes": 64,
    "actor.final_test_episodes": 640,  # the paper's final evaluation
}


def _user_overrides(args: argparse.Namespace | None) -> list[str]:
    """OVMSE__ environment variables, --seed and --set, as `section.key=value` (in that order)."""
    from deploy.config_args import env_overrides, seed_overrides

    seed = seed_overrides(getattr(args, "seed", None))
    return [*env_overrides(), *seed, *(getattr(args, "overrides", None) or ())]


def _given(args: argparse.Namespace | None) -> dict:
    """The fields the user set ({"section.key": value}): in the --config file, the environment,
    --seed and --set."""
    from common.config.loading import parse_override, read_config_file

    given = {}
    if getattr(args, "config", None) is not None:
        for section, values in read_config_file(args.config).values.items():
            given.update({f"{section}.{key}": value for key, value in values.items()})
    given.update({f"{s}.{k}": v for s, k, v in map(parse_override, _user_overrides(args))})
    return given


def _resolve(args: argparse.Namespace | None, demo: dict, extra: dict) -> Config:
    map_given = getattr(args, "map", None) is not None or "env.map_name" in _given(args)
    if getattr(args, "config", None) is not None and not map_given:
        from common.config.loading import read_config_file

        map_given = "map" in read_config_file(args.config).preset
    return resolve_config(
        map_name=getattr(args, "map", None) or (None if map_given else DEMO_MAP),
        dataset=getattr(args, "dataset_kind", None),
        method=getattr(args, "method", None),
        file=getattr(args, "config", None),
        overrides=[
            *(f"{k}={v}" for k, v in demo.items()),
            *_user_overrides(args),
            *(f"{k}={v}" for k, v in extra.items() if "." in k),
        ],
    )


def demo_config(args: argparse.Namespace | None = None, **extra) -> tuple[Config, dict]:
    """The configuration the demo runs, and its settings: SETTINGS with `extra` (the keys without a
    dot are the demo's own, the dataset's size and exploration; "collect" says whether the demo
    collects its dataset). Order: defaults -> the preset of --map (else 2s3z), --dataset-kind and
    --method -> the demo's settings -> --config FILE -> OVMSE__ environment variables -> --seed ->
    --set -> `extra`. The demo's settings never replace the file's values, nor turn the preset's
    "none" into some: no online budget for an offline-only method, no offline updates for one that
    has none (bc, qmix), no dataset for qmix."""
    settings = {**SETTINGS, **extra}
    given = {**_given(args), **{k: v for k, v in extra.items() if "." in k}}
    base = _resolve(args, {}, extra)  # the preset, the file and the user's settings alone
    demo = {k: v for k, v in settings.items() if "." in k and k not in given}
    if base.run.online_env_steps == 0:
        demo = {k: v for k, v in demo.items() if k not in ONLINE_SETTINGS}
    if base.learner.offline_updates == 0:
        demo.pop("learner.offline_updates", None)
    run_dir = Path(str(given.get("run.run_dir", DEMO_DIR)))
    demo.setdefault("run.run_dir", str(run_dir))
    demo.setdefault("run.log_interval_s", 15)
    own = "run.dataset" not in given
    if own and base.run.dataset is not None:  # collected by the demo, named after the map
        demo["run.dataset"] = str(run_dir / f"{base.env.map_name}_heuristic.h5")
    cfg = _resolve(args, demo, extra)
    settings["collect"] = cfg.run.dataset is not None and (own or not Path(cfg.run.dataset).exists())
    return cfg, settings


def online_config(cfg: Config, checkpoint: Path | None) -> Config:
    """The fine-tuning run's configuration: the demo's, named "online", from the offline checkpoint."""
    init = str(checkpoint) if checkpoint is not None else cfg.run.init_checkpoint
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name="online", init_checkpoint=init))


def main(args: argparse.Namespace | None = None, **extra) -> int:
    """`ovmse demo`, or with --print-config the configuration it would run."""
    cfg, settings = demo_config(args, **extra)
    if getattr(args, "print_config", False):
        print(
            f"# ovmse demo: the dataset, pre-training ({cfg.run.run_dir}/pretrain) and fine-tuning "
            f"({cfg.run.run_dir}/online, from pre-training's checkpoint) run with this configuration"
        )
        print(format_config(cfg), end="")
        return 0
    with sigterm_raises():  # a Ctrl-C is never lost (in a finalizer): the demo stops where it is
        return _stages(cfg, settings)


def _stages(cfg: Config, settings: dict) -> int:
    from deploy.embedded import EmbeddedRun, execute
    from deploy.recipes import CollectRequest, collect_dataset
    from deploy.single_process import pretrain
    from learner.training import has_offline_phase

    began = time.monotonic()
    demo_dir, world, method = Path(cfg.run.run_dir), cfg.env.map_name, cfg.learner.method
    pretrains, online = has_offline_phase(cfg), cfg.run.online_env_steps > 0
    stages = ["data"] * (cfg.run.dataset is not None) + ["pretrain"] * pretrains + ["online"] * online
    number = {name: f"[{i}/{len(stages)}]" for i, name in enumerate(stages, 1)}
    print(
        f"ovmse demo: offline-to-online {method} on the lite {world} world; results in {demo_dir}/",
        flush=True,
    )

    data = None
    if settings["collect"]:
        episodes = settings["dataset_episodes"]
        print(f"\n{number['data']} collecting {episodes} episodes with the focus-fire policy", flush=True)
        request = CollectRequest(
            out=cfg.run.dataset,
            episodes=episodes,
            policy="heuristic",
            epsilon=settings["dataset_epsilon"],
            num_envs=32,
        )
        data = collect_dataset(cfg, request)
        print(
            f"      dataset: return mean {data.return_mean:.2f} (min {data.return_min:.2f}, "
            f"max {data.return_max:.2f}), win rate {data.win_rate:.3f}",
            flush=True,
        )
    elif cfg.run.dataset is not None:
        print(f"\n{number['data']} the dataset: {cfg.run.dataset} (run.dataset, as given)", flush=True)

    checkpoint = None
    if pretrains:
        updates = cfg.learner.offline_updates
        print(f"\n{number['pretrain']} offline pre-training: {updates} updates of {method}", flush=True)
        offline = pretrain(cfg, run_dir=demo_dir / "pretrain")
        checkpoint = offline.run_dir / "checkpoints" / "offline.pt"
        if not online:
            print(f"\ndemo summary (lite {world}, {method}, offline only):")
            print(f"  after offline pre-training:  test win rate {offline.final_win_rate:.3f}")
            print(f"  the demo took {format_duration(time.monotonic() - began)}")
            return 0

    print(
        f"\n{number['online']} online fine-tuning with {method} for {cfg.run.online_env_steps:,} env "
        f"steps: {cfg.actor.num_actors} actor processes, a learner, a replay server and an evaluator",
        flush=True,
    )
    run = EmbeddedRun.prepare(online_config(cfg, checkpoint))
    status = execute(run)
    if status != 0:
        return status
    evals, final = run.evals(), run.evals("final_eval")
    end = (final or evals)[-1]
    print(f"\ndemo summary (lite {world}, {method}):")
    if data is not None:
        epsilon = settings["dataset_epsilon"]
        print(f"  offline dataset (focus-fire, epsilon {epsilon}): win rate {data.win_rate:.3f}")
    start = "after offline pre-training: " if pretrains else "at the start:               "
    print(f"  {start} test win rate {win_rate_text(evals[0])} ({cfg.actor.test_episodes} episodes)")
    print(
        f"  after online fine-tuning:    test win rate {win_rate_text(end)} "
        f"({end.get('episodes', cfg.actor.test_episodes)} episodes)"
    )
    online_evals = evals[1:]
    if online_evals:
        best = max(online_evals, key=lambda e: e["win_rate"])
        print(
            f"  best online evaluation:      test win rate {win_rate_text(best)} "
            f"at {best['env_steps']:,} env steps"
        )
    offline_updates = cfg.learner.offline_updates if pretrains else 0
    print(
        f"  {run.progress().get('updates', 0) - offline_updates:,} online updates over "
        f"{cfg.run.online_env_steps:,} env steps (the paper fine-tunes for 1M); docs/learner.md compares "
        "OVMSE with Switch CQL from two demo checkpoints"
    )
    for png in sorted(run.run_dir.glob("test_*.png")):
        print(f"  plot: {png}")
    print(f"  TensorBoard: tensorboard --logdir {demo_dir}")
    print(f"  the demo took {format_duration(time.monotonic() - began)}")
    return 0
