"""Rollouts, as pure functions: which stage a client is in, what a rollout does next, and
whether a client is offered a version yet.

A *rollout* takes the versions of one publish to the fleet in *stages*. Each stage is one of:

* ``N%`` (``1%``, ``12.5%``): the clients whose bucket, a stable hash of their id into
  ``[0, 100)``, is below N and not below the previous percentage stage's N. So ``1%,10%,100%``
  is 1 % of the fleet, then the next 9 %, then the rest; a client keeps its bucket across
  rollouts, so the same clients are the first ones every time.
* ``key=value``: the clients labelled so (``migsync clients add NAME --label region=eu``).
* ``NAME``: short for ``group=NAME`` (``canary`` is the clients labelled ``group=canary``).
* ``all``: every client.

A client is in the first stage that takes it (a ``group=canary`` client is in ``canary``, not
in a later ``all``); a client in no stage is never offered the rollout's versions. A client
that appears mid-rollout falls into its stage like any other.

The state machine (:func:`evaluate`, :func:`operate`): a rollout is ``running``, ``paused``,
``completed`` or ``aborted``. While running, the current stage *passes* when, of its clients
that reported, at least ``success_threshold`` applied and ``soak`` seconds went by since the
stage started (an empty stage passes at once; failures an operator accepted are left out of
the share); then the next stage starts, or after the last
the rollout is completed. It *pauses itself* when, of a started stage's clients that reported,
more than ``error_threshold`` failed (not counting failures an operator accepted by resuming
or advancing). An operator may pause, resume, advance (start the next stage now) or abort
(offer the versions to no one new). A client is offered the versions while the rollout is not
aborted and its stage has started.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import attrs

from migsync.core.errors import ConfigError

RUNNING = "running"
PAUSED = "paused"
COMPLETED = "completed"
ABORTED = "aborted"
STATES = (RUNNING, PAUSED, COMPLETED, ABORTED)
#: the states in which a rollout still decides who is offered what and may change
OPEN = (RUNNING, PAUSED)

OPERATIONS = ("pause", "resume", "advance", "abort")
ON_FAILURE = ("pause", "revert")

DEFAULT_SUCCESS = 0.95
DEFAULT_ERROR = 0.05
DEFAULT_SOAK = 600.0

#: the label a bare stage name stands for (``canary`` is ``group=canary``)
GROUP_LABEL = "group"

_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.\-/:]{0,200}$")
_PERCENT = re.compile(r"^(\d{1,3}(?:\.\d{1,4})?)%$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class RolloutError(ConfigError):
    """A rollout asked to do what its state does not allow, or given bad settings."""


# -- labels ----------------------------------------------------------------------------------------


def parse_label(text: str) -> tuple[str, str]:
    """``key=value`` as a pair; :class:`ConfigError` naming ``text`` if it is not one."""
    key, sep, value = text.strip().partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
        raise ConfigError(
            f"label {text!r} is not key=value (a key of letters, digits and _.-/ starting with a "
            "letter or digit, at most 63 characters; a value of at most 200 such characters or ':')"
        )
    return key, value


def parse_labels(texts: Iterable[str]) -> dict[str, str]:
    """Many ``key=value`` texts as one mapping; a key given twice is an error."""
    labels: dict[str, str] = {}
    for text in texts:
        key, value = parse_label(text)
        if key in labels and labels[key] != value:
            raise ConfigError(f"label {key!r} given twice ({labels[key]!r} and {value!r})")
        labels[key] = value
    return labels


# -- stages ----------------------------------------------------------------------------------------


@attrs.frozen
class Stage:
    """One stage: ``kind`` ``percent`` (clients whose bucket is in ``[low, high)``), ``label``
    (clients whose label ``key`` is ``value``) or ``all``. ``name`` is as the operator wrote it."""

    name: str
    kind: Literal["percent", "label", "all"]
    key: str | None = None
    value: str | None = None
    low: float = 0.0
    high: float = 100.0

    def takes(self, bucket: float, labels: Mapping[str, str]) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "percent":
            return self.low <= bucket < self.high
        return self.key is not None and labels.get(self.key) == self.value

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "key": self.key,
            "value": self.value,
            "low": self.low,
            "high": self.high,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Stage:
        return cls(
            str(data["name"]),
            data["kind"],  # type: ignore[arg-type]
            None if data.get("key") is None else str(data["key"]),
            None if data.get("value") is None else str(data["value"]),
            float(data.get("low", 0.0)),  # type: ignore[arg-type]
            float(data.get("high", 100.0)),  # type: ignore[arg-type]
        )


def parse_stages(text: str | Sequence[str]) -> tuple[Stage, ...]:
    """``1%,10%,100%`` or ``canary,region=eu,all`` as stages (see the module's docstring).

    Percentages must grow and be at most 100; ``all`` and ``100%`` only come last; a name is
    never given twice. Anything else is a :class:`RolloutError` naming the stage."""
    items = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
    if not items or any(not p for p in items):
        raise RolloutError(f"stages {text!r}: give a comma-separated list such as 1%,10%,100% or canary,all")
    stages: list[Stage] = []
    last_percent = 0.0
    for position, item in enumerate(items, 1):
        where = f"stage {position} ({item!r})"
        if stages and (stages[-1].kind == "all" or (stages[-1].kind == "percent" and stages[-1].high >= 100)):
            raise RolloutError(f"{where} comes after {stages[-1].name!r}, which already takes every client")
        percent = _PERCENT.match(item)
        if percent:
            high = float(percent.group(1))
            if not 0 < high <= 100:
                raise RolloutError(f"{where}: a percentage must be above 0 and at most 100")
            if high <= last_percent:
                raise RolloutError(f"{where}: percentages must grow (the one before is {last_percent:g}%)")
            stages.append(Stage(item, "percent", low=last_percent, high=high))
            last_percent = high
        elif item.lower() == "all":
            stages.append(Stage("all", "all"))
        elif "=" in item:
            try:
                key, value = parse_label(item)
            except ConfigError as exc:
                raise RolloutError(f"{where}: {exc}") from None
            stages.append(Stage(item, "label", key, value))
        else:
            try:
                parse_label(f"{GROUP_LABEL}={item}")
            except ConfigError:
                raise RolloutError(
                    f"{where} is neither N%, key=value, all nor a group name (letters, digits, _.-/)"
                ) from None
            stages.append(Stage(item, "label", GROUP_LABEL, item))
        if [s.name for s in stages].count(stages[-1].name) > 1:
            raise RolloutError(f"{where} is given twice")
    return tuple(stages)


@functools.lru_cache(maxsize=1 << 17)  # a pure function of the id, asked for every client per read
def bucket(client_id: int) -> float:
    """The client's place in ``[0, 100)`` for percentage stages: a stable hash of its id, so that
    it is the same on every server, in every rollout, whatever the other clients."""
    digest = hashlib.sha256(f"migsync-rollout:{client_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def stage_of(stages: Sequence[Stage], client_id: int, labels: Mapping[str, str]) -> int | None:
    """The index of the first stage that takes the client, or None (never offered)."""
    where = bucket(client_id)
    for index, stage in enumerate(stages):
        if stage.takes(where, labels):
            return index
    return None


# -- settings --------------------------------------------------------------------------------------


def parse_duration(text: str | float) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` (or a number of seconds) as seconds."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(text.strip())
        if match is None:
            raise RolloutError(f"duration {text!r}: give seconds, or a number with ms, s, m, h or d (10m)")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds < 0:
        raise RolloutError(f"duration {text!r} must not be negative")
    return seconds


def parse_ratio(text: str | float, what: str) -> float:
    """``95%``, ``0.95`` or ``95`` (taken as percent when above 1) as a fraction in ``[0, 1]``."""
    try:
        value = float(text[:-1]) / 100 if isinstance(text, str) and text.endswith("%") else float(text)
    except ValueError:
        raise RolloutError(f"{what} {text!r}: give a percentage (95%) or a fraction (0.95)") from None
    if value > 1 and not (isinstance(text, str) and text.endswith("%")):
        value /= 100
    if not 0 <= value <= 1:
        raise RolloutError(f"{what} {text!r} must be from 0% to 100%")
    return value


@attrs.frozen
class Policy:
    """How a rollout decides: see the module's docstring."""

    success_threshold: float = DEFAULT_SUCCESS
    error_threshold: float = DEFAULT_ERROR
    soak: float = DEFAULT_SOAK
    on_failure: str = "pause"

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.success_threshold <= 1 or not 0 <= self.error_threshold <= 1:
            raise RolloutError("the success and error thresholds must be from 0 to 1")
        if self.soak < 0:
            raise RolloutError("the soak time must not be negative")
        if self.on_failure not in ON_FAILURE:
            raise RolloutError(f"on failure {self.on_failure!r}: use one of {', '.join(ON_FAILURE)}")


# -- counts and state ------------------------------------------------------------------------------


@attrs.frozen
class Counts:
    """A stage's clients: how many there are, applied every version of the rollout, failed one
    (and did not apply it since), or neither (pending, whether they reported or not)."""

    members: int = 0
    applied: int = 0
    failed: int = 0

    @property
    def pending(self) -> int:
        return self.members - self.applied - self.failed

    @property
    def reported(self) -> int:
        return self.applied + self.failed

    def to_json(self) -> dict[str, int]:
        return {
            "members": self.members,
            "applied": self.applied,
            "failed": self.failed,
            "pending": self.pending,
        }


#: a client's state in a rollout, as :func:`client_state` decides it
ClientOutcome = Literal["applied", "failed", "pending"]


def client_state(states: Iterable[str]) -> ClientOutcome:
    """One client's outcome from its state for each of the rollout's versions (``applied``,
    ``failed`` or ``pending``): applied when all are, failed when one is, else pending."""
    items = list(states)
    if items and all(s == "applied" for s in items):
        return "applied"
    if any(s == "failed" for s in items):
        return "failed"
    return "pending"


def count(outcomes: Iterable[tuple[int | None, ClientOutcome]], stages: int) -> list[Counts]:
    """Per stage, from each client's ``(stage index or None, outcome)``."""
    tally = [[0, 0, 0] for _ in range(stages)]
    for index, outcome in outcomes:
        if index is None:
            continue
        tally[index][0] += 1
        if outcome == "applied":
            tally[index][1] += 1
        elif outcome == "failed":
            tally[index][2] += 1
    return [Counts(*t) for t in tally]


@attrs.frozen
class State:
    """Where a rollout is: its state, its current stage (the last one started), when that stage
    started, why it is paused (or was ended), and per started stage the failures an operator
    accepted (by resuming or advancing past them), which do not pause it again."""

    state: str
    stage: int
    stage_started_at: float
    reason: str | None = None
    accepted: tuple[int, ...] = ()

    def accepted_in(self, index: int) -> int:
        return self.accepted[index] if index < len(self.accepted) else 0


def start(now: float) -> State:
    return State(RUNNING, 0, now, None, ())


@attrs.frozen
class Step:
    """What :func:`evaluate` or :func:`operate` decided: the new state, and what happened, in
    words for the audit (empty when nothing did). ``revert``: ask the clients of the started
    stages that applied the versions to revert them (a failure under ``on_failure=revert``)."""

    state: State
    events: tuple[str, ...] = ()
    revert: bool = False


def _failing(state: State, policy: Policy, counts: Sequence[Counts]) -> str | None:
    for index in range(min(state.stage + 1, len(counts))):
        c = counts[index]
        failed = max(c.failed - state.accepted_in(index), 0)
        if c.reported and failed / c.reported > policy.error_threshold:
            return (
                f"stage {index + 1}: {failed} of {c.reported} clients that reported failed "
                f"({failed / c.reported:.0%} > error threshold {policy.error_threshold:.0%})"
            )
    return None


def _passes(state: State, policy: Policy, c: Counts, now: float) -> bool:
    if c.members == 0:
        return True
    # Failures an operator accepted count neither for nor against the stage.
    reported = c.reported - min(state.accepted_in(state.stage), c.failed)
    return (
        reported > 0
        and c.applied / reported >= policy.success_threshold
        and now - state.stage_started_at >= policy.soak
    )


def evaluate(
    state: State, policy: Policy, counts: Sequence[Counts], now: float, names: Sequence[str] | None = None
) -> Step:
    """The rollout's next state, given each stage's counts now (one per stage). Only a running
    rollout moves: it pauses on failures, else starts the next stage(s) whose previous passed,
    or completes after the last."""
    if state.state != RUNNING:
        return Step(state)
    if len(counts) == 0:
        raise RolloutError("a rollout has at least one stage")
    label = names or [f"stage {i + 1}" for i in range(len(counts))]
    failing = _failing(state, policy, counts)
    if failing is not None:
        return Step(
            attrs.evolve(state, state=PAUSED, reason=failing),
            (f"paused: {failing}",),
            policy.on_failure == "revert",
        )
    events: list[str] = []
    while _passes(state, policy, counts[state.stage], now):
        if state.stage + 1 >= len(counts):
            state = attrs.evolve(state, state=COMPLETED, reason=None)
            events.append(f"completed: {label[state.stage]} passed")
            break
        state = attrs.evolve(state, stage=state.stage + 1, stage_started_at=now)
        events.append(f"started {label[state.stage]}: {label[state.stage - 1]} passed")
    return Step(state, tuple(events))


def _accept(state: State, counts: Sequence[Counts]) -> tuple[int, ...]:
    return tuple(counts[i].failed for i in range(min(state.stage + 1, len(counts))))


def operate(state: State, operation: str, counts: Sequence[Counts], now: float) -> Step:
    """An operator's ``pause``, ``resume``, ``advance`` or ``abort``; :class:`RolloutError` when
    the state does not allow it (resuming a running rollout, anything on an ended one).
    Resuming and advancing accept the failures seen so far: only new ones pause it again."""
    if operation not in OPERATIONS:
        raise RolloutError(f"unknown operation {operation!r}: use one of {', '.join(OPERATIONS)}")
    if state.state not in OPEN:
        raise RolloutError(f"the rollout is {state.state}: it cannot {operation}")
    if operation == "pause":
        if state.state == PAUSED:
            raise RolloutError("the rollout is paused already")
        return Step(attrs.evolve(state, state=PAUSED, reason="paused by an operator"), ("paused",))
    if operation == "resume":
        if state.state == RUNNING:
            raise RolloutError("the rollout is running: there is nothing to resume")
        resumed = attrs.evolve(state, state=RUNNING, reason=None, accepted=_accept(state, counts))
        return Step(resumed, ("resumed",))
    if operation == "abort":
        return Step(attrs.evolve(state, state=ABORTED, reason="aborted by an operator"), ("aborted",))
    # advance
    if state.stage + 1 >= len(counts):
        done = attrs.evolve(state, state=COMPLETED, reason=None, accepted=_accept(state, counts))
        return Step(done, ("advanced: completed",))
    moved = attrs.evolve(
        state,
        state=RUNNING,
        reason=None,
        stage=state.stage + 1,
        stage_started_at=now,
        accepted=_accept(state, counts),
    )
    return Step(moved, (f"advanced to stage {moved.stage + 1}",))


# -- offering --------------------------------------------------------------------------------------


def offered(state: str, current_stage: int, client_stage: int | None) -> bool:
    """Whether a client in ``client_stage`` (None: in no stage) is offered the rollout's versions."""
    if state == ABORTED or client_stage is None:
        return False
    return client_stage <= current_stage


def in_order(versions: Sequence[object], held: Iterable[object]) -> list[object]:
    """``versions`` (in order) up to the first one in ``held``: a client applies migrations in
    order, so one it is not offered yet holds back every later one too."""
    stop = set(held)
    out = []
    for version in versions:
        if version in stop:
            break
        out.append(version)
    return out


# -- progress over time ----------------------------------------------------------------------------


def event_outcome(state: str) -> Literal["applied", "failed", "pending"]:
    """A status event's state (``applied``, ``failed``, ``dead``, ``pending``) as an outcome."""
    if state == "applied":
        return "applied"
    if state in ("failed", "dead"):
        return "failed"
    return "pending"


def timeline(
    events: Iterable[tuple[float, int, str, str]],
    members: Mapping[int, int | None],
    versions: Sequence[str],
    stages: int,
    ends: Sequence[float],
) -> list[list[Counts]]:
    """Per time in ``ends`` (ascending), per stage, the counts as of that time.

    ``events``: ``(at, client id, version, state)`` status events (any order); ``members``:
    client id -> its stage index (None: in no stage), the clients counted; ``versions``: the
    rollout's. A client with no event for a version by then is pending for it."""
    ordered = sorted(e for e in events if e[2] in versions)
    known: dict[int, dict[str, str]] = {}
    # Counted as the events come (not recounted over every member at each time: a chart of 24
    # times over 10,000 clients would be 240,000 client states): every member starts pending.
    tally = [[0, 0, 0] for _ in range(stages)]
    for stage in members.values():
        if stage is not None:
            tally[stage][0] += 1
    outcome: dict[int, ClientOutcome] = {}
    column = {"applied": 1, "failed": 2}
    out: list[list[Counts]] = []
    position = 0
    for end in ends:
        while position < len(ordered) and ordered[position][0] <= end:
            _at, client_id, version, state = ordered[position]
            position += 1
            mine = known.setdefault(client_id, {})
            mine[version] = event_outcome(state)
            stage = members.get(client_id)
            if stage is None:
                continue
            before = outcome.get(client_id, "pending")
            after = client_state(mine.get(v, "pending") for v in versions)
            if after != before:
                if before in column:
                    tally[stage][column[before]] -= 1
                if after in column:
                    tally[stage][column[after]] += 1
                outcome[client_id] = after
        out.append([Counts(*t) for t in tally])
    return out


def bucket_ends(start: float, now: float, points: int) -> list[float]:
    """``points`` evenly spaced times from just after ``start`` to ``now`` (``now`` last)."""
    if points < 1:
        raise RolloutError("points must be at least 1")
    span = max(now - start, 0.0)
    return [start + span * (i + 1) / points for i in range(points)]
