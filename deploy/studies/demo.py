"""`ovmse demo` (`make demo`): the whole offline-to-online story on the lite 2s3z world.

1. collect an offline dataset with the focus-fire policy (some random actions mixed in);
2. pre-train QMIX + CQL offline on it (`ovmse pretrain`);
3. fine-tune online with OVMSE: replay server, learner, two actor processes and the evaluator
   (`ovmse run`, starting from the offline checkpoint);
4. print the offline and final test win rates and where the plots are.
Sized to finish in a few minutes on a 2-core machine (it prints how long it took); everything lands
in runs/demo/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common.config import resolve_config
from common.run_log import format_duration, win_rate_text

DEMO_DIR = Path("runs") / "demo"
DEMO_MAP = "2s3z"
SETTINGS = {
    "dataset_episodes": 1000,
    "dataset_epsilon": 0.2,
    "run.online_env_steps": 30_000,
    "run.eval_interval_steps": 5_000,
    # The paper anneals epsilon over the first 10% of a 1M-step run; a 30k-step demo gets the same
    # shape over its first third instead of exploring heavily throughout.
    "actor.epsilon_anneal_steps": 10_000,
    "learner.offline_updates": 400,
    # Raw MACQL over available joint actions. CFCQL's estimator (the default) samples every agent's
    # action over all actions and counts invalid joint samples as Q_tot = 0; with the paper's 2s3z
    # weight of 0.05 it left short pre-trainings on this world at a 0.0 test win rate (150 and 100
    # updates, docs/learner.md), so the demo keeps the stronger available-only estimator.
    "learner.cql_sampler": "available_only",
    "learner.batch_size": 64,
    "actor.num_actors": 2,
    "actor.envs_per_actor": 4,
    "actor.test_episodes": 64,
    "actor.final_test_episodes": 640,  # the paper's final evaluation
}


def demo_config(**extra):
    settings = {**SETTINGS, **extra}
    overrides = {k: v for k, v in settings.items() if "." in k}
    overrides.update(
        {
            "run.dataset": str(DEMO_DIR / f"{DEMO_MAP}_heuristic.h5"),
            "run.run_dir": str(DEMO_DIR),
            "run.log_interval_s": 15,
        }
    )
    cfg = resolve_config(
        map_name=DEMO_MAP,
        dataset="medium",
        method="ovmse",
        overrides=[f"{k}={v}" for k, v in overrides.items()],
    )
    return cfg, settings


def main(args: argparse.Namespace | None = None, **extra) -> int:
    from deploy.embedded import EmbeddedRun, execute
    from deploy.recipes import CollectRequest, collect_dataset
    from deploy.single_process import pretrain

    began = time.monotonic()
    cfg, settings = demo_config(**extra)
    print(
        f"ovmse demo: offline-to-online OVMSE on the lite {DEMO_MAP} world; results in {DEMO_DIR}/",
        flush=True,
    )

    print(
        f"\n[1/3] collecting {settings['dataset_episodes']} episodes with the focus-fire policy", flush=True
    )
    data = collect_dataset(
        cfg,
        CollectRequest(
            out=cfg.run.dataset,
            episodes=settings["dataset_episodes"],
            policy="heuristic",
            epsilon=settings["dataset_epsilon"],
            num_envs=32,
        ),
    )
    print(
        f"      dataset: return mean {data.return_mean:.2f} (min {data.return_min:.2f}, "
        f"max {data.return_max:.2f}), win rate {data.win_rate:.3f}",
        flush=True,
    )

    print(f"\n[2/3] offline pre-training: {cfg.learner.offline_updates} updates of QMIX + CQL", flush=True)
    offline = pretrain(cfg, run_dir=DEMO_DIR / "pretrain")
    checkpoint = offline.run_dir / "checkpoints" / "offline.pt"

    print(
        f"\n[3/3] online fine-tuning with OVMSE for {cfg.run.online_env_steps:,} env steps: "
        f"{cfg.actor.num_actors} actor processes, a learner, a replay server and an evaluator",
        flush=True,
    )
    online_cfg, _ = demo_config(**{**extra, "run.init_checkpoint": str(checkpoint), "run.name": "online"})
    online = EmbeddedRun.prepare(online_cfg)
    status = execute(online)
    if status != 0:
        return status
    evals, final = online.evals(), online.evals("final_eval")
    end = (final or evals)[-1]
    print("\ndemo summary (lite 2s3z, OVMSE):")
    print(
        f"  offline dataset (focus-fire, epsilon {settings['dataset_epsilon']}): win rate {data.win_rate:.3f}"
    )
    print(
        f"  after offline pre-training:  test win rate {win_rate_text(evals[0])} "
        f"({cfg.actor.test_episodes} episodes)"
    )
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
    print(
        f"  {online.progress().get('updates', 0) - cfg.learner.offline_updates:,} online updates over "
        f"{cfg.run.online_env_steps:,} env steps (the paper fine-tunes for 1M); docs/learner.md compares "
        "OVMSE with Switch CQL from two demo checkpoints"
    )
    for png in sorted(online.run_dir.glob("test_*.png")):
        print(f"  plot: {png}")
    print(f"  TensorBoard: tensorboard --logdir {DEMO_DIR}")
    print(f"  the demo took {format_duration(time.monotonic() - began)}")
    return 0
