"""Rollout logic as pure functions (migsync.server.rollouts): stages, thresholds, soak, pause,
operators, clients appearing mid-rollout, offering, and progress over time."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migsync.core import requires
from migsync.core.errors import ConfigError, SourceError
from migsync.server import rollouts as r

T0 = 1_700_000_000.0


def counts(*stages: tuple[int, int, int]) -> list[r.Counts]:
    return [r.Counts(*s) for s in stages]


# -- stages ----------------------------------------------------------------------------------------


def test_percentages_are_cumulative_ranges() -> None:
    stages = r.parse_stages("1%,10%,50%,100%")
    assert [(s.low, s.high) for s in stages] == [(0, 1), (1, 10), (10, 50), (50, 100)]


def test_names_are_group_labels_and_all_takes_everyone() -> None:
    stages = r.parse_stages("canary, region=eu ,all")
    assert [(s.kind, s.key, s.value) for s in stages] == [
        ("label", "group", "canary"),
        ("label", "region", "eu"),
        ("all", None, None),
    ]
    assert r.stage_of(stages, 7, {"group": "canary", "region": "eu"}) == 0
    assert r.stage_of(stages, 7, {"region": "eu"}) == 1
    assert r.stage_of(stages, 7, {}) == 2


def test_a_client_in_no_stage_is_never_offered() -> None:
    stages = r.parse_stages("canary,region=eu")
    assert r.stage_of(stages, 3, {"region": "us"}) is None
    assert not r.offered(r.COMPLETED, 1, None)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "comma-separated"),
        ("1%,,all", "comma-separated"),
        ("10%,5%", "must grow"),
        ("0%", "above 0"),
        ("150%", "above 0 and at most 100"),
        ("all,canary", "already takes every client"),
        ("100%,canary", "already takes every client"),
        ("canary,canary", "given twice"),
        ("can ary", "neither"),
        ("=x", "stage 1"),
    ],
)
def test_bad_stages_are_refused_by_name(text: str, says: str) -> None:
    with pytest.raises(r.RolloutError, match=says):
        r.parse_stages(text)


@given(st.integers(min_value=1, max_value=10**9))
def test_every_client_falls_in_exactly_one_percentage_stage(client_id: int) -> None:
    stages = r.parse_stages("1%,10%,50%,100%")
    taken = [s for s in stages if s.takes(r.bucket(client_id), {})]
    assert len(taken) == 1
    assert r.stage_of(stages, client_id, {}) == stages.index(taken[0])
    assert r.bucket(client_id) == r.bucket(client_id)  # stable


def test_percentage_buckets_spread_evenly() -> None:
    stages = r.parse_stages("10%,100%")
    first = sum(r.stage_of(stages, c, {}) == 0 for c in range(1, 20001))
    assert 1700 < first < 2300  # 10 % of 20,000, give or take


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("500ms", 0.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert r.parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "ratio"), [("95%", 0.95), ("0.95", 0.95), ("95", 0.95), ("0", 0.0), ("1", 1.0)]
)
def test_ratios(text: str, ratio: float) -> None:
    assert r.parse_ratio(text, "x") == pytest.approx(ratio)


@pytest.mark.parametrize("text", ["ten", "150%", "-1"])
def test_bad_ratios_name_what(text: str) -> None:
    with pytest.raises(r.RolloutError, match="success threshold"):
        r.parse_ratio(text, "success threshold")


def test_labels_parse_and_refuse() -> None:
    assert r.parse_labels(["region=eu", "group=canary"]) == {"region": "eu", "group": "canary"}
    with pytest.raises(ConfigError, match="given twice"):
        r.parse_labels(["a=1", "a=2"])
    with pytest.raises(ConfigError, match="'region' is not key=value"):
        r.parse_labels(["region"])


# -- the state machine -----------------------------------------------------------------------------

POLICY = r.Policy(success_threshold=0.95, error_threshold=0.05, soak=60)


def test_a_stage_waits_for_its_soak_time() -> None:
    state = r.start(T0)
    step = r.evaluate(state, POLICY, counts((2, 2, 0), (8, 0, 0)), T0 + 59)
    assert step.state == state and step.events == ()
    step = r.evaluate(state, POLICY, counts((2, 2, 0), (8, 0, 0)), T0 + 60)
    assert (step.state.state, step.state.stage, step.state.stage_started_at) == (r.RUNNING, 1, T0 + 60)
    assert step.events == ("started stage 2: stage 1 passed",)


def test_a_stage_waits_for_a_report_and_the_success_threshold() -> None:
    state = r.start(T0)
    assert r.evaluate(state, POLICY, counts((5, 0, 0), (5, 0, 0)), T0 + 999).state == state
    # 19 applied of 20 that reported is 95 %: enough, and 1 failed is 5 %: not above the threshold
    assert (
        r.evaluate(state, attrs.evolve(POLICY, soak=0), counts((40, 19, 1), (1, 0, 0)), T0).state.stage == 1
    )
    assert r.evaluate(state, r.Policy(0.96, 0.05, 0), counts((40, 19, 1), (1, 0, 0)), T0).state.stage == 0


def test_failures_above_the_error_threshold_pause_it() -> None:
    state = r.start(T0)
    step = r.evaluate(state, POLICY, counts((20, 18, 2), (80, 0, 0)), T0 + 999)
    assert step.state.state == r.PAUSED
    assert "2 of 20" in (step.state.reason or "") and not step.revert
    # exactly at the threshold is not above it
    assert (
        r.evaluate(state, r.Policy(0.9, 0.1, 0), counts((20, 18, 2), (1, 0, 0)), T0).state.state == r.RUNNING
    )


def test_on_failure_revert_asks_for_a_revert() -> None:
    policy = r.Policy(0.95, 0.05, 0, "revert")
    assert r.evaluate(r.start(T0), policy, counts((2, 1, 1), (8, 0, 0)), T0).revert


def test_empty_stages_pass_at_once_and_the_last_completes() -> None:
    step = r.evaluate(r.start(T0), POLICY, counts((0, 0, 0), (0, 0, 0)), T0)
    assert step.state.state == r.COMPLETED
    assert step.events == ("started stage 2: stage 1 passed", "completed: stage 2 passed")


def test_only_a_running_rollout_moves() -> None:
    for state in (r.PAUSED, r.COMPLETED, r.ABORTED):
        held = r.State(state, 0, T0)
        assert r.evaluate(held, POLICY, counts((1, 1, 0), (1, 0, 0)), T0 + 999).state == held


def test_operators() -> None:
    now = counts((10, 8, 2), (90, 0, 0))
    paused = r.operate(r.start(T0), "pause", now, T0 + 1).state
    assert paused.state == r.PAUSED and paused.reason == "paused by an operator"
    with pytest.raises(r.RolloutError, match="paused already"):
        r.operate(paused, "pause", now, T0)
    resumed = r.operate(paused, "resume", now, T0 + 2).state
    assert resumed.state == r.RUNNING and resumed.accepted == (2,)
    with pytest.raises(r.RolloutError, match="nothing to resume"):
        r.operate(resumed, "resume", now, T0)
    # the accepted failures do not pause it again, nor hold the stage back; a new one pauses it
    assert r.evaluate(resumed, attrs.evolve(POLICY, soak=0), now, T0 + 3).state.stage == 1
    assert r.evaluate(resumed, POLICY, counts((10, 7, 3), (90, 0, 0)), T0 + 3).state.state == r.PAUSED
    advanced = r.operate(paused, "advance", now, T0 + 5).state
    assert (advanced.state, advanced.stage, advanced.stage_started_at) == (r.RUNNING, 1, T0 + 5)
    done = r.operate(advanced, "advance", now, T0 + 6).state
    assert done.state == r.COMPLETED
    aborted = r.operate(advanced, "abort", now, T0 + 7).state
    assert aborted.state == r.ABORTED
    for ended in (done, aborted):
        with pytest.raises(r.RolloutError, match="cannot resume"):
            r.operate(ended, "resume", now, T0)
    with pytest.raises(r.RolloutError, match="unknown operation"):
        r.operate(advanced, "rewind", now, T0)


def test_offering_follows_the_current_stage() -> None:
    assert r.offered(r.RUNNING, 0, 0) and not r.offered(r.RUNNING, 0, 1)
    assert r.offered(r.PAUSED, 1, 1)  # a pause offers no new stage, but keeps the started ones
    assert not r.offered(r.ABORTED, 3, 0)
    assert r.in_order([1, 2, 3, 4], {3}) == [1, 2]
    assert r.in_order([1, 2], set()) == [1, 2]


def test_clients_appearing_mid_rollout_join_their_stage() -> None:
    stages = r.parse_stages("canary,all")
    state = r.State(r.RUNNING, 1, T0)
    # a new client labelled canary, and a new plain one: both in started stages
    assert r.offered(state.state, state.stage, r.stage_of(stages, 500, {"group": "canary"}))
    assert r.offered(state.state, state.stage, r.stage_of(stages, 501, {}))
    early = r.start(T0)
    assert not r.offered(early.state, early.stage, r.stage_of(stages, 501, {}))


stage_counts = st.builds(
    lambda members, applied, failed: r.Counts(
        members, min(applied, members), min(failed, members - min(applied, members))
    ),
    st.integers(0, 50),
    st.integers(0, 50),
    st.integers(0, 50),
)


@settings(max_examples=300)
@given(
    st.lists(stage_counts, min_size=1, max_size=5),
    st.integers(0, 4),
    st.sampled_from(r.STATES),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 1000),
    st.floats(0, 2000),
)
def test_evaluate_keeps_its_promises(
    stages: list[r.Counts],
    stage: int,
    state_name: str,
    success: float,
    error: float,
    soak: float,
    later: float,
) -> None:
    stage = min(stage, len(stages) - 1)
    state = r.State(state_name, stage, T0)
    policy = r.Policy(success, error, soak)
    step = r.evaluate(state, policy, stages, T0 + later)
    new = step.state
    if state_name != r.RUNNING:
        assert new == state
        return
    assert new.stage >= stage and new.stage < len(stages)  # never backwards, never past the end
    assert new.state in (r.RUNNING, r.PAUSED, r.COMPLETED)
    if new.state == r.PAUSED:
        assert new.stage == stage  # a pause starts nothing
        c = [s for s in stages[: stage + 1] if s.reported and s.failed / s.reported > error]
        assert c
    for index in range(stage, new.stage):  # every stage it went past passed (nothing accepted here)
        c = stages[index]
        assert c.members == 0 or (c.reported and c.applied / c.reported >= success)
        if index == stage and c.members:
            assert later >= soak
    if new.state == r.COMPLETED:
        assert new.stage == len(stages) - 1
    assert (new != state) == bool(step.events)


@settings(max_examples=200)
@given(st.lists(st.sampled_from(r.OPERATIONS), max_size=12), st.integers(1, 4))
def test_operator_sequences_stay_valid(operations: list[str], n: int) -> None:
    state = r.start(T0)
    now = [r.Counts(3, 1, 1)] * n
    for operation in operations:
        try:
            state = r.operate(state, operation, now, T0).state
        except r.RolloutError:
            continue
        assert state.state in r.STATES and 0 <= state.stage < n
    if state.state in (r.COMPLETED, r.ABORTED):
        for operation in r.OPERATIONS:
            with pytest.raises(r.RolloutError):
                r.operate(state, operation, now, T0)


# -- over time -------------------------------------------------------------------------------------


def test_timeline_counts_as_of_each_time() -> None:
    events = [
        (T0 + 10, 1, "1", "applied"),
        (T0 + 20, 2, "1", "failed"),
        (T0 + 30, 2, "1", "applied"),
        (T0 + 5, 3, "9", "applied"),  # another version: not counted
    ]
    members = {1: 0, 2: 0, 3: 1, 4: None}
    ends = r.bucket_ends(T0, T0 + 30, 3)
    assert ends == [T0 + 10, T0 + 20, T0 + 30]
    history = r.timeline(events, members, ["1"], 2, ends)
    assert [h[0].to_json() for h in history] == [
        {"members": 2, "applied": 1, "failed": 0, "pending": 1},
        {"members": 2, "applied": 1, "failed": 1, "pending": 0},
        {"members": 2, "applied": 2, "failed": 0, "pending": 0},
    ]
    assert all(h[1] == r.Counts(1, 0, 0) for h in history)


def test_a_client_is_applied_only_when_every_version_is() -> None:
    assert r.client_state(["applied", "applied"]) == "applied"
    assert r.client_state(["applied", "pending"]) == "pending"
    assert r.client_state(["applied", "failed"]) == "failed"
    assert r.client_state([]) == "pending"


# -- app-version requirements ----------------------------------------------------------------------


def test_requirements_parse_and_hold() -> None:
    sql = "-- migsync:requires app>=2.3\n--migsync:requires app<3, app!=2.5\nALTER TABLE t ADD c INT"
    needs = requires.parse(sql, "m.sql")
    assert requires.describe(needs) == "app>=2.3, app<3, app!=2.5"
    assert requires.satisfied(needs, "2.3")
    assert requires.satisfied(needs, "2.10.1-beta")
    assert not requires.satisfied(needs, "2.2.9")
    assert not requires.satisfied(needs, "2.5.0")
    assert not requires.satisfied(needs, "3")
    assert not requires.satisfied(needs, None)  # never said: held
    assert not requires.satisfied(needs, "banana")
    assert requires.satisfied((), None)


@pytest.mark.parametrize(
    "line", ["-- migsync:requires", "-- migsync:requires app~2", "-- migsync:requires db>=1"]
)
def test_a_bad_requirement_names_file_and_line(line: str) -> None:
    with pytest.raises(SourceError, match=r"m\.sql.*2|line 2"):
        requires.parse(f"SELECT 1;\n{line}\n", "m.sql")
