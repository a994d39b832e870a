"""Pure evaluation of expansion criteria and rollback triggers over signal windows.

No database, no clock: callers pass what the windows hold, the rules, the context tags in force
and the time. The rules:

- **Event time.** A trigger's windows end at its *watermark*: the newest sample's own time
  (`observed_at`, never later than now). Samples arriving late still land in the windows they
  were measured in, and every arrival re-evaluates. A sample received more than the trigger's
  `allowed_lateness` after it was measured is too late to count: it is stored, flagged and
  counted on the plan page, never used.
- **Breach statistic.** A trigger breaches when at least `breach_share` % of its sustained-for
  window's samples are beyond the threshold (default 50 %: the window's median is beyond it, so
  isolated noisy samples can neither fire it nor hold it off), or, with the `mean` statistic,
  when the window's mean is. A percentile is a share: "p95 beyond 800" is "at least 5 % of
  samples beyond 800"; 100 % is "every sample", the rule before these settings.
- **Flapping.** It also fires when, of the last `flap_windows` sustained-for windows, at least
  `flap_breaches` had their median (or their mean) beyond the threshold (default 3 of 5): a
  metric that keeps coming back beyond the threshold though no window is as consistent as a
  stricter share asks.
- **Sparse data.** With fewer than `min_samples` samples in the window, the trigger uses the
  longer window it needs, back to `no_data_after` before the watermark. With fewer still (once
  the plan has been live that long), the samples it has decide only whether a person is asked
  at once: an override window, never an automatic action; otherwise it is *inconclusive*.
- **No data is an event.** Fewer than `min_samples` samples received within `no_data_after`
  (default twice the sustained-for time) is *signals lost*: the owners are told, the trigger's
  `on_no_data` is done and expansion freezes (rollouts.signals). A trigger whose last window
  breached before its signal went quiet still fires.
- **Context tags cover only what they expect.** A tag expecting a change of the trigger's metric
  widens that threshold by the change; a breach beyond the widened threshold is handled by the
  tier as if there were no tag. A migration or maintenance window (no magnitude) turns an
  automatic action into an override window: a person can stop it, silence proceeds. The
  evidence names each tag and what it did.
- Criteria hold over their window on the mean of at least `min_samples` samples, and only on
  fresh ones: too few, or none since a given time, is *inconclusive*: it never passes silently
  (it blocks an automatic expansion and asks a person) and never rolls back by itself.
- Non-finite values are ignored and counted, so a NaN can never make a breached trigger hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

INCONCLUSIVE = "inconclusive"
MET, NOT_MET = "met", "not_met"
FIRED, HOLDING = "fired", "holding"
NO_DATA = "no_data"

SHARE, MEAN = "share", "mean"

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
    """What criterion evaluation needs from a window of samples."""

    count: int = 0
    ignored: int = 0
    mean: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    first_at: datetime | None = None
    last_at: datetime | None = None


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

    def as_evidence(self, effect: str, detail: str = "") -> dict:
        data = {"id": self.id, "label": self.label, "effect": effect, "reason": self.reason, "author": self.author}
        if detail:
            data["detail"] = detail
        return data


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
    statistic: str = SHARE
    breach_share: float = 50.0
    flap_windows: int = 5
    flap_breaches: int = 3
    no_data_after: timedelta | None = None  # None: twice the sustained-for time

    @property
    def rule(self) -> str:
        return (f"{self.metric} {symbol(self.operator)} {self.threshold:g} "
                f"sustained for {duration_label(self.sustained_for)}")

    @property
    def no_data(self) -> timedelta:
        return self.no_data_after if self.no_data_after is not None else 2 * self.sustained_for

    @property
    def flapping_enabled(self) -> bool:
        return self.flap_breaches > 0 and self.flap_windows > 0

    @property
    def windows_needed(self) -> int:
        """How many consecutive sustained-for windows the evaluation reads (the flapping rule's)."""
        return max(1, self.flap_windows if self.flapping_enabled else 1)

    @property
    def statistic_label(self) -> str:
        return f"≥ {self.breach_share:g} % beyond" if self.statistic == SHARE else "mean beyond"


# -- what a trigger's windows hold -------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """One window (start, end] of a trigger's metric: how many samples, their sum, and how many
    were beyond each of the thresholds the caller counted against (`TriggerSamples.thresholds`)."""

    start: datetime
    end: datetime
    count: int = 0
    total: float = 0.0
    beyond: tuple[int, ...] = ()

    @property
    def mean(self) -> float | None:
        if not self.count:
            return None
        mean = self.total / self.count
        return mean if math.isfinite(mean) else (math.copysign(1e308, mean))

    def share(self, index: int) -> float | None:
        return 100.0 * self.beyond[index] / self.count if self.count else None


@dataclass(frozen=True)
class TriggerSamples:
    """Everything a trigger's evaluation reads, gathered by the caller (SQL, or `collect`).

    `windows`: `windows_needed` consecutive sustained-for windows ending at the watermark, newest
    first. `newest`: up to `min_samples` newest counted samples within `no_data_after` before the
    watermark, newest first. `received`: the receive times of up to `min_samples` counted samples
    received most recently (newest first); those within `no_data_after` of now are what "signals
    lost" counts. `watching_since`: when the plan started (nothing is lost before no_data_after).
    """

    now: datetime
    watermark: datetime
    thresholds: tuple[float, ...]
    windows: tuple[Window, ...]
    newest: tuple[tuple[datetime, float], ...] = ()
    received: tuple[datetime, ...] = ()
    watching_since: datetime | None = None
    late: int = 0
    ignored: int = 0


def thresholds_for(rule: Trigger, tags: Sequence[Tag]) -> tuple[float, ...]:
    """The thresholds a trigger's windows must be counted against: the written one, then the one
    the widest tag on its metric allows (when a tag is in force)."""
    tag = _widening_tag(rule, tags)
    if tag is None:
        return (rule.threshold,)
    return (rule.threshold, widened(rule.threshold, rule.operator, tag.percent))


def collect(rule: Trigger, samples: Iterable[tuple], *, now: datetime, thresholds: Sequence[float] | None = None,
            lateness: timedelta | None = None, watching_since: datetime | None = None) -> TriggerSamples:
    """`TriggerSamples` from raw samples `(observed_at, value)` or `(observed_at, value, received_at)`
    (received at their own time when absent). The database computes the same with aggregates
    (rollouts.selectors); this is the reference, and what tests use."""
    thresholds = tuple(thresholds or (rule.threshold,))
    counted, late, ignored = [], 0, 0
    for sample in samples:
        at, value = sample[0], sample[1]
        received = sample[2] if len(sample) > 2 else at
        if not is_finite(value):
            ignored += 1
            continue
        if lateness is not None and received - at > lateness:
            late += 1
            continue
        counted.append((at, float(value), received))
    observed = [s for s in counted if s[0] <= now]
    watermark = max((s[0] for s in observed), default=now)
    windows = []
    for i in range(rule.windows_needed):
        end = watermark - i * rule.sustained_for
        start = end - rule.sustained_for
        inside = [v for at, v, _ in observed if start < at <= end]
        windows.append(Window(start, end, len(inside), sum(inside),
                              tuple(sum(1 for v in inside if compare(v, rule.operator, t)) for t in thresholds)))
    floor = watermark - rule.no_data
    newest = sorted(((at, v) for at, v, _ in observed if floor < at <= watermark), reverse=True)[:rule.min_samples]
    received = sorted((r for _, _, r in counted if r <= now), reverse=True)[:rule.min_samples]
    return TriggerSamples(now, watermark, thresholds, tuple(windows), tuple(newest), tuple(received),
                          watching_since, late, ignored)


# -- checks ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """The outcome of one rule now, with everything a person needs to see why."""

    kind: str  # "criterion" | "trigger"
    rule_id: int
    rule: str
    metric: str
    status: str
    value: float | None  # the window's mean
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
    # A person is asked before anything happens: an override window instead of an automatic action.
    ask_first: bool = False
    note: str = ""
    share: float | None = None  # percent of the window's samples beyond the threshold in force
    statistic: str = ""
    flapping: bool = False
    sparse: bool = False
    lost: bool = False
    late: int = 0
    tags: tuple[dict, ...] = ()
    last_received_at: datetime | None = None
    # When this trigger would count as "signals lost" if nothing more arrived (None: already is).
    lost_at: datetime | None = None

    def as_evidence(self) -> dict:
        data = asdict(self)
        data.pop("lost_at")
        for name in ("window_start", "window_end", "last_received_at"):
            if data[name] is not None:
                data[name] = data[name].isoformat()
        data["tags"] = list(self.tags)
        return {k: v for k, v in data.items()
                if k in ("value", "status", "samples")
                or not (v is None or v is False or v == "" or v == [] or (k in ("ignored", "late") and v == 0))}


def widened(threshold: float, operator: str, percent: float) -> float:
    delta = abs(threshold) * percent / 100.0
    return threshold + delta if operator in RAISES_WHEN_WIDENED else threshold - delta


def evaluate_criterion(rule: Criterion, stats: WindowStats, *, start: datetime, end: datetime,
                       fresh_after: datetime | None = None) -> Check:
    """Met when the window's mean satisfies the rule on at least `min_samples` finite samples, the
    newest of them after `fresh_after` (a metric gone quiet never counts as met)."""
    status, note = INCONCLUSIVE, ""
    if stats.count < rule.min_samples:
        note = f"{stats.count} of {rule.min_samples} samples needed"
    elif fresh_after is not None and (stats.last_at is None or stats.last_at <= fresh_after):
        note = f"no sample since {stats.last_at:%H:%M:%S}: stale samples never count as met"
    else:
        status = MET if compare(stats.mean, rule.operator, rule.threshold) else NOT_MET
    return Check("criterion", rule.id, rule.rule, rule.metric, status, stats.mean, rule.threshold, rule.threshold,
                 rule.operator, stats.count, rule.min_samples, stats.ignored, start, end, note=note)


def _widening_tag(rule: Trigger, tags: Sequence[Tag]) -> Tag | None:
    metric_tags = [t for t in tags if t.metric == rule.metric and t.percent]
    return max(metric_tags, key=lambda t: (t.percent, t.id)) if metric_tags else None


def _breached(rule: Trigger, window: Window, index: int, threshold: float, share: float) -> bool:
    """The window's statistic beyond `threshold` (its samples counted at `index`): at least `share`
    percent of its samples, or its mean with the mean statistic."""
    if not window.count:
        return False
    if rule.statistic == MEAN:
        return compare(window.mean, rule.operator, threshold)
    return window.beyond[index] * 100.0 >= share * window.count


def _sample_window(rule: Trigger, samples: Sequence[tuple[datetime, float]], end: datetime,
                   thresholds: Sequence[float]) -> Window:
    values = [v for _, v in samples]
    return Window(samples[-1][0], end, len(values), sum(values),
                  tuple(sum(1 for v in values if compare(v, rule.operator, t)) for t in thresholds))


@dataclass(frozen=True)
class _Verdict:
    fired: bool
    window: Window
    note: str
    flapping: bool = False
    sparse: bool = False
    sparse_breach: bool = False
    too_few: bool = False


def _judge(rule: Trigger, data: TriggerSamples, index: int) -> _Verdict:
    """Does the trigger breach at the threshold counted at `index`? Sustained, flapping, sparse."""
    threshold = data.thresholds[index]
    main, m = data.windows[0], rule.min_samples
    beyond = f"{symbol(rule.operator)} {threshold:g}"
    if main.count >= m:
        if _breached(rule, main, index, threshold, rule.breach_share):
            return _Verdict(True, main, _describe(rule, main, index, beyond))
        window, sparse = main, False
    elif len(data.newest) >= m:
        window, sparse = _sample_window(rule, data.newest, data.watermark, data.thresholds), True
        span = duration_label(data.watermark - window.start)
        if _breached(rule, window, index, threshold, rule.breach_share):
            return _Verdict(True, window, f"sparse: the last {m} samples span {span}; "
                                          + _describe(rule, window, index, beyond), sparse=True)
    else:
        have = len(data.newest)
        note = f"{have} of {m} samples needed within {duration_label(rule.no_data)}"
        # A signal that just started is not sparse: it has until no_data_after to deliver its samples.
        started = data.watching_since is None or data.now - data.watching_since >= rule.no_data
        if have:
            window = _sample_window(rule, data.newest, data.watermark, data.thresholds)
            if started and _breached(rule, window, index, threshold, rule.breach_share):
                # Too little to act on alone, too much to ignore: a person is asked at once.
                return _Verdict(True, window, f"sparse: {note}, and {_describe(rule, window, index, beyond)}; "
                                              "a person is asked", sparse=True, sparse_breach=True)
        else:
            window = main
        return _Verdict(False, window, note, too_few=True)
    if rule.flapping_enabled:
        hits = sum(1 for w in data.windows[:rule.flap_windows]
                   if w.count >= m and _breached(rule, w, index, threshold, 50.0))
        if hits >= rule.flap_breaches:
            return _Verdict(True, window, f"flapping: {hits} of the last {rule.flap_windows} windows of "
                                          f"{duration_label(rule.sustained_for)} had their "
                                          f"{'median' if rule.statistic == SHARE else 'mean'} {beyond}",
                            flapping=True, sparse=sparse)
    return _Verdict(False, window, "", sparse=sparse)


def _describe(rule: Trigger, window: Window, index: int, beyond: str) -> str:
    if rule.statistic == MEAN:
        return f"mean {window.mean:g} {beyond} over {window.count} samples"
    return f"{window.share(index):.0f} % of {window.count} samples {beyond}"


def evaluate_trigger(rule: Trigger, data: TriggerSamples, tags: Sequence[Tag] = ()) -> Check:
    """The trigger's status at its watermark, with the rules in the module docstring."""
    widening = _widening_tag(rule, tags)
    index = 0
    if widening is not None:
        wider = widened(rule.threshold, rule.operator, widening.percent)
        if wider not in data.thresholds:
            raise ValueError(f"the windows of {rule.rule} were not counted against {wider:g}: use thresholds_for()")
        index = data.thresholds.index(wider)
    threshold = data.thresholds[index]
    verdict = _judge(rule, data, index)
    window = verdict.window
    status = FIRED if verdict.fired else (INCONCLUSIVE if verdict.too_few else HOLDING)
    note, tag, evidence_tags, ask_first = verdict.note, None, [], verdict.sparse_breach
    if widening is not None:
        if verdict.fired:
            tag = widening.as_evidence("exceeded", f"beyond the expected change: {threshold:g} instead of "
                                                   f"{rule.threshold:g}; handled by the tier as if untagged")
            note = f"{note}; beyond the expected change ({widening.label})"
        elif not verdict.too_few and _judge(rule, data, 0).fired:
            tag = widening.as_evidence("widened", f"threshold {rule.threshold:g} → {threshold:g}")
            note = f"within the expected change ({widening.label})"
        else:
            tag = widening.as_evidence("in force", f"threshold {rule.threshold:g} → {threshold:g}; not needed")
        evidence_tags.append(tag)
    window_tags = [t for t in tags if t.is_window]
    if window_tags:
        window_tag = max(window_tags, key=lambda t: t.id)
        if verdict.fired and not ask_first:
            ask_first = True
            effect = window_tag.as_evidence("override_window", "an automatic action becomes an override window: "
                                                               "a person can stop it, silence proceeds")
            note = f"{note}; during {window_tag.label}: a person can stop it"
            tag = effect
            evidence_tags.append(effect)
        else:
            evidence_tags.append(window_tag.as_evidence("in force", "nothing to soften"))
    lost, lost_at = _signals_lost(rule, data)
    if lost:
        why = (f"signals lost: {len(_recent(rule, data))} of {rule.min_samples} samples received within "
               f"{duration_label(rule.no_data)}")
        if data.late:
            why += f" ({data.late} arrived too late to count)"
        note = f"{why}; {note}" if note else why
        if status != FIRED:
            status = NO_DATA
    share = window.share(index) if window.count and window.beyond else None
    return Check(
        "trigger", rule.id, rule.rule, rule.metric, status, window.mean, threshold, rule.threshold, rule.operator,
        window.count, rule.min_samples, data.ignored, window.start, window.end, severity=rule.severity, tag=tag,
        ask_first=ask_first, note=note.strip("; "), share=share, statistic=rule.statistic_label,
        flapping=verdict.flapping, sparse=verdict.sparse, lost=lost, late=data.late, tags=tuple(evidence_tags),
        last_received_at=data.received[0] if data.received else None, lost_at=lost_at,
    )


def _recent(rule: Trigger, data: TriggerSamples) -> list[datetime]:
    return [r for r in data.received if r > data.now - rule.no_data]


def _signals_lost(rule: Trigger, data: TriggerSamples) -> tuple[bool, datetime | None]:
    """Lost: fewer than `min_samples` samples received within `no_data_after`, once the plan has
    been live that long. Otherwise also when it would be lost if nothing more arrived."""
    if data.watching_since is None:
        return False, None
    recent = _recent(rule, data)
    grace = data.watching_since + rule.no_data
    if len(recent) >= rule.min_samples:
        return False, max(grace, recent[rule.min_samples - 1] + rule.no_data)
    if data.now < grace:
        return False, grace
    return True, None


def worsened(operator: str, threshold: float, before: float | None, now: float | None, percent: float) -> bool:
    """Whether a breach got materially worse since a person rejected it: the window's mean moved
    further beyond the threshold by at least `percent` % of the threshold."""
    if before is None or now is None:
        return False
    step = abs(threshold) * percent / 100.0
    if operator in RAISES_WHEN_WIDENED:
        return now >= before + step
    return now <= before - step


# -- the decision ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Situation:
    """What the decision needs to know about the plan besides the checks."""

    state: str  # active | paused | fallback
    tier: int
    soak_complete: bool
    has_next_ring: bool
    next_ring_is_approval_point: bool = False
    signals_lost: tuple[str, ...] = ()  # rules whose signals are lost (expansion freezes)


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
            if self.trigger.tags:
                data["context_tags"] = list(self.trigger.tags)
        return data


def handling_of(check: Check, tier: int) -> str:
    handling = HANDLING_BY_TIER[tier]
    if check.ask_first and handling == EXECUTE:
        return OVERRIDE_WINDOW
    return handling


def decide(situation: Situation, criteria: Sequence[Check], triggers: Sequence[Check]) -> Decision:
    """What to do now. Containment wins over expansion; critical (rollback) over warning (fallback)."""
    checks = (*triggers, *criteria)
    fired = [c for c in triggers if c.status == FIRED]
    engaged = ""
    if situation.state == "fallback":
        engaged = ", ".join(c.rule for c in fired if c.severity != "critical")
        fired = [c for c in fired if c.severity == "critical"]
    if fired:
        # An automatic action wins over one that asks first; a rollback over a fallback.
        trigger = min(fired, key=lambda c: (c.ask_first, c.severity != "critical", c.rule_id))
        action = "rollback" if trigger.severity == "critical" else "fallback"
        return Decision(action, handling_of(trigger, situation.tier),
                        f"{trigger.rule} fired ({trigger.note or 'breached'})", trigger, checks)
    if engaged:
        return Decision("none", reason=f"the fallback mode is engaged; still breached: {engaged}", checks=checks)
    if situation.signals_lost:
        return Decision("none", reason=f"signals lost ({', '.join(situation.signals_lost)}): expansion is frozen "
                                       "until samples are back", checks=checks)
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


ALARM = {HOLDING: 0, MET: 0, NOT_MET: 1, INCONCLUSIVE: 1, FIRED: 2, NO_DATA: 2}
