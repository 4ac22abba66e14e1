"""The paper's hyperparameters as data, and how a (map, dataset, method) picks from them.

Sources: OVMSE paper appendix A (Tables 3-7, A.4), the project's OVMSE specification, and PyMARL2 for
everything the paper leaves at PyMARL2's values. Every value that is *not* from the paper is marked
`NOT FROM THE PAPER` with the reason next to it.

`preset(map_name, dataset_kind, method)` returns the values a preset sets, as
{section: {field: value}}; `preset_config` applies them to the dataclass defaults. Maps other than
the paper's four get `OTHER_MAPS` and borrow 3s5z's rows of the per-dataset tables, so the lite
world can be run on any SMAC map; an unknown method or dataset kind is an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from common.config.problems import suggest
from common.config.sections import DATASET_KINDS, Config, ConfigError

# --- what each method does -------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """What a method toggles. All methods are QMIX-backed."""

    summary: str
    offline_phase: bool  # pre-train on the dataset (with CQL) before going online
    cql_variant: str | None  # None = the map's choice (appendix A.4: every method uses the map's CQL loss)
    online_loss: str  # "ovm" (OVM target, + online CQL where its weight is set) | "td" | "td_cql"
    exploration: str  # actor.exploration
    # Whose column of Tables 4 and 5 (mixing ratio, online CQL weight) the method takes. The OVM
    # and SE ablations have no column of their own; the paper's ablation runs (section 5.3) use
    # OVMSE's mixing ratios (0.0 on 2s3z-m and 6h_vs_8z-mr, 0.1 on 6h_vs_8z-m), so they take its.
    table_column: str | None
    calql_floor: bool = False  # Cal-QL's floor on the map's CQL loss (MACal-QL)
    algorithm: str = "qmix"  # learner.algorithm: which learner trains it
    online_phase: bool = True  # False: an offline baseline (run.online_env_steps 0)
    # False: behaviour cloning only (learner.offline_updates 0; InSPO's learner stops after cloning)
    policy_updates: bool = True


METHODS: dict[str, Method] = {
    "ovmse": Method(
        "OVM + decentralized sequential exploration",
        offline_phase=True,
        cql_variant=None,
        online_loss="ovm",
        exploration="decentralized_se",
        table_column="ovmse",
    ),
    "ovm": Method(
        "ablation: OVM + epsilon-greedy",
        offline_phase=True,
        cql_variant=None,
        online_loss="ovm",
        exploration="epsilon_greedy",
        table_column="ovmse",
    ),
    "se": Method(
        "ablation: TD only (CQL off) + decentralized SE",
        offline_phase=True,
        cql_variant=None,
        online_loss="td",
        exploration="decentralized_se",
        table_column="ovmse",
    ),
    "switch_cql": Method(
        "CQL offline, then TD only (CQL off) + epsilon-greedy",
        offline_phase=True,
        cql_variant=None,
        online_loss="td",
        exploration="epsilon_greedy",
        table_column="switch_cql",
    ),
    "macql": Method(
        "CQL offline, TD + CQL online + epsilon-greedy",
        offline_phase=True,
        cql_variant=None,
        online_loss="td_cql",
        exploration="epsilon_greedy",
        table_column="macql",
    ),
    "macal_ql": Method(
        "Cal-QL (the map's CQL loss with the floor) offline, TD + Cal-QL online + epsilon-greedy",
        offline_phase=True,
        cql_variant=None,
        online_loss="td_cql",
        exploration="epsilon_greedy",
        table_column="macal_ql",
        calql_floor=True,
    ),
    "qmix": Method(
        "QMIX from scratch with PyMARL2's settings: no offline data, TD + epsilon-greedy",
        offline_phase=False,
        cql_variant=None,
        online_loss="td",
        exploration="epsilon_greedy",
        table_column=None,
    ),
    # InSPO (arXiv 2412.07639), not an OVMSE-paper method: offline only so far. Its own numbers
    # are the inspo_* defaults of LearnerConfig (NOT FROM THE PAPER, see sections.py); no CQL, no
    # OVM; the mixing ratio and online CQL weight have no column in Tables 4-5 and are 0.
    "inspo": Method(
        "InSPO: in-sample sequential policy optimisation (offline only)",
        offline_phase=True,
        cql_variant="none",
        online_loss="td",
        exploration="epsilon_greedy",
        table_column=None,
        algorithm="inspo",
        online_phase=False,
    ),
    # InSPO fine-tuned online (our extension; the paper is offline only): its offline phase, then
    # the same updates on mixed batches with OVM's memory on its joint critic and OVMSE's SE
    # exploration and schedules (see learner/inspo_learner.py and docs/inspo.md).
    "inspo_ovm": Method(
        "InSPO offline, then InSPO online with OVM's memory on its critic + decentralized SE",
        offline_phase=True,
        cql_variant="none",
        online_loss="ovm",
        exploration="decentralized_se",
        table_column="ovmse",
        algorithm="inspo",
    ),
    # Offline baselines for InSPO's comparison (its paper's BC, QMIX+CQL and CFCQL rows): the
    # pre-training alone, with the map's Table 3 CQL weight.
    "bc": Method(
        "behaviour cloning (offline only): InSPO's recurrent behaviour policy, no policy updates",
        offline_phase=True,
        cql_variant="none",
        online_loss="td",
        exploration="epsilon_greedy",
        table_column=None,
        algorithm="inspo",
        online_phase=False,
        policy_updates=False,
    ),
    "qmix_cql": Method(
        "QMIX + CQL (offline only)",
        offline_phase=True,
        cql_variant="cql",
        online_loss="td",
        exploration="epsilon_greedy",
        table_column=None,
        online_phase=False,
    ),
    "cfcql": Method(
        "QMIX + CFCQL (offline only)",
        offline_phase=True,
        cql_variant="cfcql",
        online_loss="td",
        exploration="epsilon_greedy",
        table_column=None,
        online_phase=False,
    ),
}
METHOD_NAMES = tuple(METHODS)  # learner.method


# --- per map: Table 3, section A.4, PyMARL2 ----------------------------------------------------


@dataclass(frozen=True)
class MapHyperparameters:
    batch_size_run: int  # Table 3
    target_update_interval: int  # Table 3, episodes
    grad_clip_online: float  # Table 3 (O2O methods; QMIX keeps PyMARL2's 10)
    offline_cql: str  # appendix A.4: CQL on 2s3z and 3s5z, CFCQL on 5m_vs_6m and 6h_vs_8z
    offline_cql_weight: float  # Table 3
    online_env_steps: int  # fine-tuning budget (Figures 2-3 x-axes)
    td_lambda: float  # PyMARL2: 0.3 for 6h_vs_8z, else 0.6
    qmix_epsilon_anneal_steps: int  # PyMARL2, QMIX from scratch only: 500k for 6h_vs_8z, else 100k


MAP_HYPERPARAMETERS: dict[str, MapHyperparameters] = {
    "2s3z": MapHyperparameters(2, 50, 1.0, "cql", 0.05, 1_000_000, 0.6, 100_000),
    "3s5z": MapHyperparameters(2, 50, 0.5, "cql", 0.25, 1_000_000, 0.6, 100_000),
    "5m_vs_6m": MapHyperparameters(8, 200, 10.0, "cfcql", 50.0, 3_000_000, 0.6, 100_000),
    "6h_vs_8z": MapHyperparameters(8, 200, 10.0, "cfcql", 20.0, 3_000_000, 0.3, 500_000),
}
PAPER_MAPS = tuple(MAP_HYPERPARAMETERS)  # the maps of the paper's tables

# NOT FROM THE PAPER: any other map (3m, 8m, MMM2, 27m_vs_30m, ... on the lite world). The paper's
# small-map pairing of batch_size_run 2 with a 50-episode target interval (25 updates between target
# copies, as with 8 and 200); PyMARL2's grad clip 10, since the paper's smaller online clips were
# tuned per map; CQL with 3s5z's weight; PyMARL2's td_lambda and epsilon; a 1M-step budget.
OTHER_MAPS = MapHyperparameters(2, 50, 10.0, "cql", 0.25, 1_000_000, 0.6, 100_000)
# NOT FROM THE PAPER: other maps read the per-dataset tables below at this map's rows.
OTHER_MAPS_TABLE_ROW = "3s5z"

# NOT FROM THE PAPER: SMACv2's scenarios (protoss_5_vs_5 ... zerg_20_vs_23). OTHER_MAPS's values
# (3s5z's CQL weight and table rows, PyMARL2's grad clip, batch_size_run 2 with a 50-episode target
# interval, a 1M-step fine-tuning budget), except what SMACv2's own QMIX baselines set
# (smacv2 RUNNING_EXPERIMENTS.md, "Running SMACv2 Baselines", QMIX step 5): td_lambda 0.4 and
# epsilon annealed over 100k steps.
SMACV2_MAPS = dataclasses.replace(OTHER_MAPS, td_lambda=0.4, qmix_epsilon_anneal_steps=100_000)
# The env flags of SMACv2's example configs (smacv2/examples/configs/sc2_gen_{protoss,terran,zerg}.yaml,
# the same in all three); the rest of `env` keeps SMAC's defaults, which those files also use.
SMACV2_ENV = {
    "obs_own_pos": True,
    "conic_fov": False,
    "num_fov_actions": 12,
    "use_unit_ranges": True,
    "min_attack_range": 2.0,
    "prob_obs_enemy": 1.0,
    "action_mask": True,
}

# PyMARL2 `grad_norm_clip`: QMIX from scratch keeps every PyMARL2 value except batch_size_run and
# target_update_interval (appendix A.1).
PYMARL2_GRAD_CLIP = 10.0
# Appendix A.2 and Table 7: epsilon-greedy and SE anneal 1.0 -> 0.05 over 100k steps in every O2O task.
O2O_EPSILON = (1.0, 0.05, 100_000)
PYMARL2_EPSILON_START_END = (1.0, 0.05)

# --- per (map, dataset): Tables 4, 5, 6 --------------------------------------------------------

# Table 4: mixing ratio (fraction of each online batch from the offline data).
MIXING_RATIO: dict[tuple[str, str], dict[str, float]] = {
    # NOT FROM THE PAPER: switch_cql on 2s3z is N/A in the paper; 0.5 follows 3s5z, the nearest
    # task (same unit types, same offline CQL), where Switch CQL's best ratio was 0.5 on both datasets.
    ("2s3z", "medium"): {"ovmse": 0.0, "switch_cql": 0.5, "macal_ql": 0.5, "macql": 0.3},
    ("2s3z", "medium_replay"): {"ovmse": 0.0, "switch_cql": 0.5, "macal_ql": 0.3, "macql": 0.3},
    ("3s5z", "medium"): {"ovmse": 0.1, "switch_cql": 0.5, "macal_ql": 0.5, "macql": 0.3},
    ("3s5z", "medium_replay"): {"ovmse": 0.1, "switch_cql": 0.5, "macal_ql": 0.3, "macql": 0.3},
    ("5m_vs_6m", "medium"): {"ovmse": 0.1, "switch_cql": 0.1, "macal_ql": 0.5, "macql": 0.5},
    ("5m_vs_6m", "medium_replay"): {"ovmse": 0.0, "switch_cql": 0.3, "macal_ql": 0.5, "macql": 0.5},
    ("6h_vs_8z", "medium"): {"ovmse": 0.1, "switch_cql": 0.1, "macal_ql": 0.5, "macql": 0.5},
    ("6h_vs_8z", "medium_replay"): {"ovmse": 0.0, "switch_cql": 0.1, "macal_ql": 0.5, "macql": 0.5},
}

# Table 5: online CQL weight. MACQL and MACal-QL use the offline weight (Table 3); OVMSE uses it on
# 2s3z only; Switch CQL turns CQL off online.
ONLINE_CQL_WEIGHT: dict[tuple[str, str], dict[str, float]] = {
    # NOT FROM THE PAPER: switch_cql on 2s3z is N/A in the paper; 0.0 is what Switch CQL means
    # (CQL switched off online) and what it uses on every other task.
    ("2s3z", "medium"): {"ovmse": 0.05, "switch_cql": 0.0, "macal_ql": 0.05, "macql": 0.05},
    ("2s3z", "medium_replay"): {"ovmse": 0.05, "switch_cql": 0.0, "macal_ql": 0.05, "macql": 0.05},
    ("3s5z", "medium"): {"ovmse": 0.0, "switch_cql": 0.0, "macal_ql": 0.25, "macql": 0.25},
    ("3s5z", "medium_replay"): {"ovmse": 0.0, "switch_cql": 0.0, "macal_ql": 0.25, "macql": 0.25},
    ("5m_vs_6m", "medium"): {"ovmse": 0.0, "switch_cql": 0.0, "macal_ql": 50.0, "macql": 50.0},
    ("5m_vs_6m", "medium_replay"): {"ovmse": 0.0, "switch_cql": 0.0, "macal_ql": 50.0, "macql": 50.0},
    ("6h_vs_8z", "medium"): {"ovmse": 0.0, "switch_cql": 0.0, "macal_ql": 20.0, "macql": 20.0},
    ("6h_vs_8z", "medium_replay"): {"ovmse": 0.0, "switch_cql": 0.0, "macal_ql": 20.0, "macql": 20.0},
}


# CFCQL's softmax temperature tau (agent weights w = softmax_i(tau * KL_i)), from CFCQL's README
# (thu-rllab/CFCQL), the maps where the paper uses CFCQL.
CFCQL_SOFTMAX_TEMPERATURE: dict[tuple[str, str], float] = {
    ("5m_vs_6m", "medium"): 0.5,
    ("5m_vs_6m", "medium_replay"): 0.5,
    ("6h_vs_8z", "medium"): 1.0,
    ("6h_vs_8z", "medium_replay"): 0.5,
    # 2s3z: CFCQL's README table for its own 2s3z runs (the OVMSE paper uses raw CQL there; the
    # value is read only when CFCQL is switched on, e.g. by the cfcql baseline).
    ("2s3z", "medium"): 0.5,
    ("2s3z", "medium_replay"): 0.1,
    # NOT FROM THE PAPER (nor from CFCQL's README): 3s5z never reads tau unless CFCQL is switched on
    # by hand; then it gets CFCQL's cql_qmix.yaml default `softmax_temp: 5`.
    ("3s5z", "medium"): 5.0,
    ("3s5z", "medium_replay"): 5.0,
}


# CFCQL's own weight where the OVMSE paper's map uses raw CQL (Table 3's weight is raw CQL's): from
# CFCQL's README table for 2s3z. Elsewhere CFCQL takes Table 3's weight.
CFCQL_WEIGHT_ON_CQL_MAPS: dict[tuple[str, str], float] = {
    ("2s3z", "medium"): 0.1,
    ("2s3z", "medium_replay"): 5.0,
}


@dataclass(frozen=True)
class MemoryCoefficient:
    """OVM's lambda_t = max(end, start - (start - end) * t / anneal_steps); anneal_steps 0 = constant."""

    start: float
    end: float
    anneal_steps: int  # environment steps of the online phase


# Table 6: memory coefficient and its annealing, for the methods with OVM (ovmse, ovm).
MEMORY_COEFFICIENT: dict[tuple[str, str], MemoryCoefficient] = {
    ("2s3z", "medium"): MemoryCoefficient(1.0, 1.0, 0),
    ("2s3z", "medium_replay"): MemoryCoefficient(1.0, 1.0, 0),
    ("3s5z", "medium"): MemoryCoefficient(1.0, 1.0, 0),
    ("3s5z", "medium_replay"): MemoryCoefficient(1.0, 1.0, 0),
    ("5m_vs_6m", "medium"): MemoryCoefficient(1.0, 0.1, 200_000),
    ("5m_vs_6m", "medium_replay"): MemoryCoefficient(1.0, 0.05, 200_000),
    ("6h_vs_8z", "medium"): MemoryCoefficient(1.0, 0.05, 100_000),
    ("6h_vs_8z", "medium_replay"): MemoryCoefficient(1.0, 0.05, 100_000),
}


# --- resolution --------------------------------------------------------------------------------


def map_hyperparameters(map_name: str) -> MapHyperparameters:
    """Table 3's column for a paper map; `SMACV2_MAPS` for a SMACv2 scenario; `OTHER_MAPS` for
    any other map."""
    if map_name in MAP_HYPERPARAMETERS:
        return MAP_HYPERPARAMETERS[map_name]
    return SMACV2_MAPS if _is_smacv2(map_name) else OTHER_MAPS


def _is_smacv2(map_name: str) -> bool:
    from common.envs.maps import smacv2_scenario

    return smacv2_scenario(map_name) is not None


def env_preset(map_name: str) -> dict[str, Any]:
    """The `env` values a preset sets: the map, and SMACv2's example-config flags on its scenarios."""
    return {"map_name": map_name, **(SMACV2_ENV if _is_smacv2(map_name) else {})}


def _offline_cql_weight(variant: str, hp: MapHyperparameters, row: tuple[str, str]) -> float:
    """Table 3's weight, except CFCQL on a map where the paper uses raw CQL (CFCQL's own table)."""
    if variant == "none":
        return 0.0
    if variant == "cfcql" and hp.offline_cql == "cql" and row in CFCQL_WEIGHT_ON_CQL_MAPS:
        return CFCQL_WEIGHT_ON_CQL_MAPS[row]
    return hp.offline_cql_weight


def table_row(map_name: str, dataset_kind: str) -> tuple[str, str]:
    """The (map, dataset) row of Tables 4-6 a task reads: its own, or 3s5z's for other maps."""
    return (map_name if map_name in MAP_HYPERPARAMETERS else OTHER_MAPS_TABLE_ROW, dataset_kind)


def default_dataset_path(map_name: str, dataset_kind: str) -> str:
    """Where a preset looks for the offline data: CFCQL's file naming `{map}_{kind}.h5` under data/."""
    return f"data/{map_name}_{dataset_kind}.h5"


def preset(map_name: str, dataset_kind: str | None, method: str) -> dict[str, dict[str, Any]]:
    """The values the preset for (map, dataset, method) sets, as {section: {field: value}}.

    `dataset_kind` may be None only for `qmix` (no offline data)."""
    if method not in METHODS:
        raise ConfigError(
            f"no preset for method {method!r}{suggest(method, METHODS)}; expected one of {_names(METHODS)}",
            key="learner.method",
        )
    if dataset_kind is not None and dataset_kind not in DATASET_KINDS:
        raise ConfigError(
            f"no preset for dataset kind {dataset_kind!r} (expected one of {_names(DATASET_KINDS)})",
            key="run.dataset_kind",
        )
    if not map_name:
        raise ConfigError("a map name is required", key="env.map_name")
    spec = METHODS[method]
    hp = map_hyperparameters(map_name)
    learner: dict[str, Any] = {
        "method": method,
        "td_lambda": hp.td_lambda,
        "batch_size_run": hp.batch_size_run,
        "target_update_interval": hp.target_update_interval,
    }
    actor: dict[str, Any] = {"exploration": spec.exploration}
    run: dict[str, Any] = {"online_env_steps": hp.online_env_steps, "dataset_kind": dataset_kind}

    if not spec.offline_phase:  # QMIX from scratch: PyMARL2's settings, no offline data
        learner.update(
            grad_clip_online=PYMARL2_GRAD_CLIP,
            offline_cql="none",
            offline_cql_weight=0.0,
            online_cql_weight=0.0,
            offline_updates=0,
            use_offline_value_memory=False,
        )
        start, end = PYMARL2_EPSILON_START_END
        actor.update(epsilon_start=start, epsilon_end=end, epsilon_anneal_steps=hp.qmix_epsilon_anneal_steps)
        run.update(dataset=None, name=_run_name(method, map_name, dataset_kind))
        return {
            "env": env_preset(map_name),
            "replay": {"mixing_ratio": 0.0},
            "learner": learner,
            "actor": actor,
            "run": run,
        }

    if dataset_kind is None:
        raise ConfigError(
            f"method {method!r} needs an offline dataset kind ({_names(DATASET_KINDS)})",
            key="run.dataset_kind",
        )
    row = table_row(map_name, dataset_kind)
    column = spec.table_column
    memory = MEMORY_COEFFICIENT[row]
    online_cql = (
        ONLINE_CQL_WEIGHT[row][column]
        if column and spec.online_loss in ("ovm", "td_cql") and spec.cql_variant != "none"
        else 0.0
    )
    learner.update(
        algorithm=spec.algorithm,
        grad_clip_online=hp.grad_clip_online,
        offline_cql=spec.cql_variant or hp.offline_cql,
        calql_floor=spec.calql_floor,
        cfcql_softmax_temperature=CFCQL_SOFTMAX_TEMPERATURE[row],
        offline_cql_weight=_offline_cql_weight(spec.cql_variant or hp.offline_cql, hp, row),
        online_cql_weight=online_cql,
        use_offline_value_memory=spec.online_loss == "ovm",
        # Table 6's schedule for every O2O method: only OVM methods use it, and switching OVM on
        # for another method then gives the paper's schedule.
        memory_coef_start=memory.start,
        memory_coef_end=memory.end,
        memory_anneal_steps=memory.anneal_steps,
    )
    start, end, steps = O2O_EPSILON
    actor.update(epsilon_start=start, epsilon_end=end, epsilon_anneal_steps=steps)
    run.update(
        dataset=default_dataset_path(map_name, dataset_kind), name=_run_name(method, map_name, dataset_kind)
    )
    if not spec.online_phase:  # an offline method: no online budget
        run["online_env_steps"] = 0
    if not spec.policy_updates:
        learner["offline_updates"] = 0
    replay = {"mixing_ratio": MIXING_RATIO[row][column] if column else 0.0}
    return {"env": env_preset(map_name), "replay": replay, "learner": learner, "actor": actor, "run": run}


def preset_config(map_name: str, dataset_kind: str | None, method: str) -> Config:
    """The dataclass defaults with the preset applied (not validated; see `loading.resolve_config`)."""
    values = preset(map_name, dataset_kind, method)
    cfg = Config()
    return dataclasses.replace(
        cfg, **{name: dataclasses.replace(getattr(cfg, name), **fields) for name, fields in values.items()}
    )


def _run_name(method: str, map_name: str, dataset_kind: str | None) -> str:
    return "_".join(part for part in (method, map_name, dataset_kind) if part)


def _names(names: Any) -> str:
    return ", ".join(names)
