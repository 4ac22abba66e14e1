"""OMSD update speed on one CPU core: one behaviour (diffusion), critic and actor update at batch 512.

The paper's batch (512) and network sizes, on inputs the size of MPE's cooperative navigation
(simple_spread: 3 agents, observation 18, action 5, state 54 = the three observations side by side).

    OMP_NUM_THREADS=1 python benchmarks/bench_omsd.py [--repeats 30]    # or: ovmse bench omsd

The median milliseconds of one behaviour (diffusion) update, one critic update and one actor update
of both variants over `--repeats` timed calls after a few warm-up calls. Results: docs/bench/omsd.md
and .json (with the CPU); a machine shared with other jobs reads slower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, pin_to_one_core, write  # noqa: E402

from common.transitions import TransitionBatch  # noqa: E402
from learner.omsd_learner import OMSDConfig, OMSDLearner  # noqa: E402

N_AGENTS, OBS, ACTION, STATE = 3, 18, 5, 54  # simple_spread's sizes
BATCH = 512


def random_batch(generator: torch.Generator, size: int = BATCH) -> TransitionBatch:
    obs = torch.randn(size, N_AGENTS, OBS, generator=generator)
    return TransitionBatch(
        obs=obs,
        state=obs.flatten(1),
        actions=torch.rand(size, N_AGENTS, ACTION, generator=generator) * 2 - 1,
        reward=torch.randn(size, generator=generator),
        next_obs=obs,
        next_state=obs.flatten(1),
        terminal=torch.zeros(size, dtype=torch.bool),
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


VARIANT_COLUMNS = {
    "sequential": "sequential (OMSD)",
    "independent": "independent",
    "joint": "joint (one model)",
}
UPDATE_NAMES = {
    "behaviour": "behaviour (every agent's diffusion model)",
    "critic": "critic (IQL)",
    "actors": "actors (every agent; one denoiser call each, one in all for joint)",
}


def measure(batch_size: int = BATCH, repeats: int = 30) -> dict[str, dict[str, float]]:
    """Median ms of one behaviour, critic and actor update of OMSD and its independent variant, on
    the threads torch has now."""
    batch = random_batch(torch.Generator().manual_seed(0), batch_size)
    results: dict[str, dict[str, float]] = {}
    for variant in VARIANT_COLUMNS:
        config = OMSDConfig(variant=variant, batch_size=batch_size)
        learner = OMSDLearner(N_AGENTS, OBS, STATE, ACTION, config)
        results[variant] = {
            "behaviour": median_ms(learner.update_behaviour, batch, repeats),
            "critic": median_ms(learner.update_critic, batch, repeats),
            "actors": median_ms(learner.update_actors, batch, repeats),
        }
        print(variant, {k: round(v, 1) for k, v in results[variant].items()}, flush=True)
    return results


def table_lines(results: dict[str, dict[str, float]]) -> list[str]:
    return [
        "| update | " + " | ".join(f"{title}, ms" for title in VARIANT_COLUMNS.values()) + " |",
        "|---|" + "---|" * len(VARIANT_COLUMNS),
        *(
            f"| {UPDATE_NAMES[k]} | " + " | ".join(f"{results[v][k]:.1f}" for v in VARIANT_COLUMNS) + " |"
            for k in ("behaviour", "critic", "actors")
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per update (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="3 timed calls per update instead of --repeats")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"transitions per update (default {BATCH})")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default docs/bench)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 3
    torch.set_num_threads(args.threads)
    pinned = pin_to_one_core() if args.threads == 1 else f"{args.threads} threads"
    results = measure(args.batch, args.repeats)
    m = machine()
    lines = [
        "# OMSD update speed",
        "",
        f"`python benchmarks/bench_omsd.py` — {m['cpu']}, one core ({pinned}), {m['date']}, torch "
        f"{torch.__version__}. Batch {args.batch}, simple_spread's sizes ({N_AGENTS} agents, "
        f"observation {OBS}, action {ACTION}, state {STATE}), the paper's network sizes; median of "
        f"{args.repeats} timed updates after warm-up.",
        "",
        *table_lines(results),
        "",
    ]
    path = write(
        "omsd",
        {"batch": args.batch, "repeats": args.repeats, "results_ms": results},
        "\n".join(lines),
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
