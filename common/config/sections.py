"""The configuration, as typed dataclasses: one per section, and `Config` holding them all.

Every field has a default, and `Config()` is exactly the 3s5z / medium / ovmse preset. The paper's
per-map, per-dataset and per-method numbers live in `presets.py`; files, `--set` overrides and
validation live in `loading.py`. Sections are frozen: change one with `dataclasses.replace` (or
`loading.apply_overrides`), so that no process edits the configuration after it is resolved.

A few fields are `None` by default meaning "derived from the others"; the small pure functions at
the bottom of this module (`derived_samples_per_insert`, `rate_limit`, `batch_split`) compute them,
so every process derives the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from common.envs.layout import SMACV2_OBS_FLAGS, ObsFlags


class ConfigError(ValueError):
    """A configuration problem, as one line naming the key: `config error[ in FILE]: KEY: DETAIL`.

    `key` is the dotted key ("learner.lr") or None when the message names it itself; `source` is
    the file the offending value came from, if any."""

    def __init__(self, detail: str, *, key: str | None = None, source: str | None = None):
        self.detail = detail
        self.key = key
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source else ""
        body = f"{self.key}: {self.detail}" if self.key else self.detail
        return " ".join(f"config error{where}: {body}".splitlines())

    def with_source(self, source: str | None) -> ConfigError:
        """The same error, attributed to `source` (a file name)."""
        return ConfigError(self.detail, key=self.key, source=source)

    def __reduce__(self):  # keep key and source across processes (pickle)
        return (_config_error, (self.detail, self.key, self.source))


def _config_error(detail: str, key: str | None, source: str | None) -> ConfigError:
    return ConfigError(detail, key=key, source=source)


# Allowed values of the enumerated fields (checked in `validation.py`).
INSPO_ONLINE_ANCHORS = ("offline_policy", "policy", "behaviour")
INSPO_LOCAL_CRITICS = ("all", "turn")
# actor.inference: "auto" picks one of the others (deploy/builder.py)
ACTING_BACK_ENDS = ("auto", "torch", "numpy", "tiles")
EXPLORATIONS = ("decentralized_se", "centralized_se", "epsilon_greedy", "policy_sample")
CQL_VARIANTS = ("cql", "cfcql", "none")
CQL_SAMPLERS = ("all_actions", "available_only")
OVM_TARGETS = ("td_lambda", "one_step")
DATASET_KINDS = ("medium", "medium_replay")
PRECISIONS = ("auto", "fp32", "bf16")
# SMAC's `difficulty` strings: "1" VeryEasy ... "7" VeryHard, "8" CheatVision, "9" CheatMoney,
# "A" CheatInsane.
SMAC_DIFFICULTIES = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "A")


@dataclass(frozen=True)
class EnvConfig(ObsFlags):
    """The battle world. `backend` picks the lite simulator or real StarCraft II; every other field
    is one of SMAC's `StarCraft2Env` constructor arguments, with SMAC's name and default. The flags
    that shape observations and states are `ObsFlags`' fields (declared once there, inherited here),
    so the configuration and the worlds' layouts cannot disagree on them."""

    # "lite" (our vectorised simulator) | "sc2" (StarCraft II through SMAC) | "matrix" (one-step
    # matrix games; map_name xor or mne)
    backend: str = "lite"
    map_name: str = "3s5z"
    seed: int = 0  # base seed of the battle worlds; each actor / battle offsets it by its index
    step_mul: int = 8
    move_amount: int = 2
    difficulty: str = "7"
    continuing_episode: bool = False
    reward_sparse: bool = False
    reward_only_positive: bool = True
    reward_death_value: float = 10.0
    reward_win: float = 200.0
    reward_defeat: float = 0.0
    reward_negative_scale: float = 0.5
    reward_scale: bool = True
    reward_scale_rate: float = 20.0
    # SMACv2 (smacv2 `StarCraft2Env`'s other flags, its names and defaults; the SMACv2 presets set
    # its example configs' values). Read only on a SMACv2 map; a SMAC map keeps the defaults.
    use_unit_ranges: bool = False  # per-unit sight and shoot ranges instead of 9 and 6
    min_attack_range: float = 2.0  # the shoot range is at least this (with use_unit_ranges)
    kill_unit_step_mul: int = 2  # only for SMACv2's health capability, which the scenarios do not use
    fully_observable: bool = False
    prob_obs_enemy: float = 1.0  # the chance a teammate shares an enemy another agent saw first
    action_mask: bool = True  # False: every living enemy may be targeted, out of range ones idle
    # The scenario's capability configuration (common/envs/smacv2.py): how teams are drawn
    # ("weighted_teams" | "fixed") and start points ("surrounded_and_reflect" | "surrounded" |
    # "reflect" | "fixed"), and the probability of "reflect".
    team_gen: str = "weighted_teams"
    start_positions: str = "surrounded_and_reflect"
    start_positions_p: float = 0.5

    def smac_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `StarCraft2Env(**cfg.smac_kwargs())`: `map_name`, `seed` and the
        SMAC flags, nothing else (not `backend`). On a SMACv2 map also SMACv2's flags and its
        `capability_config` (the dict `StarCraftCapabilityEnvWrapper` takes)."""
        kwargs: dict[str, Any] = {"map_name": self.map_name, "seed": self.seed}
        kwargs.update({name: getattr(self, name) for name in SMAC_FLAGS})
        capability = self.capability()
        if capability is not None:
            kwargs.update({name: getattr(self, name) for name in SMACV2_FLAGS})
            kwargs["capability_config"] = capability.to_smacv2()
        return kwargs

    def smacv2_record(self) -> dict[str, Any] | None:
        """What a dataset of this SMACv2 scenario records of how it was made (its card's and file's
        `smacv2` entry): the capability configuration and SMACv2's flags; None on a SMAC map."""
        capability = self.capability()
        if capability is None:
            return None
        return {"capability_config": capability.to_smacv2(), **{k: getattr(self, k) for k in SMACV2_FLAGS}}

    def capability(self):
        """The SMACv2 `CapabilityConfig` of this map, None for a SMAC map (or an unknown name)."""
        from common.envs.maps import smacv2_scenario
        from common.envs.smacv2 import scenario_capability

        scenario = smacv2_scenario(self.map_name)
        if scenario is None:
            return None
        return scenario_capability(scenario, self.team_gen, self.start_positions, self.start_positions_p)

    @property
    def obs_flags(self) -> ObsFlags:
        return ObsFlags.from_env_config(self)


# SMACv2's own constructor flags, and the fields that make its capability configuration.
SMACV2_FLAGS = (
    *SMACV2_OBS_FLAGS,
    "use_unit_ranges",
    "min_attack_range",
    "kill_unit_step_mul",
    "fully_observable",
    "prob_obs_enemy",
    "action_mask",
)
CAPABILITY_FIELDS = ("team_gen", "start_positions", "start_positions_p")
# The SMAC constructor flags `EnvConfig` carries, with SMAC's exact names (see `smac_kwargs`):
# every field but the back end, the two `smac_kwargs` names first and SMACv2's.
SMAC_FLAGS = tuple(
    f.name
    for f in fields(EnvConfig)
    if f.name not in ("backend", "map_name", "seed", *SMACV2_FLAGS, *CAPABILITY_FIELDS)
)


@dataclass(frozen=True)
class ReplayConfig:
    """The replay server: an `offline` table (the dataset) and an `online` FIFO table (actors)."""

    address: str = "127.0.0.1"
    port: int = 8000  # 0 = pick a free port
    online_capacity: int = 5000  # episodes (PyMARL2 buffer_size); FIFO
    # Episodes the online table must hold before the learner samples from it. None = the learner's
    # batch size, as PyMARL's `buffer.can_sample(batch_size)`: the first update happens once a whole
    # batch worth of episodes has been collected.
    min_size_to_sample: int | None = None
    mixing_ratio: float = 0.1  # fraction of each online batch drawn from the offline table, [0, 1]
    # Online-table samples per inserted episode. None = `derived_samples_per_insert`: as many
    # gradient steps per collected episode as the synchronous algorithm, however many actors run.
    samples_per_insert: float | None = None
    # How far (in samples) inserts and samples may drift from that ratio before one side blocks
    # (Reverb's SampleToInsertRatio `error_buffer`). None = two gradient steps' worth, see
    # `rate_limit`.
    rate_limiter_error_buffer: float | None = None
    checkpoint_dir: str | None = None  # None = no replay checkpoints
    checkpoint_interval_s: float = 600.0
    prefetch_batches: int = 2  # batches the learner's sampler keeps ready (0 = sample on demand)

    @property
    def endpoint(self) -> str:
        """ "host:port" of the replay server, as clients dial it."""
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class LearnerConfig:
    """The QMIX learner and its offline (CQL) and online (OVM) losses. `method` names the preset
    the numbers came from; the learner's behaviour follows the fields, not the name."""

    method: str = "ovmse"
    lr: float = 1e-3
    gamma: float = 0.99
    td_lambda: float = 0.6
    batch_size: int = 128  # episodes per gradient step
    batch_size_run: int = 2  # episodes collected per gradient step (PyMARL's parallel envs)
    # Hard copy to the target networks every this many episodes (PyMARL counts `batch_size_run`
    # episodes per update, in the offline phase too).
    target_update_interval: int = 50
    grad_clip_offline: float = 10.0
    grad_clip_online: float = 0.5
    # The CQL variant: used by the offline phase, and online wherever `online_cql_weight` > 0.
    offline_cql: str = "cql"  # "cql" (raw MACQL) | "cfcql" | "none" (no CQL term)
    offline_cql_weight: float = 0.25
    online_cql_weight: float = 0.0
    # Cal-QL (MACal-QL) on top of the CQL variant: the current (greedy) policy's values in the
    # push-down term are floored at the Monte-Carlo return-to-go.
    calql_floor: bool = False
    # CFCQL's tau in w = softmax_i(tau * KL_i); CFCQL's cql_qmix.yaml default `softmax_temp: 5`.
    # The presets set CFCQL's per-map values.
    cfcql_softmax_temperature: float = 5.0
    # Behaviour-cloning updates before the CQL updates when CFCQL needs a behaviour policy (tau > 0);
    # frozen afterwards. CFCQL clones for a fixed 10^7 sampled transitions (its stopping flag is never
    # read): 1,000-1,400 batches of 128 at lite episode lengths (docs/learner.md). 0 = no behaviour
    # policy (w uniform).
    behaviour_pretrain_updates: int = 1000
    cql_sampled_actions: int = 100  # raw MACQL: joint actions in the logsumexp
    # Raw MACQL's joint actions: "available_only" (each agent uniform over its available actions) |
    # "all_actions" (CFCQL's raw_cql: uniform over all actions, a sample with any unavailable
    # action counts as Q_tot = 0). NOT CFCQL's: on lite 2s3z and 3s5z, the two maps where the paper
    # uses raw CQL, CFCQL's draws left pre-training at the no-CQL control's level (3s5z medium:
    # 0.002 of 640 against 0.252 for available_only, seed 0; docs/learner.md).
    cql_sampler: str = "available_only"
    use_offline_value_memory: bool = True  # OVM: y = max(Q_offline, y_TD), weighted by lambda_t
    # OVM's y_TD, in both halves of Eq. 5: "td_lambda" (PyMARL2's TD(lambda)) | "one_step" (Eq. 4).
    ovm_target: str = "td_lambda"
    memory_coef_start: float = 1.0
    memory_coef_end: float = 1.0
    memory_anneal_steps: int = 0  # environment steps of the online phase; 0 = no annealing
    # Offline pre-training gradient steps. The paper does not say; CFCQL's cql_qmix.yaml trains
    # offline until t_max = 10,050,000 sampled transitions (filled steps of 128-episode batches):
    # about 1,100-1,400 updates at lite 2s3z / 3s5z episode lengths, 1,300-3,100 at SMAC's 25-60
    # steps; 2,000 sits in that range (docs/learner.md, "Offline budget").
    offline_updates: int = 2000
    rnn_hidden_dim: int = 64
    mixing_embed_dim: int = 32
    hypernet_embed_dim: int = 64
    device: str = "auto"  # "auto" (cuda when there is one) | "cpu" | "cuda" | "cuda:N"
    # The learner's compute precision: "bf16" runs the networks' forward and backward (agent
    # sequence pass, mixer hypernetworks, target networks) in bfloat16, with fp32 master weights,
    # optimizer state, TD(lambda) recursion and loss; "fp32" does not (and allows TF32 matmuls on
    # CUDA); "auto" picks bf16 where the device has bf16 units (CPU with AMX or AVX512-BF16, CUDA
    # with bf16 support) and fp32 elsewhere. See docs/learner.md, "Precision". The default is fp32:
    # on a 2-core AMX CPU bf16 gains about 1.4-1.6x over fp32 at batch 128, but with two threads on
    # a loaded machine (a distributed run's actors share it) its small products stalled for time
    # slices, and fp32 keeps one-process runs comparable with earlier ones.
    precision: str = "fp32"
    # Updates between published weight versions. 1 keeps actors as close as possible to the
    # synchronous algorithm (which acts with the newest network); the agent network is ~40k floats.
    weight_publish_interval: int = 1
    checkpoint_interval: int = 2000  # updates between learner checkpoints; 0 = only at the end
    # Also a learner checkpoint once this many seconds have passed since the last one (0 = only by
    # updates), so a killed learner loses at most a few minutes of training.
    checkpoint_interval_s: float = 300.0
    # The learner: "qmix" (QMixLearner: QMIX with CQL / OVM, every method of the OVMSE paper) |
    # "inspo" (InSPOLearner: in-sample sequential policy optimisation, offline only; the inspo_*
    # fields below and behaviour_pretrain_updates apply to it). Defaults: docs/inspo.md.
    algorithm: str = "qmix"
    # InSPO's per-agent target pi* ~ mu^(alpha/(alpha+beta)) exp(Q_m/(alpha+beta)): alpha weighs the
    # reverse KL to the behaviour policy, beta the entropy bonus. NOT FROM THE PAPER (its values
    # could not be read): alpha + beta = 1.1 is a temperature of about one point of SMAC's scaled
    # return, beta = alpha / 10 keeps rare behaviour actions in play without flattening mu away.
    inspo_alpha: float = 1.0
    inspo_beta: float = 0.1
    # The in-sample critic's expectile (IQL): V(s) tends to the upper expectile of Q(s, a) over the
    # data's joint actions. 0.7: IQL's value for MuJoCo (NOT FROM THE PAPER).
    inspo_expectile: float = 0.7
    # Largest log-weight of weighted behaviour cloning (exponent clipping); ln 100, IQL's clamp of
    # exp(advantage) at 100 (NOT FROM THE PAPER).
    inspo_max_log_weight: float = 4.605
    # Upper clip of the teammates' importance ratio prod_j pi_j / mu_j (NOT FROM THE PAPER).
    inspo_ratio_clip: float = 10.0
    # Gradient steps of one agent's turn; an outer iteration (a fresh permutation of the agents) is
    # n_agents turns, so offline_updates / (n_agents * inspo_agent_updates) iterations run
    # (NOT FROM THE PAPER).
    inspo_agent_updates: int = 50
    # True: each agent's update sees its teammates' newest policies (those updated earlier in this
    # iteration, the rest as left by the previous one). False (an ablation): every agent sees its
    # teammates as in the data, i.e. independent regularisation toward the behaviour policy.
    inspo_sequential: bool = True
    # Online, the policy each agent's closed form is anchored to (its KL term): "offline_policy" (pi
    # as the offline phase left it, frozen at the switch beside OVM's critic memory) | "policy" (pi
    # as it is now: a mirror-descent step) | "behaviour" (mu, refitted online to the replay). Offline
    # the anchor is always mu, the dataset's behaviour. NOT FROM THE PAPER (offline only); on lite
    # 2s3z the other two anchors collapsed online (docs/inspo.md).
    inspo_online_anchor: str = "offline_policy"
    # Which local critics Q_i(tau_i, a_i) learn on each update: "all" (every agent's, so each is
    # fitted to the current data and teammates when its turn comes) | "turn" (only the agent whose
    # turn it is: each gets a fifth of the steps on a 5-agent map). NOT FROM THE PAPER; on lite
    # 2s3z, "all" gave 0.458 against "turn"'s 0.408 offline (5 seeds, docs/inspo.md).
    inspo_local_critics: str = "all"


@dataclass(frozen=True)
class ActorConfig:
    """Actor processes, their exploration and the evaluator."""

    num_actors: int = 2
    # Battles each actor steps together (one batched network call per step). Small, so the
    # episodes in flight stay few and the policy lag stays low; on real SC2 each battle is a game.
    envs_per_actor: int = 4
    # Whether the actors are numbered 0 .. num_actors-1 (`ovmse run`, `ovmse ray-launch`): the
    # learner then refuses progress reports from any other id. Compose's replicas take their ids
    # from their host names, so its file sets false and only the reports' speed is bounded.
    numbered_ids: bool = True
    exploration: str = "decentralized_se"  # | "centralized_se" | "epsilon_greedy" | "policy_sample"
    # The acting forward pass: "auto" (tiles where the CPU has AMX and the learner computes in bf16,
    # else torch) | "torch" | "numpy" | "tiles" (docs/bench/actor.md).
    inference: str = "auto"
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_anneal_steps: int = 100_000  # environment steps of the online phase, all actors together
    weight_server: str = "127.0.0.1:8001"  # host:port of the learner's weight service
    test_episodes: int = 32  # greedy episodes per evaluation (PyMARL test_nepisode)
    final_test_episodes: int = 640  # at the end of a run, as the paper reports; 0 = skip


@dataclass(frozen=True)
class RunConfig:
    """What this run is called, where it writes, how long it goes on and what it reports."""

    name: str = "ovmse_3s5z_medium"
    run_dir: str = "runs"
    seed: int = 0  # seeds the learner (torch, numpy); the worlds use env.seed
    dataset: str | None = "data/3s5z_medium.h5"  # HDF5 file of offline episodes; None = no offline data
    dataset_kind: str | None = "medium"  # "medium" | "medium_replay" | None
    online_env_steps: int = 1_000_000  # fine-tuning budget, environment steps
    # A learner checkpoint (e.g. checkpoints/offline.pt of `ovmse pretrain`) to start from instead of
    # pre-training again; None = pre-train on run.dataset first.
    init_checkpoint: str | None = None
    eval_interval_steps: int = 10_000  # PyMARL test_interval
    # Pre-training evaluates the greedy policy every this many offline updates (0 = only at the end),
    # so the offline curve shows whether it converged.
    offline_eval_interval: int = 250
    # Dataset episodes held out of pre-training (chosen by run.seed, at most 2% of the file) on which
    # every offline evaluation also logs the learner's value diagnostics (agreement with the data's
    # actions, Q(greedy) - Q(data), Q(data) against the return); 0 = none.
    offline_diagnostic_episodes: int = 64
    # The one-process trainer saves its whole state (checkpoints/trainer.pt: learner, replay, battles,
    # clocks) after an evaluation once this many seconds have passed since the last one, so a
    # stopped trial resumes there (`ovmse reproduce` does); 0 = never.
    trainer_checkpoint_interval_s: float = 300.0
    log_interval_s: float = 10.0
    metrics_port: int = 0  # Prometheus /metrics port; 0 = off
    grpc_max_message_mb: int = 64  # bound on weight messages, enforced by the learner and its receivers
    bind_address: str = "127.0.0.1"
    # `ovmse run` only, Linux: run every process in a network namespace of its own, so that no one
    # outside reaches the replay server (Reverb binds every interface and checks no token), nor the
    # metrics (deploy/private_network.py).
    private_network: bool = False
    # A file holding the token the learner's weight service asks of actors and the evaluator; made
    # with a random token if missing. OVMSE_TOKEN in the environment takes precedence. None and no
    # OVMSE_TOKEN: no token (any client that reaches bind_address is served). See common/auth.py.
    auth_token_file: str | None = None

    @property
    def path(self) -> Path:
        """This run's directory: run_dir/name."""
        return Path(self.run_dir) / self.name

    @property
    def grpc_max_message_bytes(self) -> int:
        return self.grpc_max_message_mb << 20


@dataclass(frozen=True)
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS: dict[str, type] = {
    "env": EnvConfig,
    "replay": ReplayConfig,
    "learner": LearnerConfig,
    "actor": ActorConfig,
    "run": RunConfig,
}


# --- derived quantities -----------------------------------------------------------------------


def batch_split(batch_size: int, mixing_ratio: float) -> tuple[int, int]:
    """(offline, online) episodes in one learner batch: round(m * B) from the offline table (half
    rounds up), the rest from the online table."""
    offline = min(batch_size, int(math.floor(mixing_ratio * batch_size + 0.5)))
    return offline, batch_size - offline


def derived_samples_per_insert(learner: LearnerConfig, replay: ReplayConfig) -> float:
    """Online samples per inserted episode that reproduce the synchronous algorithm: one gradient
    step of `batch_size` episodes, of which the online part comes from the online table, per
    `batch_size_run` new episodes. 0.0 when every batch is offline (mixing ratio 1)."""
    _, online = batch_split(learner.batch_size, replay.mixing_ratio)
    return online / learner.batch_size_run


class RateLimit(NamedTuple):
    """The online table's rate limiter, as Reverb's SampleToInsertRatio takes it."""

    samples_per_insert: float
    min_size_to_sample: int
    error_buffer: float


def rate_limit(cfg: Config) -> RateLimit:
    """The online table's rate limiter with the `None` fields derived.

    The error buffer defaults to two gradient steps' worth of online samples (inserts may run two
    updates ahead of the learner, or it two updates behind them), and never below Reverb's minimum
    of max(1, samples_per_insert). A samples_per_insert of 0 (mixing ratio 1: every batch comes
    from the offline table) means the online table is never sampled and needs no rate limiter."""
    spi = cfg.replay.samples_per_insert
    if spi is None:
        spi = derived_samples_per_insert(cfg.learner, cfg.replay)
    min_size = cfg.replay.min_size_to_sample
    if min_size is None:
        min_size = cfg.learner.batch_size
    error_buffer = cfg.replay.rate_limiter_error_buffer
    if error_buffer is None:
        error_buffer = max(1.0, spi, 2.0 * spi * cfg.learner.batch_size_run)
    return RateLimit(float(spi), int(min_size), float(error_buffer))
