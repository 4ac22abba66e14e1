"""World speed: env-steps/s of the lite world on one core with random available actions.

Env-steps counts battles advanced: one step of a batch of B battles is B env-steps. The timed part is
`LiteBatchEnv.step` alone (drawing the random actions is timed separately), for B in {1, 64, 256,
1024} on 3s5z and 27m_vs_30m. Results: docs/bench/world.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, pin_to_one_core, write  # noqa: E402

from common.envs.lite import LiteBatchEnv  # noqa: E402
from common.envs.maps import get_map  # noqa: E402
from common.envs.particles import SpreadBatchEnv  # noqa: E402
from common.envs.policies import make_policy  # noqa: E402

POLICY_MAPS = ("3m", "8m", "2s3z", "3s5z", "5m_vs_6m", "MMM2", "6h_vs_8z", "10m_vs_11m")

# Anchors measured on this project's 2-core machines (the design's figures), 3s5z.
ANCHORS = {
    "SMAClite (per-unit Python), B=1": 54,
    "JAX SMAX on CPU, B=256": 2100,
    "real SC2, one instance": "100-400",
}
TARGET_3S5Z_B256 = 20_000


def measure(map_name: str, batch: int, seconds: float, **flags) -> dict:
    env = LiteBatchEnv(map_name, num_envs=batch, seed=0, **flags)
    rng = np.random.default_rng(0)
    obs = env.reset()
    step_time = act_time = 0.0
    steps = 0
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        noise = np.where(obs.avail, rng.random(obs.avail.shape), -1.0)
        actions = noise.argmax(axis=-1)
        t1 = time.perf_counter()
        obs = env.step(actions).next
        t2 = time.perf_counter()
        act_time += t1 - t0
        step_time += t2 - t1
        steps += 1
        if t2 - start > seconds and steps >= 5:
            break
    stats = env.get_stats()
    return {
        "map": map_name,
        "batch": batch,
        "steps": steps,
        "env_steps_per_s": steps * batch / step_time,
        "with_random_actions_per_s": steps * batch / (step_time + act_time),
        "ms_per_batch_step": 1000 * step_time / steps,
        "episodes": stats["battles_game"],
        "random_win_rate": stats["win_rate"],
    }


def win_rates(map_name: str, episodes: int) -> dict:
    """Win rate and mean return of the scripted policies over `episodes` battles."""
    out = {"map": map_name}
    for name in ("random", "heuristic"):
        env = LiteBatchEnv(map_name, num_envs=64, seed=1)
        policy = make_policy(name, env.layout, get_map(map_name), seed=0)
        obs = env.reset()
        running, returns = np.zeros(64), []
        while len(returns) < episodes:
            step = env.step(policy.act(obs.obs, obs.avail))
            running += step.reward
            returns += [running[b] for b in step.done_index]
            running[step.done_index] = 0.0
            obs = step.next
        out[name] = {"win_rate": env.get_stats()["win_rate"], "mean_return": float(np.mean(returns))}
    return out


# Particle world (MPE simple_spread, continuous actions): agent-steps/s = batch steps * B * n agents.
PARTICLE_TARGET_AGENT_STEPS = 100_000  # at B=256, 3 agents, one core


def measure_particles(batch: int = 256, seconds: float = 3.0) -> dict:
    """Agent-steps/s of `SpreadBatchEnv.step` (3 agents) with uniform random actions in [0, 1]; drawing
    the actions is timed separately, as for the lite world."""
    env = SpreadBatchEnv(batch, seed=0)
    rng = np.random.default_rng(0)
    env.reset()
    step_time = act_time = 0.0
    steps = 0
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        actions = rng.random((batch, env.n_agents, env.n_actions), dtype=np.float32)
        t1 = time.perf_counter()
        env.step(actions)
        t2 = time.perf_counter()
        act_time += t1 - t0
        step_time += t2 - t1
        steps += 1
        if t2 - start > seconds and steps >= 5:
            break
    agent_steps = steps * batch * env.n_agents
    return {
        "world": "particles simple_spread",
        "batch": batch,
        "n_agents": env.n_agents,
        "steps": steps,
        "agent_steps_per_s": agent_steps / step_time,
        "with_random_actions_per_s": agent_steps / (step_time + act_time),
        "ms_per_batch_step": 1000 * step_time / steps,
    }


def particle_section(seconds: float) -> tuple[dict, list[str]]:
    """Measure the particle world at B=256 and write its markdown section."""
    row = measure_particles(256, seconds)
    speed = row["agent_steps_per_s"]
    print(f"particles   B={row['batch']:5d}  {speed:9.0f} agent-steps/s", flush=True)
    met = "met" if speed >= PARTICLE_TARGET_AGENT_STEPS else "NOT met"
    lines = [
        "",
        "## Particle world (MPE simple_spread, 3 agents, continuous actions)",
        "",
        "| B | agent-steps/s | with actions | ms per batch step |",
        "|---|---|---|---|",
        f"| {row['batch']} | {speed:,.0f} | {row['with_random_actions_per_s']:,.0f} | "
        f"{row['ms_per_batch_step']:.2f} |",
        "",
        f"Target: >= {PARTICLE_TARGET_AGENT_STEPS:,} agent-steps/s at B=256 on one core: "
        f"**{speed:,.0f}** ({met}).",
    ]
    return row, lines


# SMACv2 scenarios (teams and start points drawn per episode; sc2_gen_*.yaml flags).
SMACV2_TARGET_10V10 = 20_000  # env-steps/s, protoss_10_vs_10 at B=256, one core
QUIET_3S5Z_B256 = 32_415  # 3s5z at B=256 on an idle core of the 2-core AMD EPYC (this bench, 2026-11-21)
SMACV2_FLAGS = {"obs_own_pos": True, "use_unit_ranges": True, "min_attack_range": 2}


def smacv2_section(seconds: float, rounds: int = 3) -> tuple[list[dict], list[str]]:
    """Measure protoss 5v5 and 10v10 at B=256 (random available actions) interleaved with 3s5z in
    `rounds` rounds, and write their section: each scenario's speed as a ratio to 3s5z's in the
    same round (median over rounds), so a machine busy with other work still gives a fair ratio."""
    names = ("3s5z", "protoss_5_vs_5", "protoss_10_vs_10")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            flags = {} if name == "3s5z" else SMACV2_FLAGS
            runs[name].append(measure(name, 256, seconds / rounds, **flags))
    rows = []
    for name in names[1:]:
        ratios = [
            r["env_steps_per_s"] / base["env_steps_per_s"]
            for r, base in zip(runs[name], runs["3s5z"], strict=True)
        ]
        speeds = sorted(r["env_steps_per_s"] for r in runs[name])
        rows.append(
            {
                **runs[name][-1],
                "env_steps_per_s": speeds[len(speeds) // 2],
                "ratio_to_3s5z": float(np.median(ratios)),
            }
        )
        print(
            f"{name:16s} B=  256  {rows[-1]['env_steps_per_s']:9.0f} env-steps/s, "
            f"{rows[-1]['ratio_to_3s5z']:.2f}x 3s5z",
            flush=True,
        )
    base = sorted(r["env_steps_per_s"] for r in runs["3s5z"])[rounds // 2]
    ratio = rows[-1]["ratio_to_3s5z"]
    estimate = ratio * QUIET_3S5Z_B256
    lines = [
        "",
        "## SMACv2 scenarios (lite world, SMACv2's example-config flags)",
        "",
        f"Interleaved with 3s5z in {rounds} rounds (3s5z at B=256 in the same rounds: {base:,.0f} "
        "env-steps/s); the ratio is the median of each round's ratio to 3s5z, which holds on a busy "
        "machine where the absolute figures do not.",
        "",
        "| scenario | B | env-steps/s (median) | ratio to 3s5z, same rounds |",
        "|---|---|---|---|",
        *(
            f"| {r['map']} | {r['batch']} | {r['env_steps_per_s']:,.0f} | {r['ratio_to_3s5z']:.2f} |"
            for r in rows
        ),
        "",
        f"Target: >= {SMACV2_TARGET_10V10:,} env-steps/s on protoss_10_vs_10 at B=256 on one core. "
        f"Estimated from the ratio and 3s5z's {QUIET_3S5Z_B256:,} on an idle core of this kind of machine: "
        f"**{estimate:,.0f}** ({'met' if estimate >= SMACV2_TARGET_10V10 else 'NOT met'}, an estimate).",
    ]
    return rows, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="0.3 s per point instead of 3 s")
    args = parser.parse_args(argv)
    pinned = pin_to_one_core()
    seconds = 0.3 if args.quick else 3.0
    rows = []
    for map_name in ("3s5z", "27m_vs_30m"):
        for batch in (1, 64, 256, 1024):
            row = measure(map_name, batch, seconds)
            rows.append(row)
            print(
                f"{map_name:11s} B={batch:5d}  {row['env_steps_per_s']:9.0f} env-steps/s "
                f"({row['ms_per_batch_step']:.2f} ms per batch step)",
                flush=True,
            )
    episodes = 64 if args.quick else 300
    policies = []
    for map_name in POLICY_MAPS:
        row = win_rates(map_name, episodes)
        policies.append(row)
        print(
            f"{map_name:11s} win rate random {row['random']['win_rate']:.2f}  "
            f"heuristic {row['heuristic']['win_rate']:.2f}",
            flush=True,
        )
    target = next(r for r in rows if r["map"] == "3s5z" and r["batch"] == 256)["env_steps_per_s"]
    lines = [
        "# World speed (lite back end)",
        "",
        f"`python benchmarks/bench_world.py{' --quick' if args.quick else ''}` — {machine()['cpu']}, "
        f"one core ({pinned}), {machine()['date']}. Random available actions; env-steps/s counts "
        "battles advanced per second by `LiteBatchEnv.step` (action sampling excluded; the "
        "'with actions' column includes it).",
        "",
        "| map | B | env-steps/s | with actions | ms per batch step |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['map']} | {r['batch']} | {r['env_steps_per_s']:,.0f} | "
        f"{r['with_random_actions_per_s']:,.0f} | {r['ms_per_batch_step']:.2f} |"
        for r in rows
    ]
    lines += [
        "",
        f"Target: >= {TARGET_3S5Z_B256:,} env-steps/s on 3s5z at B=256 on one core: "
        f"**{target:,.0f}** ({'met' if target >= TARGET_3S5Z_B256 else 'NOT met'}).",
        "",
        "Anchors on the same kind of machine (3s5z): " + "; ".join(f"{k}: {v}/s" for k, v in ANCHORS.items()),
        "",
        f"## Scripted policies ({episodes} battles per cell, seed 1)",
        "",
        "| map | random win rate | random return | heuristic win rate | heuristic return |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {p['map']} | {p['random']['win_rate']:.2f} | {p['random']['mean_return']:.2f} | "
        f"{p['heuristic']['win_rate']:.2f} | {p['heuristic']['mean_return']:.2f} |"
        for p in policies
    ]
    particle_row, particle_lines = particle_section(seconds)
    lines += particle_lines
    lines.append("")
    results = {"rows": rows, "policies": policies, "pinned": pinned, "quick": args.quick}
    results["particles"] = particle_row
    smacv2_rows, smacv2_lines = smacv2_section(seconds)
    lines[-1:-1] = smacv2_lines
    results["smacv2"] = smacv2_rows
    path = write("world", results, "\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
