"""How long one OMSD update takes on one CPU core, at the paper's batch (512) and network sizes, on
inputs the size of MPE's cooperative navigation (simple_spread: 3 agents, observation 18, action 5,
state 54 = the three observations side by side).

    OMP_NUM_THREADS=1 python benchmarks/bench_omsd.py [--repeats 30] [--variant sequential]

Prints the median milliseconds of one behaviour (diffusion) update, one critic update and one actor
update over `--repeats` timed calls after a few warm-up calls. Give the CPU with any figure you quote
(`lscpu`); a machine shared with other jobs reads slower.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from common.transitions import TransitionBatch
from learner.omsd_learner import OMSDConfig, OMSDLearner

N_AGENTS, OBS, ACTION, STATE = 3, 18, 5, 54  # simple_spread's sizes
BATCH = 512


def random_batch(generator: torch.Generator) -> TransitionBatch:
    obs = torch.randn(BATCH, N_AGENTS, OBS, generator=generator)
    return TransitionBatch(
        obs=obs,
        state=obs.flatten(1),
        actions=torch.rand(BATCH, N_AGENTS, ACTION, generator=generator) * 2 - 1,
        reward=torch.randn(BATCH, generator=generator),
        next_obs=obs,
        next_state=obs.flatten(1),
        terminal=torch.zeros(BATCH, dtype=torch.bool),
    )


def median_ms(update, batch: TransitionBatch, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        update(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        update(batch)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--variant", default="sequential", choices=("sequential", "independent"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    learner = OMSDLearner(N_AGENTS, OBS, STATE, ACTION, OMSDConfig(variant=args.variant, batch_size=BATCH))
    batch = random_batch(torch.Generator().manual_seed(0))
    rows = [
        ("behaviour (diffusion, all agents)", median_ms(learner.update_behaviour, batch, args.repeats)),
        ("critic (IQL)", median_ms(learner.update_critic, batch, args.repeats)),
        ("actors (all agents)", median_ms(learner.update_actors, batch, args.repeats)),
    ]
    print(f"OMSD {args.variant}, batch {BATCH}, {N_AGENTS} agents, obs {OBS}, action {ACTION}, state {STATE}")
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}"
    )
    print(f"{'update':<36}{'median ms':>10}")
    for name, ms in rows:
        print(f"{name:<36}{ms:>10.1f}")


if __name__ == "__main__":
    main()
