"""`ovmse demo` (`make demo`): the most complete real run the project can do on the lite world.

Today that is: play lite 2s3z battles with the random and the focus-fire policies, report their
win rates and returns, and plot the two return distributions. Each later stage of the pipeline
(dataset collection, offline pre-training, online OVMSE fine-tuning) extends this job as it lands.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

DEMO_MAP = "2s3z"
EPISODES = 512
NUM_ENVS = 64


def play(map_name: str, policy_name: str, episodes: int, seed: int = 0) -> dict:
    """Play `episodes` battles with a scripted policy; show a progress line with rate and ETA."""
    from common.envs.lite import LiteBatchEnv
    from common.envs.maps import get_map
    from common.envs.policies import make_policy

    env = LiteBatchEnv(map_name, num_envs=NUM_ENVS, seed=seed)
    policy = make_policy(policy_name, env.layout, get_map(map_name), seed=seed)
    obs = env.reset()
    running = np.zeros(NUM_ENVS)
    returns: list[float] = []
    steps, start, shown = 0, time.perf_counter(), 0.0
    while len(returns) < episodes:
        step = env.step(policy.act(obs.obs, obs.avail))
        steps += NUM_ENVS
        running += step.reward
        returns += [float(running[b]) for b in step.done_index]
        running[step.done_index] = 0.0
        obs = step.next
        elapsed = time.perf_counter() - start
        if elapsed - shown > 0.5 or len(returns) >= episodes:
            shown = elapsed
            done = min(len(returns), episodes)
            eta = elapsed / max(done, 1) * (episodes - done)
            print(f"\r  {policy_name:9s} {done:4d}/{episodes} episodes  {steps / elapsed:8.0f} env-steps/s"
                  f"  ETA {eta:4.1f}s", end="", flush=True)
    print()
    stats = env.get_stats()
    return {"policy": policy_name, "returns": np.array(returns[:episodes]), "win_rate": stats["win_rate"]}


def plot_returns(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 21, 43)
    for r in results:
        ax.hist(r["returns"], bins=bins, alpha=0.6, label=f"{r['policy']} (win rate {r['win_rate']:.2f})")
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def main(args: argparse.Namespace | None = None) -> int:
    out = Path("runs") / "demo"
    out.mkdir(parents=True, exist_ok=True)
    print(f"ovmse demo: scripted policies on the lite {DEMO_MAP} world ({EPISODES} battles each, "
          f"{NUM_ENVS} at a time)")
    results = [play(DEMO_MAP, name, EPISODES) for name in ("random", "heuristic")]
    png = out / f"{DEMO_MAP}_returns.png"
    plot_returns(results, png, f"lite {DEMO_MAP}: return distribution of scripted policies")
    for r in results:
        print(f"  {r['policy']:9s} win rate {r['win_rate']:.3f}  return mean {r['returns'].mean():.2f} "
              f"(min {r['returns'].min():.2f}, max {r['returns'].max():.2f})")
    print(f"  plot: {png}")
    print("  (offline pre-training and OVMSE fine-tuning join this demo as their issues land)")
    return 0
