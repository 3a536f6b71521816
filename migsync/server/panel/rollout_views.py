"""What the rollouts pages show, worked out from :class:`~migsync.server.rollout_store.RolloutStatus`
(no HTTP, no HTML here): per rollout, where it is, its current stage's error rate against the
threshold, which operations make sense, and per stage a chart of its clients over time.

A chart is a stacked area per stage: from the bottom, the clients that applied every version of
the rollout, those that failed one, and the rest (pending), at each of the status's times. Its
shapes are computed here as SVG point lists in a fixed box (:data:`CHART_W` x :data:`CHART_H`);
the template draws them, so nothing a client or admin typed reaches the SVG but as escaped text.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from migsync.server import rollouts as r
from migsync.server.rollout_store import AuditEntry, Rollout, RolloutStatus

__all__ = ["CHART_H", "CHART_W", "RolloutView", "StageChart", "chart", "rollout_view", "takes"]

CHART_W = 240
CHART_H = 72


@attrs.frozen
class StageChart:
    """One stage's chart: its name, its clients now, and the three areas as SVG ``points``."""

    name: str
    started: bool
    now: r.Counts
    applied: str
    failed: str
    pending: str
    #: the largest member count over time (the chart's full height)
    scale: int
    #: how many times the chart has (its x axis)
    points: int


def _xs(points: int) -> list[float]:
    if points <= 1:
        return [0.0, float(CHART_W)]
    return [CHART_W * i / (points - 1) for i in range(points)]


def _area(xs: Sequence[float], low: Sequence[float], high: Sequence[float], scale: int) -> str:
    """The polygon between two series (client counts, bottom to top), as SVG points."""

    def y(value: float) -> float:
        return CHART_H - (value / scale * CHART_H if scale else 0.0)

    top = [f"{x:.1f},{y(v):.1f}" for x, v in zip(xs, high, strict=True)]
    bottom = [f"{x:.1f},{y(v):.1f}" for x, v in zip(reversed(xs), reversed(low), strict=True)]
    return " ".join(top + bottom)


def chart(name: str, started: bool, history: Sequence[r.Counts], now: r.Counts) -> StageChart:
    """A stage's chart from its counts at each time (oldest first); none: the counts now."""
    series = list(history) or [now]
    if len(series) == 1:  # one time: a flat band across the box
        series = series * 2
    xs = _xs(len(series))
    scale = max(c.members for c in series)
    zero = [0.0] * len(series)
    applied = [float(c.applied) for c in series]
    failed_top = [float(c.applied + c.failed) for c in series]
    members = [float(c.members) for c in series]
    return StageChart(
        name,
        started,
        now,
        _area(xs, zero, applied, scale),
        _area(xs, applied, failed_top, scale),
        _area(xs, failed_top, members, scale),
        scale,
        len(series),
    )


@attrs.frozen
class RolloutView:
    """A rollout as its pages show it."""

    rollout: Rollout
    charts: tuple[StageChart, ...]
    audit: tuple[AuditEntry, ...]
    #: the times the charts span (the first and last), None without a history
    since: float | None
    until: float | None

    @property
    def id(self) -> int:
        return self.rollout.id

    @property
    def state(self) -> str:
        return self.rollout.state.state

    @property
    def stage_name(self) -> str:
        return self.rollout.stages[self.rollout.state.stage].name

    @property
    def stage_number(self) -> int:
        return self.rollout.state.stage + 1

    @property
    def current(self) -> r.Counts:
        return self.charts[self.rollout.state.stage].now

    @property
    def error_rate(self) -> float | None:
        """The failed share of the current stage's clients that reported (None: none reported)."""
        c = self.current
        return c.failed / c.reported if c.reported else None

    @property
    def over_threshold(self) -> bool:
        rate = self.error_rate
        return rate is not None and rate > self.rollout.policy.error_threshold

    @property
    def versions(self) -> str:
        return ", ".join(v.text for v in self.rollout.versions)

    @property
    def operations(self) -> tuple[str, ...]:
        """The operations the rollout's state allows, in the order the buttons show them."""
        if self.state == r.RUNNING:
            return ("pause", "advance", "abort")
        if self.state == r.PAUSED:
            return ("resume", "advance", "abort")
        return ()


def rollout_view(status: RolloutStatus) -> RolloutView:
    rollout = status.rollout
    charts = []
    for index, stage in enumerate(rollout.stages):
        history = [counts[index] for _at, counts in status.history]
        charts.append(chart(stage.name, index <= rollout.state.stage, history, status.counts[index]))
    times = [at for at, _counts in status.history]
    return RolloutView(
        rollout,
        tuple(charts),
        status.audit,
        times[0] if times else None,
        times[-1] if times else None,
    )


def takes(stage: r.Stage) -> str:
    """Which clients a stage takes, in words."""
    if stage.kind == "all":
        return "every client"
    if stage.kind == "label":
        return f"clients labelled {stage.key}={stage.value}"
    return f"clients whose id hashes into {stage.low:g}% to {stage.high:g}%"
