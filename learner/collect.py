"""Datasets made with learned policies (the paper's recipes), for `ovmse dataset collect`:

- `checkpoint:PATH` — greedy rollouts of a learner checkpoint (with optional epsilon), the
  "medium" recipe when the checkpoint is a medium-level QMIX;
- `qmix-replay` — the online buffer at the end of a from-scratch QMIX run (the last
  `episodes` episodes), the "medium-replay" recipe.
Both write the dataset file in CFCQL's layout and its card next to it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tqdm import tqdm

from actors.rollout import RolloutWorker
from common.config import Config, resolve_config
from common.envs.factory import make_batch_env
from learner.checkpoint import load_checkpoint
from learner.learning import QMixLearner
from learner.sync_trainer import train_sync


def _finish(out: Path, attrs: dict, **card_extra):
    from replay.dataset import card_path, inspect_dataset, write_json

    summary = inspect_dataset(out)
    write_json(card_path(out), summary.card(**attrs, **card_extra))
    return summary


def collect_with_checkpoint(
    cfg: Config, checkpoint: str, out: str, episodes: int, epsilon: float, num_envs: int = 16
):
    """`episodes` rollouts of the checkpoint's agent network (epsilon-greedy) into `out`."""
    from replay.dataset import write_dataset

    if not Path(checkpoint).is_file():
        raise ValueError(f"--policy checkpoint:{checkpoint}: no such file")
    env = make_batch_env(cfg.env, num_envs)
    learner = QMixLearner(env.get_env_info(), cfg.learner, seed=cfg.run.seed)
    load_checkpoint(learner, checkpoint)
    worker = RolloutWorker(env, learner.make_agent(), exploration="epsilon_greedy", seed=cfg.env.seed)
    worker.set_weights(learner.agent_state_dict(), 1)
    worker.reset()
    collected = []
    with tqdm(total=episodes, desc=f"collect {Path(out).name}", unit="ep") as bar:
        while len(collected) < episodes:
            finished = worker.step(epsilon)
            collected += finished
            bar.update(min(len(finished), episodes - bar.n))
    attrs = {"map_name": cfg.env.map_name, "policy": f"checkpoint:{checkpoint}", "epsilon": epsilon}
    write_dataset(out, collected[:episodes], env.episode_limit, attrs=attrs)
    return _finish(Path(out), attrs)


def collect_qmix_replay(cfg: Config, out: str, episodes: int):
    """Train QMIX from scratch on cfg's map for run.online_env_steps and keep its last `episodes`
    episodes (the FIFO buffer at the end)."""
    qmix = resolve_config(map_name=cfg.env.map_name, method="qmix")
    qmix = dataclasses.replace(
        qmix,
        env=cfg.env,
        run=dataclasses.replace(
            qmix.run,
            online_env_steps=cfg.run.online_env_steps,
            run_dir=cfg.run.run_dir,
            name=f"qmix_replay_{cfg.env.map_name}",
        ),
        replay=dataclasses.replace(qmix.replay, online_capacity=episodes),
    )
    train_sync(qmix, final_test_episodes=0, dump_replay_to=out)
    attrs = {"map_name": cfg.env.map_name, "policy": "qmix-replay"}
    return _finish(Path(out), attrs, qmix_env_steps=cfg.run.online_env_steps)
