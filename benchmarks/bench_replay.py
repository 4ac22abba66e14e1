"""Replay speed and memory: inserts, mixed 128-episode batches through the server, bytes held.

The server runs in its own process (as under `ovmse run`), so samples travel over gRPC on
loopback and its resident memory can be read from /proc. Episodes are real 3s5z episodes from the
lite world (scripted focus-fire policy with epsilon 0.3, about 66 steps each), reused round-robin.

Measured:
- episodes inserted per second by one writer, and by four writer processes at once (the episode
  writer actors use: one item per episode, flushed each time); for comparison, Reverb's
  TrajectoryWriter with a new writer per episode (it fixes column shapes at the first append);
- 128-episode batches (mixing ratio 0.1: 13 offline + 115 online) per second through
  `MixedSampler`, split into drawing from Reverb and padding into torch tensors;
- bytes the server holds per stored env step against the raw numpy bytes, and its resident memory
  for 5,000 episodes (the online table's capacity);
- the learner's CPU update for the same batch (`QMixLearner.update`, online OVM), and how much a
  prefetching sampler adds to a learner step when both share this machine's cores.

Run: `python benchmarks/bench_replay.py [--quick]`. Results: docs/bench/replay.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _report import machine, write  # noqa: E402

MAP = "3s5z"
POOL = 64  # distinct episodes, reused round-robin
BATCH = 128
MIXING = 0.1


def episode_pool(count: int = POOL, seed: int = 0) -> list:
    """Real 3s5z episodes: focus fire with epsilon 0.3 on the lite world."""
    from common.envs.lite import LiteBatchEnv
    from common.envs.maps import get_map
    from common.envs.policies import make_policy
    from common.episode import EpisodeBuilder

    env = LiteBatchEnv(MAP, num_envs=16, seed=seed)
    policy = make_policy("heuristic", env.layout, get_map(MAP), seed=seed, epsilon=0.3)
    builder = EpisodeBuilder(env.num_envs, env.n_agents, env.episode_limit)
    obs = env.reset()
    builder.start(obs.state, obs.obs, obs.avail)
    episodes: list = []
    while len(episodes) < count:
        actions = policy.act(obs.obs, obs.avail)
        step = env.step(actions)
        episodes += builder.record(actions, step)
        obs = step.next
    return episodes[:count]


def raw_bytes(episode) -> int:
    return sum(a.nbytes for a in episode.arrays().values())


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# --- child processes (JSON lines on stdout; never pickle) ---------------------------------------


def serve(online_capacity: int, offline_capacity: int) -> None:
    """A replay server with plain MinSize tables (no rate limiting: we measure raw throughput)."""
    from replay.server import ReplayServer, TableSpec
    from replay.tables import OFFLINE_TABLE, ONLINE_TABLE

    specs = (TableSpec(OFFLINE_TABLE, offline_capacity, 1), TableSpec(ONLINE_TABLE, online_capacity, 1))
    with ReplayServer(specs) as server:
        print(json.dumps({"address": server.address, "pid": os.getpid()}), flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin


def write_episodes(address: str, count: int, seed: int) -> None:
    """A writer process: build a pool, say ready, wait for "go", insert `count` episodes."""
    from replay.writer import EpisodeWriter

    pool = episode_pool(seed=seed)
    with EpisodeWriter(address) as writer:
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.time()
        for i in range(count):
            writer.write(pool[i % len(pool)])
        end = time.time()
    steps = sum(pool[i % len(pool)].length for i in range(count))
    print(json.dumps({"start": start, "end": end, "episodes": count, "steps": steps}), flush=True)


def child(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


# --- measurements --------------------------------------------------------------------------------


def insert_rate(address: str, pool: list, count: int) -> dict:
    from replay.writer import EpisodeWriter

    with EpisodeWriter(address) as writer:
        start = time.perf_counter()
        for i in range(count):
            writer.write(pool[i % len(pool)])
        seconds = time.perf_counter() - start
    steps = sum(pool[i % len(pool)].length for i in range(count))
    return {
        "episodes": count,
        "seconds": seconds,
        "episodes_per_s": count / seconds,
        "steps_per_s": steps / seconds,
    }


def trajectory_writer_rate(address: str, pool: list, count: int) -> dict:
    """Reverb's TrajectoryWriter, one writer per episode (what variable lengths force on it)."""
    from replay.tables import ONLINE_TABLE, encode_episode, import_reverb

    client = import_reverb().Client(address)
    names = [str(i) for i in range(8)]
    start = time.perf_counter()
    for i in range(count):
        columns = dict(zip(names, encode_episode(pool[i % len(pool)]), strict=True))
        with client.trajectory_writer(num_keep_alive_refs=1) as writer:
            writer.append(columns)
            writer.create_item(ONLINE_TABLE, 1.0, {k: writer.history[k][-1] for k in names})
            writer.end_episode()
    seconds = time.perf_counter() - start
    return {"episodes": count, "seconds": seconds, "episodes_per_s": count / seconds}


def parallel_insert_rate(address: str, writers: int, count_each: int) -> dict:
    procs = [child("--writer", address, str(count_each), str(seed)) for seed in range(writers)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.stdout.readline()) for proc in procs]
    finally:
        for proc in procs:
            proc.wait(timeout=120)
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    episodes = sum(r["episodes"] for r in results)
    steps = sum(r["steps"] for r in results)
    return {
        "writers": writers,
        "episodes": episodes,
        "seconds": seconds,
        "episodes_per_s": episodes / seconds,
        "steps_per_s": steps / seconds,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def keep_freed_memory() -> bool:
    """What the learner process does (glibc keeps freed blocks), so padding costs what it costs
    there; without it every batch's fresh arrays page-fault (measured: about 3x the padding time)."""
    try:
        from learner.qmix_learner import keep_freed_host_memory
    except ImportError:
        return False
    return keep_freed_host_memory()


def sampling_rate(address: str, server_pid: int, reps: int) -> dict:
    from common.episode import to_training_batch
    from replay.sampler import MixedSampler

    draw, pad, total, lengths = [], [], [], []
    with MixedSampler(address, BATCH, MIXING, prefetch_batches=0) as sampler:
        to_training_batch(sampler.sample_episodes())  # warm up connections
        client_cpu, server_cpu = time.process_time(), cpu_seconds(server_pid)
        for _ in range(reps):
            t0 = time.perf_counter()
            episodes = sampler.sample_episodes()
            t1 = time.perf_counter()
            batch = to_training_batch(episodes)
            t2 = time.perf_counter()
            draw.append(t1 - t0)
            pad.append(t2 - t1)
            total.append(t2 - t0)
            lengths.append(batch.max_seq_length)
        client_cpu = time.process_time() - client_cpu
        server_cpu = cpu_seconds(server_pid) - server_cpu
    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    return {
        "batch": BATCH,
        "mixing_ratio": MIXING,
        "reps": reps,
        "draw_ms": ms(draw),
        "pad_ms": ms(pad),
        "total_ms": ms(total),
        "batches_per_s": 1.0 / statistics.median(total),
        "padded_rows_median": statistics.median(lengths),
        "client_cpu_ms": 1000 * client_cpu / reps,
        "server_cpu_ms": 1000 * server_cpu / reps,
    }


def learner_overhead(address: str, reps: int, threads: int = 2) -> dict:
    """The learner's CPU update on sampled batches, with and without the replay path in the step.

    Each round uses one pre-sampled batch: an untimed update (same shapes for both timings), then
    (a) the update alone, with the prefetcher idle on its full queue, then (b) taking a batch from
    the prefetcher, which samples the next one in the background as in training, plus the same
    update. The difference between (b) and (a) is what the replay path adds to a learner step."""
    try:
        import torch

        from common.config.sections import LearnerConfig
        from learner.qmix_learner import QMixLearner
    except ImportError as error:
        return {"available": False, "why": str(error)}
    from replay.sampler import MixedSampler

    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    info = {"n_agents": 8, "obs_shape": 128, "state_shape": 216, "n_actions": 14, "episode_limit": 150}
    cfg = LearnerConfig(device="cpu", offline_cql="cql", online_cql_weight=0.0, use_offline_value_memory=True)
    learner = QMixLearner(info, cfg, seed=0)
    learner.freeze_offline_memory()
    with MixedSampler(address, BATCH, MIXING, prefetch_batches=0) as sampler:
        batches = [sampler.sample() for _ in range(reps)]
    alone, fed, waits, cpu = [], [], [], []
    depth = 2
    with MixedSampler(address, BATCH, MIXING, prefetch_batches=depth) as sampler:
        for batch in batches:
            while sampler.ready_batches < depth:  # (a) must not overlap the prefetcher's work
                time.sleep(0.01)
            learner.update(batch, "online", 0, 4)
            t0, c0 = time.perf_counter(), time.process_time()
            learner.update(batch, "online", 0, 4)
            alone.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            t0 = time.perf_counter()
            sampler.sample(timeout=120)
            t1 = time.perf_counter()
            learner.update(batch, "online", 0, 4)
            fed.append(time.perf_counter() - t0)
            waits.append(t1 - t0)
    median = statistics.median
    return {
        "available": True,
        "update": f"QMixLearner.update, online OVM (lambda = 1), {torch.get_num_threads()} torch threads",
        "reps": reps,
        "padded_rows": [b.max_seq_length for b in batches],
        "update_ms": 1000 * median(alone),
        "update_cpu_ms": 1000 * median(cpu),
        "step_with_prefetch_ms": 1000 * median(fed),
        "wait_for_batch_ms": 1000 * median(waits),
        "added_fraction_median": median(fed) / median(alone) - 1.0,
        "added_fraction_total": sum(fed) / sum(alone) - 1.0,
        "update_ms_all": [1000 * x for x in alone],
        "step_with_prefetch_ms_all": [1000 * x for x in fed],
    }


def markdown(results: dict, command: str) -> str:
    m = results["machine"]
    ins, par, traj = (
        results["insert_one_writer"],
        results["insert_four_writers"],
        results["trajectory_writer"],
    )
    smp, mem, lrn = results["sampling"], results["memory"], results["learner"]
    rate = lambda r: f"{r['episodes_per_s']:.0f} episodes/s ({r['steps_per_s']:.0f} env steps/s)"  # noqa: E731
    batch = (
        f"{smp['total_ms']:.1f} ms = {smp['batches_per_s']:.1f} batches/s (draw {smp['draw_ms']:.1f} ms "
        f"+ pad to torch {smp['pad_ms']:.1f} ms; padded to {smp['padded_rows_median']:.0f} rows)"
    )
    ratio = mem["raw_bytes_per_step"] / mem["bytes_per_step"]
    held = (
        f"{mem['rss_delta_mb']:.0f} MiB held ({mem['rss_after_mb']:.0f} MiB process); "
        f"{mem['rss_per_5000_mb']:.0f} MiB per 5,000 episodes"
    )
    lines = [
        "# Replay speed and memory",
        "",
        f"`{command}` — {m['cpu']}, {m['cores']} cores, {m['date']}. dm-reverb {results['reverb']}, "
        "server in its own process, clients over gRPC on loopback; real lite-world 3s5z episodes "
        f"(mean {results['episode_steps_mean']:.1f} steps). Load average {results['load_average'][0]:.2f} "
        f"before, {results['load_average'][1]:.2f} after.",
        "",
        "| what | result |",
        "|---|---|",
        f"| inserts, one writer | {rate(ins)} |",
        f"| inserts, four writer processes | {rate(par)} |",
        f"| (Reverb TrajectoryWriter, one per episode) | {traj['episodes_per_s']:.0f} episodes/s |",
        f"| sample a {smp['batch']}-episode batch (m = {smp['mixing_ratio']}) | {batch} |",
        f"| server bytes per stored env step | {mem['bytes_per_step']:.0f} B vs "
        f"{mem['raw_bytes_per_step']:.0f} B raw ({ratio:.1f}x smaller) |",
        f"| server resident memory, {mem['episodes']} episodes | {held} |",
        f"| replay CPU per batch | sampler {smp['client_cpu_ms']:.0f} ms "
        f"+ server {smp['server_cpu_ms']:.0f} ms |",
    ]
    if lrn.get("available"):
        replay_cpu = smp["client_cpu_ms"] + smp["server_cpu_ms"]
        lines += [
            f"| learner update ({lrn['update']}) | {lrn['update_ms']:.0f} ms wall, "
            f"{lrn['update_cpu_ms']:.0f} ms CPU (median of {lrn['reps']}; batches padded to "
            f"{min(lrn['padded_rows'])}-{max(lrn['padded_rows'])} rows) |",
            f"| sampling time / update time | {smp['total_ms'] / lrn['update_ms']:.1%} |",
            f"| replay CPU / update CPU | {replay_cpu / lrn['update_cpu_ms']:.1%} |",
            f"| learner step with a prefetching sampler | {lrn['step_with_prefetch_ms']:.0f} ms (waits "
            f"{lrn['wait_for_batch_ms']:.1f} ms for a batch): the replay path adds "
            f"{lrn['added_fraction_median']:+.1%} (medians; {lrn['added_fraction_total']:+.1%} in total) |",
        ]
        one = results.get("learner_one_thread", {})
        if one.get("available"):
            lines.append(
                f"| the same with 1 torch thread | update {one['update_ms']:.0f} ms; with the prefetcher "
                f"{one['step_with_prefetch_ms']:.0f} ms: {one['added_fraction_median']:+.1%} "
                f"({one['added_fraction_total']:+.1%} in total) |"
            )
    else:
        lines.append(f"| learner | not measured: {lrn.get('why')} |")
    lines += [
        "",
        "Target: sampling a 128-episode 3s5z batch well under the learner's CPU update time, and the replay "
        "path adding at most 10% to a learner step. Sampling is timed in a process where glibc keeps freed "
        "memory for reuse, as the learner sets it. "
        "Each round of the prefetch rows takes one pre-sampled batch: "
        "an untimed update, the update alone (the prefetcher idle on its full queue), then taking a batch "
        "from the prefetcher, which samples the next one in the background at a lower thread priority, "
        "plus the same update; the difference is the replay path (waiting, and sharing two cores with "
        "torch's two threads and the server). Memory is the server's resident set before and after "
        "filling the online table (Reverb keeps chunks zstd-compressed). On two cores the step overhead "
        "exceeds the replay path's share of the CPU: torch's two threads meet at every operation, so time "
        "the sampler (or anything else) takes one of the cores stalls both; with one torch thread the "
        "sampler has a core of its own and adds almost nothing, but each update is slower.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer episodes and repetitions (smoke test)")
    parser.add_argument(
        "--torch-threads", type=int, default=2, help="the learner's torch threads (default 2)"
    )
    parser.add_argument("--serve", nargs=2, type=int, metavar=("ONLINE", "OFFLINE"), help=argparse.SUPPRESS)
    parser.add_argument("--writer", nargs=3, metavar=("ADDRESS", "COUNT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    if args.writer:
        write_episodes(args.writer[0], int(args.writer[1]), int(args.writer[2]))
        return 0

    quick = args.quick
    memory_episodes = 1000 if quick else 5000
    offline_episodes = 200 if quick else 1000
    from importlib.metadata import version

    print(
        f"replay benchmark ({'quick' if quick else 'full'}): building a pool of {POOL} {MAP} episodes",
        flush=True,
    )
    load_before = os.getloadavg()[0]
    pool = episode_pool()
    steps_mean = statistics.mean(e.length for e in pool)
    server = child("--serve", "5000", str(offline_episodes))
    try:
        hello = json.loads(server.stdout.readline())
        address, pid = hello["address"], hello["pid"]
        rss_before = rss_bytes(pid)
        print(f"server {address}; one writer inserts {memory_episodes} episodes", flush=True)
        one = insert_rate(address, pool, memory_episodes)
        time.sleep(0.5)
        rss_after = rss_bytes(pid)
        stored = [pool[i % len(pool)] for i in range(memory_episodes)]
        steps = sum(e.length for e in stored)
        memory = {
            "episodes": memory_episodes,
            "env_steps": steps,
            "rss_before_mb": rss_before / 2**20,
            "rss_after_mb": rss_after / 2**20,
            "rss_delta_mb": (rss_after - rss_before) / 2**20,
            "rss_per_5000_mb": (rss_after - rss_before) / 2**20 * 5000 / memory_episodes,
            "bytes_per_step": (rss_after - rss_before) / steps,
            "raw_bytes_per_step": sum(raw_bytes(e) for e in stored) / steps,
        }
        print("four writer processes; trajectory-writer comparison", flush=True)
        four = parallel_insert_rate(address, 4, 250 if quick else 1000)
        traj = trajectory_writer_rate(address, pool, 100 if quick else 500)
        print(f"loading {offline_episodes} offline episodes; sampling {BATCH}-episode batches", flush=True)
        from replay.tables import OFFLINE_TABLE
        from replay.writer import EpisodeWriter

        with EpisodeWriter(address, OFFLINE_TABLE) as writer:
            for i in range(offline_episodes):
                writer.write(pool[(i * 7) % len(pool)])
        malloc_keeps_freed = keep_freed_memory()
        sampling = sampling_rate(address, pid, 5 if quick else 20)
        print("learner update, alone and fed by a prefetching sampler", flush=True)
        learner = learner_overhead(address, 3 if quick else 10, threads=2)
        one_thread = (
            {"available": False, "why": "quick run"} if quick else learner_overhead(address, 6, threads=1)
        )
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    results = {
        "machine": machine(),
        "reverb": version("dm-reverb"),
        "quick": quick,
        "map": MAP,
        "episode_steps_mean": steps_mean,
        "insert_one_writer": one,
        "insert_four_writers": four,
        "trajectory_writer": traj,
        "sampling": sampling,
        "malloc_keeps_freed": malloc_keeps_freed,
        "memory": memory,
        "learner": learner,
        "learner_one_thread": one_thread,
        # Other work on the machine skews every number here (torch's threads spin when a core is
        # taken): the 1-minute load average before and after the run.
        "load_average": [load_before, os.getloadavg()[0]],
    }
    command = "python benchmarks/bench_replay.py" + (" --quick" if quick else "")
    path = write("replay", {k: v for k, v in results.items() if k != "machine"}, markdown(results, command))
    print(Path(path).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
