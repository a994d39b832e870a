"""Pure evaluation of expansion criteria and rollback triggers over signal windows.

No database, no clock: callers pass the window statistics, the rules, the context tags in force
and the time. The rules:

- Too few finite samples (or none) is *inconclusive*: it never passes silently (it blocks an
  automatic expansion and asks a person) and never fires a rollback by itself.
- Non-finite values are ignored and counted, so a NaN can never make a breached trigger hold.
- A trigger fires when every sample of its sustained-for window breaches the threshold.
- A context tag in force that expects a change of the metric widens the threshold by that
  change; a breach beyond the widened threshold, or any breach during a migration or maintenance
  window, becomes a recommendation for a person instead of an automatic action. The evidence
  names the tag.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta

INCONCLUSIVE = "inconclusive"
MET, NOT_MET = "met", "not_met"
FIRED, HOLDING = "fired", "holding"

OPERATORS = {
    "lt": (lambda a, b: a < b, "<"),
    "lte": (lambda a, b: a <= b, "≤"),
    "gt": (lambda a, b: a > b, ">"),
    "gte": (lambda a, b: a >= b, "≥"),
}
# Widening tags only ever relax a trigger: "> 800" becomes "> 920" with +15 %, "< 0.8" becomes "< 0.68".
RAISES_WHEN_WIDENED = {"gt", "gte"}

EXECUTE, OVERRIDE_WINDOW, GATE = "execute", "override_window", "gate"
HANDLING_BY_TIER = {1: EXECUTE, 2: OVERRIDE_WINDOW, 3: GATE}


def compare(value: float, operator: str, threshold: float) -> bool:
    return OPERATORS[operator][0](value, threshold)


def symbol(operator: str) -> str:
    return OPERATORS[operator][1]


def is_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class WindowStats:
    """What evaluation needs from a window of samples: "every sample breaches `> t`" is `min > t`."""

    count: int = 0
    ignored: int = 0
    mean: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    first_at: datetime | None = None
    last_at: datetime | None = None

    def worst_case_for(self, operator: str) -> float | None:
        """The sample closest to holding: all samples breach `op t` iff this one does."""
        return self.minimum if operator in RAISES_WHEN_WIDENED else self.maximum


def stats_of(samples: Iterable[tuple[datetime, float]], start: datetime | None = None,
             end: datetime | None = None) -> WindowStats:
    """Statistics of the samples in (start, end]; non-finite values are counted as ignored."""
    count = ignored = 0
    total = 0.0
    minimum = maximum = None
    first_at = last_at = None
    for at, value in samples:
        if (start is not None and at <= start) or (end is not None and at > end):
            continue
        if not is_finite(value):
            ignored += 1
            continue
        count += 1
        total += value
        minimum = value if minimum is None else min(minimum, value)
        maximum = value if maximum is None else max(maximum, value)
        first_at = at if first_at is None else min(first_at, at)
        last_at = at if last_at is None else max(last_at, at)
    mean = total / count if count else None
    if mean is not None and not math.isfinite(mean):  # sums of huge values overflow; keep order
        mean = maximum if mean > 0 else minimum
    return WindowStats(count, ignored, mean, minimum, maximum, first_at, last_at)


@dataclass(frozen=True)
class Tag:
    """A context tag in force. `metric` and `percent` are None for window tags."""

    id: int
    label: str
    kind: str
    metric: str | None
    percent: float | None
    reason: str = ""
    author: str = ""

    @property
    def is_window(self) -> bool:
        return self.metric is None

    def as_evidence(self, effect: str) -> dict:
        return {"id": self.id, "label": self.label, "effect": effect, "reason": self.reason, "author": self.author}


@dataclass(frozen=True)
class Criterion:
    id: int
    metric: str
    operator: str
    threshold: float
    window: timedelta
    min_samples: int

    @property
    def rule(self) -> str:
        return f"{self.metric} {symbol(self.operator)} {self.threshold:g} over {duration_label(self.window)}"


@dataclass(frozen=True)
class Trigger:
    id: int
    metric: str
    operator: str
    threshold: float
    sustained_for: timedelta
    min_samples: int
    severity: str  # "warning" (engage fallback) or "critical" (roll back)

    @property
    def rule(self) -> str:
        return f"{self.metric} {symbol(self.operator)} {self.threshold:g} sustained for {duration_label(self.sustained_for)}"


@dataclass(frozen=True)
class Check:
    """The outcome of one rule now, with everything a person needs to see why."""

    kind: str  # "criterion" | "trigger"
    rule_id: int
    rule: str
    metric: str
    status: str
    value: float | None
    threshold: float
    base_threshold: float
    operator: str
    samples: int
    min_samples: int
    ignored: int
    window_start: datetime
    window_end: datetime
    severity: str = ""
    tag: dict | None = None
    recommend_only: bool = False
    note: str = ""

    def as_evidence(self) -> dict:
        data = asdict(self)
        data["window_start"] = self.window_start.isoformat()
        data["window_end"] = self.window_end.isoformat()
        return {k: v for k, v in data.items() if v not in (None, "", False) or k in ("value", "status")}


def widened(threshold: float, operator: str, percent: float) -> float:
    delta = abs(threshold) * percent / 100.0
    return threshold + delta if operator in RAISES_WHEN_WIDENED else threshold - delta


def evaluate_criterion(rule: Criterion, stats: WindowStats, *, start: datetime, end: datetime) -> Check:
    """Met when the window's mean satisfies the rule on at least `min_samples` finite samples."""
    status, note = INCONCLUSIVE, ""
    if stats.count < rule.min_samples:
        note = f"{stats.count} of {rule.min_samples} samples needed"
    else:
        status = MET if compare(stats.mean, rule.operator, rule.threshold) else NOT_MET
    return Check("criterion", rule.id, rule.rule, rule.metric, status, stats.mean, rule.threshold, rule.threshold,
                 rule.operator, stats.count, rule.min_samples, stats.ignored, start, end, note=note)


def evaluate_trigger(rule: Trigger, stats: WindowStats, tags: Sequence[Tag], *, start: datetime,
                     end: datetime) -> Check:
    """Fired when every finite sample of the window breaches; tags widen or downgrade (see module)."""
    worst = stats.worst_case_for(rule.operator)
    check = Check("trigger", rule.id, rule.rule, rule.metric, HOLDING, worst, rule.threshold, rule.threshold,
                  rule.operator, stats.count, rule.min_samples, stats.ignored, start, end, severity=rule.severity)
    if stats.count < rule.min_samples:
        return replace(check, status=INCONCLUSIVE, note=f"{stats.count} of {rule.min_samples} samples needed")
    if not compare(worst, rule.operator, rule.threshold):
        return check
    metric_tags = [t for t in tags if t.metric == rule.metric and t.percent]
    if metric_tags:
        tag = max(metric_tags, key=lambda t: (t.percent, t.id))
        wider = widened(rule.threshold, rule.operator, tag.percent)
        if not compare(worst, rule.operator, wider):
            return replace(check, threshold=wider, tag=tag.as_evidence("widened"),
                            note=f"within the expected change ({tag.label})")
        return replace(check, status=FIRED, threshold=wider, tag=tag.as_evidence("recommendation"),
                        recommend_only=True, note=f"beyond the expected change ({tag.label}); a person decides")
    window_tags = [t for t in tags if t.is_window]
    if window_tags:
        tag = max(window_tags, key=lambda t: t.id)
        return replace(check, status=FIRED, tag=tag.as_evidence("recommendation"), recommend_only=True,
                        note=f"breached during {tag.label}; a person decides")
    return replace(check, status=FIRED)


@dataclass(frozen=True)
class Situation:
    """What the decision needs to know about the plan besides the checks."""

    state: str  # active | paused | fallback
    tier: int
    soak_complete: bool
    has_next_ring: bool
    next_ring_is_approval_point: bool = False


@dataclass(frozen=True)
class Decision:
    action: str  # "none" | "rollback" | "fallback" | "expand"
    handling: str = ""  # execute | override_window | gate
    reason: str = ""
    trigger: Check | None = None
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def is_action(self) -> bool:
        return self.action != "none"

    def evidence(self) -> dict:
        data = {
            "decision": self.action,
            "handling": self.handling,
            "reason": self.reason,
            "checks": [c.as_evidence() for c in self.checks],
        }
        if self.trigger is not None:
            data["trigger"] = self.trigger.as_evidence()
            if self.trigger.tag:
                data["context_tag"] = self.trigger.tag
        return data


def decide(situation: Situation, criteria: Sequence[Check], triggers: Sequence[Check]) -> Decision:
    """What to do now. Containment wins over expansion; critical (rollback) over warning (fallback)."""
    checks = (*triggers, *criteria)
    fired = [c for c in triggers if c.status == FIRED]
    engaged = ""
    if situation.state == "fallback":
        engaged = ", ".join(c.rule for c in fired if c.severity != "critical")
        fired = [c for c in fired if c.severity == "critical"]
    if fired:
        # An automatic action wins over a recommendation; a rollback over a fallback.
        trigger = min(fired, key=lambda c: (c.recommend_only, c.severity != "critical", c.rule_id))
        action = "rollback" if trigger.severity == "critical" else "fallback"
        handling = GATE if trigger.recommend_only else HANDLING_BY_TIER[situation.tier]
        return Decision(action, handling, f"{trigger.rule} fired ({trigger.note or 'breached'})", trigger, checks)
    if engaged:
        return Decision("none", reason=f"the fallback mode is engaged; still breached: {engaged}", checks=checks)
    if situation.state != "active" or not situation.soak_complete or not situation.has_next_ring:
        return Decision("none", reason="no trigger fired", checks=checks)
    if any(c.status == NOT_MET for c in criteria):
        missing = ", ".join(c.rule for c in criteria if c.status == NOT_MET)
        return Decision("none", reason=f"expansion criteria not met: {missing}", checks=checks)
    unsure = [c for c in checks if c.status == INCONCLUSIVE]
    if unsure:
        names = ", ".join(f"{c.rule} ({c.note})" for c in unsure)
        return Decision("expand", GATE, f"inconclusive, a person decides: {names}", None, checks)
    if situation.tier == 1 and not situation.next_ring_is_approval_point:
        return Decision("expand", EXECUTE, "soak complete and every expansion criterion met", None, checks)
    why = "the next ring is an approval point" if situation.next_ring_is_approval_point else f"tier {situation.tier}"
    return Decision("expand", GATE, f"soak complete and every criterion met; needs approval ({why})", None, checks)


def duration_label(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


ALARM = {HOLDING: 0, MET: 0, NOT_MET: 1, INCONCLUSIVE: 1, FIRED: 2}
