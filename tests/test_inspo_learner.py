"""The InSPO learner: its outer loop, what each step may change, checkpoints, configuration, and
that only the builder makes it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from common.config import resolve_config
from common.config.sections import Config, ConfigError, EnvConfig, LearnerConfig, RunConfig
from common.envs.matrix import dataset_episodes
from common.episode import to_training_batch
from deploy.builder import Builder
from learner.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from learner.inspo_learner import InSPOLearner
from replay.local import LocalReplay

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(
    device="cpu",
    algorithm="inspo",
    use_offline_value_memory=False,
    rnn_hidden_dim=8,
    batch_size=16,
    behaviour_pretrain_updates=3,
    inspo_agent_updates=2,
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def matrix_learner(**learner) -> tuple[InSPOLearner, LocalReplay]:
    cfg = Config(
        env=EnvConfig(backend="matrix", map_name="mne"),
        learner=dataclasses.replace(LearnerConfig(), **{**SMALL, **learner}),
        run=RunConfig(dataset=None, seed=0),
    )
    built = Builder(cfg).learner()
    assert isinstance(built, InSPOLearner)
    replay = LocalReplay(
        dataset_episodes("mne", "balanced", 64), batch_size=16, mixing_ratio=1.0, online_capacity=1, seed=0
    )
    return built, replay


def pretrained(**learner) -> tuple[InSPOLearner, LocalReplay]:
    learner_, replay = matrix_learner(**learner)
    while learner_.needs_behaviour_pretraining:
        learner_.pretrain_behaviour(replay.sample())
    return learner_, replay


def test_policy_updates_wait_for_the_behaviour_policy_in_either_phase():
    learner, replay = matrix_learner()
    for phase in ("offline", "online"):
        with pytest.raises(RuntimeError, match="behaviour-cloning"):
            learner.update(replay.sample(), phase, 0, 0)
    with pytest.raises(ValueError, match="phase"):
        learner.update(replay.sample(), "warmup", 0, 0)


def test_every_policy_starts_as_the_behaviour_policy_which_is_then_frozen():
    learner, replay = pretrained()
    batch = to_training_batch(replay.offline[:4])
    assert torch.allclose(
        learner.action_probabilities(batch), learner.action_probabilities(batch, behaviour=True)
    )
    assert not any(p.requires_grad for p in learner.behaviour.parameters())


def test_each_iteration_gives_every_agent_one_turn_in_a_fresh_random_order():
    learner, replay = pretrained(inspo_agent_updates=2)
    iterations = 12
    turns = [learner.update(replay.sample(), "offline", 0, 0) for _ in range(iterations * 2 * 2)]
    agents = [int(m["agent"]) for m in turns]
    orders = []
    for k in range(iterations):
        steps = agents[4 * k : 4 * k + 4]
        assert steps[0] == steps[1] and steps[2] == steps[3]  # a turn is inspo_agent_updates steps
        assert sorted({steps[0], steps[2]}) == [0, 1]  # one turn per agent
        assert [int(m["iteration"]) for m in turns[4 * k : 4 * k + 4]] == [k] * 4
        orders.append((steps[0], steps[2]))
    assert len(set(orders)) == 2  # both orders occur: the permutation is drawn afresh


def test_an_update_changes_only_the_policy_of_the_agent_whose_turn_it_is():
    learner, replay = pretrained()
    before = [{k: v.clone() for k, v in agent.state_dict().items()} for agent in learner.policies.agents]
    m = int(learner.update(replay.sample(), "offline", 0, 0)["agent"])
    for i, agent in enumerate(learner.policies.agents):
        same = all(torch.equal(before[i][k], v) for k, v in agent.state_dict().items())
        assert same == (i != m)


@pytest.mark.parametrize("local_critics", ["turn", "all"])
def test_an_update_trains_the_local_critic_of_the_agent_whose_turn_it_is_or_of_every_agent(local_critics):
    learner, replay = pretrained(inspo_local_critics=local_critics)
    before = [{k: v.clone() for k, v in agent.state_dict().items()} for agent in learner.local_q.agents]
    m = int(learner.update(replay.sample(), "offline", 0, 0)["agent"])
    for i, agent in enumerate(learner.local_q.agents):
        changed = not all(torch.equal(before[i][k], v) for k, v in agent.state_dict().items())
        assert changed == (local_critics == "all" or i == m), i


def test_a_resumed_learner_makes_exactly_the_update_the_uninterrupted_one_makes(tmp_path):
    learner, replay = pretrained()
    for _ in range(3):
        learner.update(replay.sample(), "offline", 0, 0)
    path = save_checkpoint(learner, tmp_path / "inspo.pt", extra={"phase": "offline"})
    batches = [replay.sample() for _ in range(3)]
    expected = [learner.update(b, "offline", 0, 0) for b in batches]
    resumed, _ = matrix_learner()
    assert load_checkpoint(resumed, path) == {"phase": "offline"}
    assert [resumed.update(b, "offline", 0, 0) for b in batches] == expected
    assert read_checkpoint(path)[0]["algorithm"] == "inspo"


# --- online fine-tuning ------------------------------------------------------------------------


def critic_targets_by_hand(learner: InSPOLearner, batch, gamma: float):
    """(Q(s, a), r + gamma (1 - terminated) V(s'), the mask) of the learner's critic, by hand."""
    critic = learner.critic
    with torch.no_grad():
        q = critic.q(torch.cat([batch.state[:, :-1], joint_one_hot(batch, learner.n_actions)], dim=-1))
        next_v = critic.v(batch.state[:, 1:])
    target = batch.reward[:, :-1] + gamma * (1.0 - batch.terminated[:, :-1]) * next_v
    filled, terminated = batch.filled.float(), batch.terminated.float()
    after_end = torch.cat([torch.zeros_like(terminated[:, :1]), terminated[:, :-2]], dim=1)
    mask = filled[:, :-1] * filled[:, 1:] * (1.0 - after_end)  # nothing after a true end
    return q, target, mask


def joint_one_hot(batch, n_actions: int) -> torch.Tensor:
    actions = batch.actions[:, :-1, :, 0]  # [B, T, n]
    return torch.nn.functional.one_hot(actions, n_actions).float().flatten(2)


def test_online_the_critic_regresses_on_the_offline_memorys_floor_of_its_td_target():
    learner, replay = pretrained(use_offline_value_memory=True, memory_coef_start=1.0, memory_coef_end=1.0)
    learner.freeze_offline_memory()
    with torch.no_grad():  # a memory that remembers more value than the critic now bootstraps
        learner.offline_critic.q[-1].bias.add_(5.0)
    batch = replay.sample()
    q, target, mask = critic_targets_by_hand(learner, batch, learner.cfg.gamma)
    with torch.no_grad():
        q_offline = learner.offline_critic.q(
            torch.cat([batch.state[:, :-1], joint_one_hot(batch, learner.n_actions)], dim=-1)
        )
    floor = torch.maximum(q_offline, target)
    expected = float(0.5 * ((q - floor) ** 2 * mask).sum() / mask.sum())
    expected_td = float(0.5 * ((q - target) ** 2 * mask).sum() / mask.sum())
    metrics = learner.update(batch, "online", env_steps=0, episodes_seen=0)
    assert metrics["loss_ovm"] == pytest.approx(expected, rel=1e-5)
    assert metrics["loss_td"] == pytest.approx(expected_td, rel=1e-5)
    active = float(((q_offline > target).float() * mask).sum() / mask.sum())
    assert metrics["ovm_active_fraction"] == pytest.approx(active)
    assert metrics["ovm_active_fraction"] > 0.5 and metrics["memory_coefficient"] == 1.0


def test_online_without_the_memory_the_critic_regresses_on_its_td_target_alone():
    learner, replay = pretrained()
    batch = replay.sample()
    q, target, mask = critic_targets_by_hand(learner, batch, learner.cfg.gamma)
    metrics = learner.update(batch, "online", env_steps=0, episodes_seen=0)
    expected = float(0.5 * ((q - target) ** 2 * mask).sum() / mask.sum())
    assert metrics["loss_q"] == pytest.approx(expected, rel=1e-5)
    assert metrics["loss_ovm"] == 0.0 and learner.offline_critic is None


def test_online_the_behaviour_policy_keeps_learning_from_the_batches_offline_it_is_frozen():
    learner, replay = pretrained()
    before = {k: v.clone() for k, v in learner.behaviour.state_dict().items()}
    learner.update(replay.sample(), "offline", 0, 0)
    assert all(torch.equal(before[k], v) for k, v in learner.behaviour.state_dict().items())
    metrics = learner.update(replay.sample(), "online", 0, 0)
    assert metrics["loss_bc"] > 0
    assert not all(torch.equal(before[k], v) for k, v in learner.behaviour.state_dict().items())


def spy_on_the_anchor(monkeypatch) -> dict:
    """What the next policy step's weights are computed from: {"anchor": log anchor(a), "mu": log mu(a)}
    at the batch's actions of the agent whose turn it is."""
    from learner import inspo

    seen = {}
    real = inspo.anchored_log_weights

    def spy(q_taken, value, log_anchor_taken, log_mu_taken, alpha, beta):
        seen.update(anchor=log_anchor_taken.clone(), mu=log_mu_taken.clone())
        return real(q_taken, value, log_anchor_taken, log_mu_taken, alpha, beta)

    monkeypatch.setattr(inspo, "anchored_log_weights", spy)
    return seen


def test_the_policy_anchor_is_pi_as_it_is_corrected_by_the_replays_behaviour(monkeypatch):
    learner, replay = pretrained(inspo_online_anchor="policy")
    for _ in range(4):  # move pi away from mu first
        learner.update(replay.sample(), "offline", 0, 0)
    seen = spy_on_the_anchor(monkeypatch)
    batch = replay.sample()
    pi_before = learner.action_probabilities(batch)
    m = int(learner.update(batch, "online", 0, 0)["agent"])
    taken = batch.actions[:, :-1, m]
    expected_anchor = pi_before[:, :, m].gather(-1, taken).log()
    mu_after_its_step = learner.action_probabilities(batch, behaviour=True)[:, :, m].gather(-1, taken).log()
    assert torch.allclose(seen["anchor"], expected_anchor, atol=1e-5)  # pi_m as it was, not mu
    assert torch.allclose(seen["mu"], mu_after_its_step, atol=1e-5)  # mu after this update's BC step
    assert not torch.allclose(seen["anchor"], seen["mu"], atol=1e-3)


@pytest.mark.parametrize("anchor", ["offline_policy", "behaviour"])
def test_online_the_anchor_is_the_offline_policy_by_default_or_the_behaviour_policy(monkeypatch, anchor):
    learner, replay = pretrained(**({} if anchor == "offline_policy" else {"inspo_online_anchor": anchor}))
    for _ in range(4):  # pi moves away from mu
        learner.update(replay.sample(), "offline", 0, 0)
    probe = replay.sample()
    pi_at_switch = learner.action_probabilities(probe)
    for _ in range(4):  # online updates move pi away from where the offline phase left it
        learner.update(replay.sample(), "online", 0, 0)
    seen = spy_on_the_anchor(monkeypatch)
    pi_now = learner.action_probabilities(probe)
    m = int(learner.update(probe, "online", 0, 0)["agent"])
    taken = probe.actions[:, :-1, m]
    if anchor == "offline_policy":  # frozen at the switch, not pi as it is now
        assert torch.allclose(seen["anchor"], pi_at_switch[:, :, m].gather(-1, taken).log(), atol=1e-5)
        assert not torch.allclose(seen["anchor"], pi_now[:, :, m].gather(-1, taken).log(), atol=1e-3)
    else:  # mu after this update's behaviour-cloning step
        assert torch.allclose(seen["anchor"], seen["mu"])


def test_the_offline_memory_survives_a_checkpoint(tmp_path):
    learner, replay = pretrained(use_offline_value_memory=True)
    learner.freeze_offline_memory()
    learner.update(replay.sample(), "online", 0, 0)
    path = save_checkpoint(learner, tmp_path / "online.pt")
    resumed, _ = matrix_learner(use_offline_value_memory=True)
    load_checkpoint(resumed, path)
    for name in ("offline_critic", "offline_policies"):  # the critic's memory and the policy anchor
        memory, restored = getattr(learner, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(memory[k], restored[k]) for k in memory), name
    assert not any(p.requires_grad for p in resumed.offline_critic.parameters())
    batch = replay.sample()
    assert resumed.update(batch, "online", 10, 0) == learner.update(batch, "online", 10, 0)


def test_a_qmix_checkpoint_is_refused(tmp_path):
    cfg = Config(env=EnvConfig(backend="matrix", map_name="mne"), learner=LearnerConfig(device="cpu"))
    path = save_checkpoint(Builder(cfg).learner(), tmp_path / "qmix.pt")
    learner, _ = matrix_learner()
    with pytest.raises(CheckpointError, match=r"qmix\.pt: "):  # one line, naming the file
        load_checkpoint(learner, path)


def test_the_learner_trains_on_recurrent_lite_battles_with_masks():
    cfg = resolve_config(
        "3m",
        "medium",
        "inspo",
        overrides=["learner.device=cpu", "learner.rnn_hidden_dim=8", "learner.behaviour_pretrain_updates=1"],
    )
    builder = Builder(cfg)
    episodes = builder.collect_worker(4).run_episodes(4, epsilon=1.0)
    learner = builder.learner()
    batch = to_training_batch(episodes)
    learner.pretrain_behaviour(batch)
    metrics = learner.update(batch, "offline", 0, 0)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    probs = learner.action_probabilities(batch)
    assert probs.shape == (4, batch.max_seq_length - 1, 3, learner.n_actions)
    unavailable = ~batch.avail_actions[:, :-1]
    filled = batch.filled[:, :-1, 0].bool()
    assert (probs[filled][unavailable[filled]] < 1e-6).all()  # no mass on unavailable actions


def test_inspo_ovm_fine_tunes_online_in_the_one_process_trainer(tmp_path):
    from deploy.single_process import train_sync
    from replay.dataset_writer import write_dataset

    small = ["learner.device=cpu", "learner.rnn_hidden_dim=8", "learner.batch_size=4"]
    collect = Builder(resolve_config("3m", "medium", "inspo", overrides=small))
    episodes = collect.collect_worker(8).run_episodes(16, epsilon=1.0)
    limit = collect.env_info["episode_limit"]
    dataset = write_dataset(tmp_path / "3m_random.h5", episodes, episode_limit=limit)
    cfg = resolve_config("3m", "medium", "inspo_ovm", overrides=[
        *small, f"run.dataset={dataset}", f"run.run_dir={tmp_path}", "learner.behaviour_pretrain_updates=2",
        "learner.offline_updates=2", "run.online_env_steps=300", "run.eval_interval_steps=150",
        "actor.test_episodes=4", "actor.final_test_episodes=4", "actor.epsilon_anneal_steps=100",
        "learner.memory_anneal_steps=100", "learner.memory_coef_end=0.5",
    ])  # fmt: skip
    result = train_sync(cfg, progress=False)
    assert result.online_env_steps >= 300 and result.updates > 2  # online updates after the offline two
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert evals[0]["env_steps"] == 0 and evals[-1]["env_steps"] >= 150
    assert all(r.get("probe_q") is not None for r in evals)  # the unlearning probe reads InSPO's critic
    trained = [r for r in rows if r["kind"] == "train"]
    assert all(r["loss_bc"] > 0 and 0.5 <= r["memory_coefficient"] <= 1.0 for r in trained)


def test_bc_pretraining_scores_the_cloned_policy_it_saves(tmp_path):
    """bc makes no policy updates after cloning; its final evaluation must still play the cloned
    policy (the one in its checkpoint), not the evaluator's initial weights."""
    from actors.evaluator import evaluate
    from deploy.recipes import CollectRequest, collect_dataset
    from deploy.single_process import pretrain
    from learner.checkpoint import load_checkpoint

    dataset = tmp_path / "3m_heuristic.h5"  # focus fire: a policy worth cloning
    cfg = resolve_config("3m", "medium", "bc", overrides=[
        "learner.device=cpu", "learner.rnn_hidden_dim=16", "learner.batch_size=16", f"run.dataset={dataset}",
        f"run.run_dir={tmp_path}", "learner.behaviour_pretrain_updates=60",
        "actor.test_episodes=8", "actor.final_test_episodes=8",
    ])  # fmt: skip
    collect_dataset(cfg, CollectRequest(out=str(dataset), episodes=64, policy="heuristic", epsilon=0.0,
                                        num_envs=16), progress=False)  # fmt: skip
    result = pretrain(cfg, progress=False)
    builder = Builder(cfg)
    learner, worker = builder.learner(), builder.eval_worker()
    load_checkpoint(learner, result.run_dir / "checkpoints" / "offline.pt")
    worker.set_weights(learner.agent_state_dict(), 1)
    again = evaluate(worker, 8)  # the same seeded test battles, with the saved policy
    assert result.final_return == pytest.approx(again.mean_return)
    untrained = builder.eval_worker()
    untrained.set_weights(builder.learner().agent_state_dict(), 1)
    assert evaluate(untrained, 8).mean_return != pytest.approx(again.mean_return)  # the test can tell


# ---------------------------------------------------------------------------- configuration


def test_the_inspo_preset_turns_off_cql_and_the_offline_memory_and_picks_the_inspo_learner():
    cfg = resolve_config("3m", "medium", "inspo")
    learner = cfg.learner
    assert learner.algorithm == "inspo" and learner.method == "inspo"
    assert learner.offline_cql == "none" and learner.offline_cql_weight == 0.0
    assert not learner.use_offline_value_memory
    assert cfg.replay.mixing_ratio == 0.0
    assert cfg.run.dataset == "data/3m_medium.h5"
    assert cfg.run.online_env_steps == 0  # offline only; inspo_ovm fine-tunes online
    assert resolve_config("3m", "medium", "ovmse").learner.algorithm == "qmix"


def test_inspo_may_act_by_sampling_its_policy():
    cfg = resolve_config("3m", "medium", "inspo_ovm", overrides=["actor.exploration=policy_sample"])
    assert cfg.actor.exploration == "policy_sample"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learner.algorithm=ppo", "learner.algorithm: must be one of qmix, inspo, got 'ppo'"),
        ("learner.inspo_alpha=-0.1", "learner.inspo_alpha: must be >= 0, got -0.1"),
        ("learner.inspo_beta=-1", "learner.inspo_beta: must be >= 0, got -1.0"),
        ("learner.inspo_expectile=1", "learner.inspo_expectile: must be in (0, 1), got 1.0"),
        ("learner.inspo_max_log_weight=0", "learner.inspo_max_log_weight: must be > 0, got 0.0"),
        ("learner.inspo_ratio_clip=0.5", "learner.inspo_ratio_clip: must be >= 1.0, got 0.5"),
        ("learner.inspo_agent_updates=0", "learner.inspo_agent_updates: must be >= 1, got 0"),
        ("learner.inspo_local_critics=some", "learner.inspo_local_critics: must be one of all, turn"),
        ("learner.inspo_online_anchor=mu", "learner.inspo_online_anchor: must be one of offline_policy"),
        ("learner.behaviour_pretrain_updates=0", "learner.behaviour_pretrain_updates: must be >= 1, got 0"),
        (
            ["run.online_env_steps=1000", "run.dataset=null"],
            "run.online_env_steps: is 1000, but InSPO fine-tunes a pre-trained policy",
        ),
        ("actor.inference=numpy", "actor.inference: must be torch with learner.algorithm inspo"),
    ],
)
def test_bad_inspo_settings_are_one_line_errors_naming_the_key(override, message):
    overrides = override if isinstance(override, list) else [override]
    with pytest.raises(ConfigError) as error:
        resolve_config("3m", "medium", "inspo", overrides=overrides)
    text = str(error.value)
    assert "\n" not in text and message in text


def test_alpha_and_beta_may_not_both_be_zero():
    with pytest.raises(ConfigError, match="learner.inspo_beta: .*must be > 0"):
        resolve_config("3m", "medium", "inspo", overrides=["learner.inspo_alpha=0", "learner.inspo_beta=0"])
