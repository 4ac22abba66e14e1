"""Runs in the mpe2 test environment (.venv-mpe2), not in the project's: plays the real mpe2
simple_spread_v3 (continuous actions) and writes what happened to an .npz file (no pickles).

    trace_tool.py OUT.npz --seed S --envs K --steps T [--agents N] [--action-seed A] [--low L --high H]

Env k is `simple_spread_v3.parallel_env(N=N, continuous_actions=True)` reset with seed S + k, then
stepped T times with float32 actions drawn uniformly from [L, H] (default [0, 1]; a wider range
exercises mpe2's clipping) by `numpy.random.default_rng(A)`, reset without a seed whenever an
episode is truncated. Arrays, for env k and step t:

    actions [K, T, N, 5]       what every agent was given
    obs_before [K, T, N, O]    what the agents saw before acting (after a reset: the new start)
    state_before [K, T, N*O]   env.state() then
    obs_after [K, T, N, O]     what the step returned (the last observation of a truncated episode)
    reward [K, T, N]           each agent's reward of the step
    truncated [K, T]           the step ended the episode by the time limit
    agent_pos_after, agent_vel_after, landmark_pos [K, T, N, 2]  the world after the step
    start_agent_pos, start_landmark_pos [K, E, N, 2]  the positions of each episode's start
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import numpy as np  # noqa: E402
from mpe2 import simple_spread_v3  # noqa: E402
from pettingzoo.utils.env_logger import EnvLogger  # noqa: E402


def positions(env, kind: str) -> np.ndarray:
    world = env.unwrapped.world
    entities = world.agents if kind.startswith("agent") else world.landmarks
    field = "p_vel" if kind.endswith("vel") else "p_pos"
    return np.array([getattr(e.state, field) for e in entities])


def play(seed: int, agents: int, actions: np.ndarray) -> dict[str, np.ndarray]:
    env = simple_spread_v3.parallel_env(N=agents, continuous_actions=True)
    obs, _ = env.reset(seed=seed)
    out: dict[str, list] = {key: [] for key in ("obs_before", "state_before", "obs_after", "reward")}
    out.update({key: [] for key in ("truncated", "agent_pos_after", "agent_vel_after", "landmark_pos")})
    starts: list[tuple[np.ndarray, np.ndarray]] = [(positions(env, "agent"), positions(env, "landmark"))]
    names = list(env.possible_agents)
    for step_actions in actions:
        out["obs_before"].append([obs[name] for name in names])
        out["state_before"].append(env.state())
        obs, rewards, terminations, truncations, _ = env.step(dict(zip(names, step_actions, strict=True)))
        assert not any(terminations.values()), "simple_spread never terminates by default"
        out["obs_after"].append([obs[name] for name in names])
        out["reward"].append([rewards[name] for name in names])
        out["truncated"].append(all(truncations.values()))
        out["agent_pos_after"].append(positions(env, "agent"))
        out["agent_vel_after"].append(positions(env, "agent_vel"))
        out["landmark_pos"].append(positions(env, "landmark"))
        if out["truncated"][-1]:
            obs, _ = env.reset()
            starts.append((positions(env, "agent"), positions(env, "landmark")))
    env.close()
    arrays = {key: np.asarray(value) for key, value in out.items()}
    arrays["start_agent_pos"] = np.array([a for a, _ in starts])
    arrays["start_landmark_pos"] = np.array([lm for _, lm in starts])
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--envs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--action-seed", type=int, default=0)
    parser.add_argument("--low", type=float, default=0.0)
    parser.add_argument("--high", type=float, default=1.0)
    args = parser.parse_args()
    EnvLogger.suppress_output()  # mpe2 warns on every clipped action; the trace records them anyway
    rng = np.random.default_rng(args.action_seed)
    shape = (args.envs, args.steps, args.agents, 5)
    actions = rng.uniform(args.low, args.high, shape).astype(np.float32)
    plays = [play(args.seed + k, args.agents, actions[k]) for k in range(args.envs)]
    arrays = {key: np.stack([p[key] for p in plays]) for key in plays[0]}
    arrays["actions"] = actions
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, args.out)
    print(
        f"mpe2 traced {args.envs} envs x {args.steps} steps, {int(arrays['truncated'].sum())} episodes ended"
    )


if __name__ == "__main__":
    main()
