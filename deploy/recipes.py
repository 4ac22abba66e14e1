"""Dataset recipes, for `ovmse dataset collect` and the demo:

- `heuristic` / `random` — scripted policies (common/envs/policies.py) with optional per-agent
  random actions, recording the behaviour distribution in `probs`;
- `checkpoint:PATH` — greedy rollouts of a learner checkpoint (with optional epsilon), the
  "medium" recipe when the checkpoint is a medium-level QMIX;
- `qmix-replay` — the online buffer at the end of a from-scratch QMIX run (the last
  `episodes` episodes), the "medium-replay" recipe.
Each writes the dataset file in CFCQL's layout and its card next to it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.atomic_files import write_json
from common.config import Config, resolve_config
from common.envs.layout import ObsFlags, ObsLayout
from common.envs.maps import get_map
from common.envs.policies import make_policy, random_available
from common.episode import EpisodeBuilder
from deploy.builder import Builder
from deploy.single_process import train_sync
from replay.dataset import DatasetSummary, inspect_dataset, summarize
from replay.dataset_writer import DatasetWriter, card_path, write_dataset


def _smacv2_attrs(cfg: Config) -> dict:
    """On a SMACv2 scenario, its capability configuration and flags (a dataset of one configuration
    is refused for another); nothing on a SMAC map."""
    record = cfg.env.smacv2_record()
    return {} if record is None else {"smacv2": json.dumps(record, sort_keys=True)}


def _finish(out: Path, attrs: dict, **card_extra):
    summary = inspect_dataset(out)
    write_json(card_path(out), summary.card(**attrs, **card_extra))
    return summary


def collect_with_checkpoint(
    cfg: Config, checkpoint: str, out: str, episodes: int, epsilon: float, num_envs: int = 16
):
    """`episodes` rollouts of the checkpoint's agent network (epsilon-greedy) into `out`."""

    if not Path(checkpoint).is_file():
        raise ValueError(f"--policy checkpoint:{checkpoint}: no such file")
    builder = Builder(cfg)
    learner = builder.learner(checkpoint)
    worker = builder.collect_worker(num_envs)
    worker.set_weights(learner.agent_state_dict(), 1)
    worker.reset()
    collected = []
    with tqdm(total=episodes, desc=f"collect {Path(out).name}", unit="ep") as bar:
        while len(collected) < episodes:
            finished = worker.step(epsilon)
            collected += finished
            bar.update(min(len(finished), episodes - bar.n))
    attrs = {
        "map_name": cfg.env.map_name,
        "policy": f"checkpoint:{checkpoint}",
        "epsilon": epsilon,
        **_smacv2_attrs(cfg),
    }
    write_dataset(out, collected[:episodes], worker.env.episode_limit, attrs=attrs)
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


@dataclass(frozen=True)
class CollectRequest:
    """What `ovmse dataset collect` does: `episodes` rollouts of `policy` into `out`."""

    out: str
    episodes: int
    policy: str = "heuristic"  # "heuristic" | "random"
    epsilon: float = 0.0  # each agent takes a uniformly random available action with this probability
    num_envs: int = 16  # battles stepped together


def behaviour_probs(greedy: np.ndarray, avail: np.ndarray, epsilon: float) -> np.ndarray:
    """The distribution an epsilon-mixed policy draws from: (1 - eps) on the greedy action plus eps
    spread uniformly over the available ones. greedy [B, n] (None: uniform), avail [B, n, A]."""
    mask = np.asarray(avail).astype(np.float32)
    uniform = mask / np.maximum(mask.sum(axis=-1, keepdims=True), 1.0)
    if greedy is None:
        return uniform
    onehot = np.zeros_like(uniform)
    np.put_along_axis(onehot, np.asarray(greedy)[..., None], 1.0, axis=-1)
    return (1.0 - epsilon) * onehot + epsilon * uniform


def collect_dataset(cfg, request: CollectRequest, progress: bool = True) -> DatasetSummary:
    """Roll out a scripted policy on `cfg.env` and write the episodes to `request.out` in CFCQL's
    layout (with `probs`), then its dataset card next to it. Returns the summary."""
    if request.episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {request.episodes}")
    if not 0.0 <= request.epsilon <= 1.0:
        raise ValueError(f"--epsilon must be in [0, 1], got {request.epsilon}")
    env = Builder(cfg).batch_env(request.num_envs)
    spec = get_map(cfg.env.map_name)
    layout = getattr(env, "layout", None) or ObsLayout.for_map(spec, ObsFlags.from_env_config(cfg.env))
    # The policy acts greedily; exploration is mixed in here so that `probs` is exactly the
    # distribution each action was drawn from.
    policy = make_policy(request.policy, layout, spec, seed=cfg.env.seed, epsilon=0.0)
    rng = np.random.default_rng(cfg.env.seed + 7919)
    info = env.get_env_info()
    builder = EpisodeBuilder(env.num_envs, env.n_agents, env.episode_limit)
    step_probs: list[list[np.ndarray]] = [[] for _ in range(env.num_envs)]
    attrs = {
        "map_name": cfg.env.map_name,
        "backend": cfg.env.backend,
        "policy": request.policy,
        "epsilon": float(request.epsilon),
        "seed": int(cfg.env.seed),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **_smacv2_attrs(cfg),
    }
    writer = DatasetWriter(
        request.out,
        n_agents=info["n_agents"],
        obs_size=info["obs_shape"],
        state_size=info["state_shape"],
        n_actions=info["n_actions"],
        episode_limit=info["episode_limit"],
        attrs=attrs,
    )
    returns, lengths, won = [], [], []
    bar = tqdm(
        total=request.episodes, desc=f"collect {Path(request.out).name}", unit="ep", disable=not progress
    )
    try:
        obs = env.reset()
        builder.start(obs.state, obs.obs, obs.avail)
        while writer.episodes < request.episodes:
            if request.policy == "random":
                actions = random_available(rng, obs.avail)
                probs = behaviour_probs(None, obs.avail, 1.0)
            else:
                greedy = policy.act(obs.obs, obs.avail)
                explore = rng.random(greedy.shape) < request.epsilon
                actions = np.where(explore, random_available(rng, obs.avail), greedy)
                probs = behaviour_probs(greedy, obs.avail, request.epsilon)
            for b in range(env.num_envs):
                step_probs[b].append(probs[b])
            step = env.step(actions)
            finished = builder.record(actions, step)
            # `record` returns the ended battles' episodes in ascending battle order.
            for b, episode in zip(sorted(int(x) for x in step.done_index), finished, strict=True):
                battle_probs = np.zeros((episode.length + 1, *probs.shape[1:]), dtype=np.float32)
                battle_probs[: episode.length] = np.stack(step_probs[b])
                step_probs[b] = []
                if writer.episodes < request.episodes:
                    episode.meta.source = "offline"
                    writer.append(episode, battle_probs)
                    returns.append(episode.meta.episode_return)
                    lengths.append(episode.length)
                    won.append(episode.meta.battle_won)
                    bar.update(1)
            obs = step.next
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
        env.close()
    summary = summarize(
        path, np.array(returns), np.array(lengths), np.array(won), True, info["episode_limit"]
    )

    write_json(
        card_path(path), summary.card(**attrs, file=Path(path).name, size_bytes=Path(path).stat().st_size)
    )
    return summary
