"""The run's clock takes only what the run's actors can have done: a progress report (an actor's
running totals, learner/progress_reports.py) comes from one of the run's actors, claims non-negative
integer totals, no more steps than that actor can have played since its last report, and is a small
flat JSON object. A report that breaks a bound is refused with a status that says why, logged with
the actor id, and never applied. All through the real gRPC service, with the run's token."""

from __future__ import annotations

import json
import logging
import time

import grpc
import numpy as np
import pytest

from actors.weight_client import ProgressReporter
from common.auth import call_metadata
from common.weight_protocol import MAX_REQUEST_BYTES, REPORT
from learner.progress_reports import MAX_STEPS_PER_S_PER_BATTLE, MAX_TOTAL, ReportBounds
from learner.weight_service import WeightPublisher

TOKEN = "s3cret-token-for-tests-0123456789"
OK = grpc.StatusCode.OK


def publisher_with(bounds: ReportBounds | None = None) -> WeightPublisher:
    return WeightPublisher(port=0, token=TOKEN, report_bounds=bounds)


@pytest.fixture
def unbounded():
    """A service told nothing about the run: any actor id, the default speed bound."""
    publisher = WeightPublisher(port=0, token=TOKEN)
    yield publisher
    publisher.stop()


@pytest.fixture
def two_actors():
    """A run of actors 0 and 1, each able to make at most 1,000 env steps a second."""
    publisher = publisher_with(ReportBounds(actor_ids=frozenset({0, 1}), max_steps_per_s=1000))
    yield publisher
    publisher.stop()


def send(publisher: WeightPublisher, report: dict | bytes) -> tuple[grpc.StatusCode, str]:
    """(status, details) of one Report call carrying `report` (a dict is sent as JSON)."""
    body = report if isinstance(report, bytes) else json.dumps(report).encode()
    with grpc.insecure_channel(publisher.address) as channel:
        try:
            channel.unary_unary(REPORT)(body, timeout=10, metadata=call_metadata(TOKEN))
            return OK, ""
        except grpc.RpcError as error:
            return error.code(), error.details()


def report(actor: int, env_steps, episodes=0, session: str = "s1", final: bool = False) -> dict:
    return {"actor": actor, "session": session, "env_steps": env_steps, "episodes": episodes, "final": final}


# --- who may report --------------------------------------------------------------------------------


def test_only_the_runs_actors_may_move_its_clock(two_actors, caplog):
    with caplog.at_level(logging.WARNING, logger="learner.weight_service"):
        code, details = send(two_actors, report(999, 10**9, 1))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "actor 999 is not one of this run's actors (0, 1)" in details
    assert "refused a progress report from actor 999" in caplog.text
    assert two_actors.totals() == (0, 0) and two_actors.actors_reporting() == set()
    assert send(two_actors, report(1, 120, 2)) == (OK, "")
    assert two_actors.totals() == (120, 2) and two_actors.actors_reporting() == {1}
    assert two_actors.refused["report_unknown_actor"] == 1


def run_publisher(*overrides: str) -> WeightPublisher:
    """The weight service `ovmse run` builds from a lite 3m configuration with its token."""
    from common.config import resolve_config
    from common.net import pick_free_port
    from deploy.builder import Builder

    port = pick_free_port("127.0.0.1")
    cfg = resolve_config(map_name="3m", overrides=[f"actor.weight_server=127.0.0.1:{port}", *overrides])
    builder = Builder(cfg)
    builder.token = lambda: TOKEN
    return builder.weight_publisher()


@pytest.mark.parametrize("numbered", [True, False], ids=["run", "compose"])
def test_the_built_service_knows_the_runs_actors_unless_they_are_named_by_host(numbered):
    publisher = run_publisher("actor.num_actors=2", f"actor.numbered_ids={str(numbered).lower()}")
    try:
        code, _ = send(publisher, report(999, 10, 1))
        assert code == (grpc.StatusCode.PERMISSION_DENIED if numbered else OK)
        assert send(publisher, report(1, 10, 1)) == (OK, "")
    finally:
        publisher.stop()


def test_the_run_bounds_name_its_actors_and_their_battles():
    bounds = ReportBounds.for_run(num_actors=3, battles_per_actor=4)
    assert bounds.actor_ids == {0, 1, 2}  # the ids `ovmse run` and `ovmse ray-launch` hand out
    assert bounds.max_steps_per_s == 4 * MAX_STEPS_PER_S_PER_BATTLE
    assert ReportBounds.for_run(3, 4, numbered=False).actor_ids is None  # ids from host names: any


def test_an_actor_refused_says_why_once_in_its_own_log(two_actors, caplog):
    stranger = ProgressReporter(two_actors.address, actor_id=7, token=TOKEN)
    try:
        with caplog.at_level(logging.ERROR, logger="actors.weight_client"):
            assert stranger.report(10, 1) is False and stranger.report(20, 1) is False
    finally:
        stranger.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "actors.weight_client"]
    assert lines == [
        "the learner refused a report of actor 7: progress report refused: "
        "actor 7 is not one of this run's actors (0, 1)"
    ]


# --- how many steps ------------------------------------------------------------------------------


def test_a_billion_steps_at_once_are_refused_and_never_counted(unbounded, caplog):
    with caplog.at_level(logging.WARNING, logger="learner.weight_service"):
        code, details = send(unbounded, report(0, 10**9, 1, final=True))
    assert code == grpc.StatusCode.OUT_OF_RANGE
    assert "actor 0 claims 1,000,000,000 more env steps" in details and "at most" in details
    assert "refused a progress report from actor 0" in caplog.text
    assert unbounded.totals() == (0, 0) and not unbounded.all_actors_finished()


def test_an_actor_steps_no_faster_than_its_battles_can_over_all_its_sessions(two_actors):
    assert send(two_actors, report(0, 500, 5)) == (OK, "")
    assert send(two_actors, report(0, 50_500, 6))[0] == grpc.StatusCode.OUT_OF_RANGE
    # A new session of the same actor does not bring a new allowance.
    assert send(two_actors, report(0, 50_000, 6, session="s2"))[0] == grpc.StatusCode.OUT_OF_RANGE
    assert two_actors.totals() == (500, 5)
    # Reports are running totals: after time has passed, the same claim is possible and counts.
    time.sleep(2.0)  # 1,000 steps/s x (2 s + 1 s grace) >= 2,000 more
    assert send(two_actors, report(0, 2_500, 9)) == (OK, "")
    assert two_actors.totals() == (2_500, 9)


def test_negative_totals_are_refused_and_add_no_actor_to_wait_for(unbounded, caplog):
    with caplog.at_level(logging.WARNING, logger="learner.weight_service"):
        code, details = send(unbounded, report(998, -5000, -3))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'env_steps' must be between 0 and" in details
    assert "refused a malformed progress report from actor 998 (ipv4:127.0.0.1:" in caplog.text
    assert unbounded.actors_reporting() == set()
    assert send(unbounded, report(0, 300, 4, final=True)) == (OK, "")
    assert unbounded.all_actors_finished()  # the end of the run waits for no phantom actor
    assert unbounded.totals() == (300, 4)


def test_a_restarted_learner_takes_what_its_actors_played_while_it_was_down():
    bounds = ReportBounds(actor_ids=frozenset({0, 1}), max_steps_per_s=1000)
    crashed = publisher_with(bounds)
    assert send(crashed, report(0, 500, 5)) == (OK, "")
    saved = crashed.sessions()  # what the learner's checkpoint holds
    crashed.stop()
    assert [row[:5] for row in saved] == [[0, "s1", 500, 5, False]]
    saved[0][5] -= 100  # the checkpoint was written 100 s before the restarted learner hears again
    restarted = publisher_with(bounds)
    try:
        restarted.restore_sessions(saved + [[-1, "older checkpoint", 40, 1, True]])  # rows without a time
        assert send(restarted, report(0, 90_500, 905)) == (OK, "")  # 90,000 steps in 100 s: possible
        assert send(restarted, report(0, 990_500, 906))[0] == grpc.StatusCode.OUT_OF_RANGE
        assert restarted.totals() == (90_540, 906)
    finally:
        restarted.stop()


def test_an_actor_opens_a_bounded_number_of_sessions():
    publisher = publisher_with(ReportBounds(actor_ids=frozenset({0}), max_sessions_per_actor=3))
    try:
        for session in ("a", "b", "c"):
            assert send(publisher, report(0, 10, 1, session=session)) == (OK, "")
        code, details = send(publisher, report(0, 10, 1, session="d"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "opened 3 sessions already" in details
        assert send(publisher, report(0, 20, 2, session="a")) == (OK, "")  # the open ones go on
        assert publisher.totals() == (40, 4)
    finally:
        publisher.stop()


def test_an_actor_stepping_the_lite_world_as_fast_as_it_goes_is_never_refused():
    from common.envs.lite import LiteBatchEnv

    env = LiteBatchEnv("3m", num_envs=1, seed=0)  # one battle: the fastest a battle steps
    publisher = publisher_with(ReportBounds.for_run(num_actors=1, battles_per_actor=1))
    actor = ProgressReporter(publisher.address, actor_id=0, token=TOKEN)
    try:
        rng, obs = np.random.default_rng(0), env.reset()
        steps = episodes = 0
        began = time.monotonic()
        while time.monotonic() - began < 2.0:
            step = env.step(np.where(obs.avail, rng.random(obs.avail.shape), -1.0).argmax(-1))
            obs, steps, episodes = step.next, steps + 1, episodes + int(step.terminated.sum())
            if steps % 20 == 0:
                assert actor.report(steps, episodes), f"refused at {steps} steps"
        assert actor.report(steps, episodes, final=True)
        assert publisher.totals() == (steps, episodes) and actor.failures == 0
    finally:
        actor.close()
        publisher.stop()


# --- what a report may look like -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, says",
    [
        (b'{"actor": 0, "session": "s", "env_steps": 1e400, "episodes": 1}', "integers, not '1e400'"),
        (b'{"actor": 0, "session": "s", "env_steps": NaN, "episodes": 1}', "integers, not NaN"),
        (b'{"actor": 0, "session": "s", "env_steps": Infinity, "episodes": 1}', "integers, not Infinity"),
        (b'{"actor": 0, "session": "s", "env_steps": 2.5, "episodes": 1}', "integers, not '2.5'"),
        (b'{"actor": 0, "session": "s", "env_steps": true, "episodes": 1}', "must be an integer, got bool"),
        (b'{"actor": 0, "session": "s", "env_steps": "12", "episodes": 1}', "must be an integer, got str"),
        (b'{"actor": 0, "session": "s", "env_steps": 1' + b"0" * 20 + b', "episodes": 1}', "between 0 and"),
        (b'{"actor": 0, "session": "s", "env_steps": 5, "episodes": 9}', "more episodes (9) than env steps"),
        (b'{"actor": 0, "actor": 1, "session": "s", "env_steps": 5, "episodes": 1}', "each field once"),
        (b'{"actor": 0, "session": "s\\n", "env_steps": 5, "episodes": 1}', "'session' must be 1-64"),
        (b'{"actor": 0, "session": "s", "env_steps": 5, "episodes": 1, "final": 1}', "true or false"),
        (b"[0, 5, 1]", "a JSON object"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_numbers_are_invalid_arguments_and_nothing_is_counted(unbounded, caplog, body, says):
    with caplog.at_level(logging.WARNING):
        code, details = send(unbounded, body)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and says in details, details
    assert details.startswith("malformed progress report: ")
    assert unbounded.totals() == (0, 0) and unbounded.refused["report_malformed"] == 1
    assert "Traceback" not in caplog.text and "Exception calling application" not in caplog.text


def test_nested_json_is_refused_without_parsing_it_deeply(unbounded, caplog):
    with caplog.at_level(logging.WARNING):
        # Nesting within the size bound: refused before the JSON parser sees it.
        nested = b'{"actor": 0, "session": "s", "env_steps": ' + b"[" * 400 + b"]" * 400 + b', "episodes": 1}'
        assert len(nested) <= MAX_REQUEST_BYTES
        code, details = send(unbounded, nested)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "one flat JSON object" in details
        # Deeper nesting is bigger than any request: gRPC refuses it before it is read.
        code, details = send(unbounded, b"[" * 100_000 + b"]" * 100_000)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
    assert "RecursionError" not in caplog.text and "Traceback" not in caplog.text
    assert unbounded.totals() == (0, 0)


def test_requests_are_small_and_a_bigger_one_is_never_read(unbounded):
    largest_honest = report(2**31 - 1, MAX_TOTAL, MAX_TOTAL, session="f" * 64, final=True)
    assert len(json.dumps(largest_honest).encode()) <= MAX_REQUEST_BYTES // 4
    padded = {**report(0, 10, 1), "padding": "x" * 2 * MAX_REQUEST_BYTES}
    code, details = send(unbounded, padded)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
    assert unbounded.totals() == (0, 0)
