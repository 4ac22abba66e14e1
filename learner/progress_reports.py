"""The actors' progress reports, the run's clock: what the learner's weight service accepts.

An actor reports its running totals, `{"actor", "session", "env_steps", "episodes", "final"}` (JSON,
actors/weight_client.ProgressReporter); the run's environment-step count, which drives epsilon, the
memory coefficient and the budget, is the sum of the newest totals of every (actor, session). A
token holder is a process of the run, but a report is still held to what an actor can have done:

- the body is at most MAX_REPORT_BYTES, one flat JSON object (no nesting, no duplicate keys), its
  numbers integers (no fractions, exponents, NaN or infinity) from 0 to MAX_TOTAL, its session a
  short plain name, and it claims no more episodes than steps (an episode ends on a step). Anything
  else is malformed (`BadReport`: INVALID_ARGUMENT).
- the actor is one of the run's (`ReportBounds.actor_ids`, from the config), else PERMISSION_DENIED;
  an actor opens at most `max_sessions_per_actor` sessions (one per restart).
- an actor's steps, over all its sessions, grow by at most `max_steps_per_s` times the seconds since
  its last accepted report, plus GRACE_S, else OUT_OF_RANGE. The rate is per battle
  MAX_STEPS_PER_S_PER_BATTLE times the actor's battles: a battle advances one step per step of the
  acting loop, and one loop step costs far more than 1/MAX_STEPS_PER_S_PER_BATTLE seconds (the lite
  world alone takes 0.3-0.5 ms per batched step with one battle, docs/bench/world.md; real SC2 is
  slower still), so an honest actor is never refused for speed. GRACE_S covers an earlier report
  that was applied late. The seconds count from the actor's last accepted report, from the
  learner's checkpoint for an actor restored from it, else from the service's start.

A refused report is never applied (`ReportRefused` names the reason and the actor). Reports are
running totals, so an honest report refused by bad luck loses nothing: the next one carries it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass

from common.weight_protocol import MAX_REQUEST_BYTES

MAX_REPORT_BYTES = MAX_REQUEST_BYTES  # ~7x the largest honest report (common/weight_protocol.py)
MAX_TOTAL = 2**53 - 1  # steps or episodes: exact in any JSON reader; centuries at any real speed
MAX_ACTOR_ID = 2**31 - 1
SESSION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_STEPS_PER_S_PER_BATTLE = 20_000
GRACE_S = 1.0
MAX_SESSIONS_PER_ACTOR = 1024
# A service told nothing about the run (tests, tools): any actor id, 50 battles' worth of speed.
DEFAULT_MAX_STEPS_PER_S = 50 * MAX_STEPS_PER_S_PER_BATTLE


class BadReport(ValueError):
    """A malformed report (INVALID_ARGUMENT); `actor` is the id it claims, when that much was read."""

    actor: int | None = None


class ReportRefused(ValueError):
    """A well-formed report that breaks a bound; `reason` is a short tag, `actor` the claimed id."""

    def __init__(self, reason: str, actor: int, message: str):
        super().__init__(message)
        self.reason, self.actor = reason, actor


@dataclass(frozen=True)
class Report:
    actor: int
    session: str
    env_steps: int
    episodes: int
    final: bool = False


@dataclass(frozen=True)
class ReportBounds:
    """What the run's actors can report. `actor_ids` None: any id (a service not told the run's
    actors); `max_steps_per_s`: one actor's environment steps per second, all its battles together."""

    actor_ids: frozenset[int] | None = None
    max_steps_per_s: float = DEFAULT_MAX_STEPS_PER_S
    max_sessions_per_actor: int = MAX_SESSIONS_PER_ACTOR

    @classmethod
    def for_run(cls, num_actors: int, battles_per_actor: int, numbered: bool = True) -> ReportBounds:
        """The bounds of a run whose actors each step `battles_per_actor` battles and, when
        `numbered`, are 0 .. num_actors-1 (the ids `ovmse run` and `ovmse ray-launch` give them;
        compose's actors take theirs from their host names, so there only the speed is bounded)."""
        return cls(
            actor_ids=frozenset(range(int(num_actors))) if numbered else None,
            max_steps_per_s=max(1, int(battles_per_actor)) * MAX_STEPS_PER_S_PER_BATTLE,
        )

    def describe_actors(self) -> str:
        ids = sorted(self.actor_ids or ())
        if ids and ids == list(range(ids[0], ids[-1] + 1)) and len(ids) > 2:
            return f"{ids[0]}-{ids[-1]}"
        return ", ".join(map(str, ids)) or "none"


def _depth_ok(body: str) -> bool:
    """Whether `body` nests no array or object inside the top-level one (strings skipped)."""
    depth, in_string, escaped = 0, False, False
    for ch in body:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > 1:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _no_floats(text: str):
    raise BadReport(f"numbers in a report are integers, not {text[:24]!r}")


def _no_constants(text: str):
    raise BadReport(f"numbers in a report are integers, not {text}")


def _no_duplicates(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise BadReport("a report names each field once")
    return dict(pairs)


def _integer(report: dict, name: str, top: int) -> int:
    value = report.get(name)
    if type(value) is not int:  # bool is an int subclass: true/false are not numbers here
        raise BadReport(f"report field {name!r} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= top:
        raise BadReport(f"report field {name!r} must be between 0 and {top}, got {value}")
    return value


def parse_report(body: bytes) -> Report:
    """The report in `body`, or BadReport saying what is wrong with it."""
    if len(body) > MAX_REPORT_BYTES:
        raise BadReport(f"a report is at most {MAX_REPORT_BYTES} bytes, this one is {len(body)}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadReport("a report is UTF-8 JSON") from None
    if not _depth_ok(text):
        raise BadReport("a report is one flat JSON object (nothing nested)")
    try:
        report = json.loads(
            text, parse_float=_no_floats, parse_constant=_no_constants, object_pairs_hook=_no_duplicates
        )
    except (ValueError, RecursionError) as error:  # BadReport is a ValueError: keep its message
        raise error if isinstance(error, BadReport) else BadReport(f"not JSON ({error})") from None
    if not isinstance(report, dict):
        raise BadReport("a report is a JSON object {actor, session, env_steps, episodes}")
    actor = _integer(report, "actor", MAX_ACTOR_ID)
    try:
        session = report.get("session")
        if not isinstance(session, str) or not SESSION.fullmatch(session):
            raise BadReport("report field 'session' must be 1-64 letters, digits, '_', '-' or '.'")
        steps, episodes = _integer(report, "env_steps", MAX_TOTAL), _integer(report, "episodes", MAX_TOTAL)
        if episodes > steps:
            raise BadReport(f"a report cannot claim more episodes ({episodes}) than env steps ({steps})")
        final = report.get("final", False)
        if type(final) is not bool:
            raise BadReport("report field 'final' must be true or false")
    except BadReport as error:
        error.actor = actor
        raise
    return Report(actor, session, steps, episodes, final)


class ProgressLedger:
    """Every actor session's newest totals, the reports' bounds, and what a checkpoint keeps of them.
    Thread-safe."""

    def __init__(self, bounds: ReportBounds | None = None, clock=time.time):
        self.bounds = bounds or ReportBounds()
        self._clock = clock  # wall time: a restored checkpoint's times come from another process
        self._lock = threading.Lock()
        self._started = clock()
        self._progress: dict[tuple[int, str], tuple[int, int]] = {}  # (actor, session) -> totals
        self._finished: set[tuple[int, str]] = set()  # sessions that sent their last report
        self._restored: set[tuple[int, str]] = set()  # from a checkpoint, not heard from since
        self._heard: dict[int, float] = {}  # actor -> when its last report was accepted
        self._sessions: dict[int, int] = {}  # actor -> sessions opened

    def apply(self, report: Report) -> None:
        """Count `report`, or raise ReportRefused (and count nothing)."""
        bounds, actor = self.bounds, report.actor
        if bounds.actor_ids is not None and actor not in bounds.actor_ids:
            raise ReportRefused(
                "unknown_actor",
                actor,
                f"actor {actor} is not one of this run's actors ({bounds.describe_actors()})",
            )
        key = (actor, report.session)
        with self._lock:
            now = self._clock()
            old = self._progress.get(key)
            if old is None and self._sessions.get(actor, 0) >= bounds.max_sessions_per_actor:
                limit = bounds.max_sessions_per_actor
                raise ReportRefused("sessions", actor, f"actor {actor} has opened {limit} sessions already")
            old = old or (0, 0)
            new = (max(old[0], report.env_steps), max(old[1], report.episodes))  # totals never go back
            gained = new[0] - old[0]
            since = max(0.0, now - self._heard.get(actor, self._started))
            allowed = int(bounds.max_steps_per_s * (since + GRACE_S))
            if gained > allowed:
                raise ReportRefused(
                    "too_fast",
                    actor,
                    f"actor {actor} claims {gained:,} more env steps {since:.1f}s after its last report; "
                    f"at most {allowed:,} are possible ({bounds.max_steps_per_s:,.0f} per second)",
                )
            if key not in self._progress:
                self._sessions[actor] = self._sessions.get(actor, 0) + 1
            self._progress[key] = new
            self._heard[actor] = now
            if report.final:
                self._finished.add(key)
            elif key in self._restored:  # an actor that lived through the learner's restart
                self._restored.discard(key)
                self._finished.discard(key)

    def rows(self) -> list[list]:
        """[actor, session, env_steps, episodes, finished, heard_at] of every session, for a
        checkpoint (heard_at: when the actor's last report was accepted, wall time)."""
        with self._lock:
            return [
                [
                    actor,
                    session,
                    steps,
                    episodes,
                    (actor, session) in self._finished,
                    self._heard.get(actor, self._started),
                ]
                for (actor, session), (steps, episodes) in self._progress.items()
            ]

    def restore(self, rows: list) -> None:
        """Rows saved by `rows()` (or without heard_at, as older checkpoints hold them). A restored
        session counts as finished until it reports again: its actor may have died with the learner."""
        with self._lock:
            for actor, session, steps, episodes, *rest in rows:
                key = (int(actor), str(session))
                if key not in self._progress:
                    self._sessions[key[0]] = self._sessions.get(key[0], 0) + 1
                self._progress[key] = (int(steps), int(episodes))
                self._finished.add(key)
                self._restored.add(key)
                if len(rest) >= 2:  # the actor may have played on since: its clock runs from then
                    self._heard[key[0]] = max(self._heard.get(key[0], 0.0), float(rest[1]))

    def totals(self) -> tuple[int, int]:
        with self._lock:
            values = list(self._progress.values())
        return sum(v[0] for v in values), sum(v[1] for v in values)

    def all_finished(self) -> bool:
        with self._lock:
            return bool(self._progress) and set(self._progress) <= self._finished

    def actors(self) -> set[int]:
        with self._lock:
            return {actor for actor, _ in self._progress}
