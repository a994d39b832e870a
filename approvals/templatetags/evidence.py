"""Evidence as a person reads it: each check with its metric, threshold, observed value, window and
verdict; the rule that fired; the links; anything else as labelled text, never a raw dict.

    {% load evidence %}
    {% with ev=approval.evidence|readable_evidence %}{% include "approvals/partials/evidence.html" %}{% endwith %}

An approval request's evidence comes from an agent (summary, metrics, links, anything else) or from
a rollout's evaluation (the decision, the trigger that fired, every check with its window). The
evidence bundle keeps the same dict split in parts; `bundle_evidence` puts it back together.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from django import template

register = template.Library()

SYMBOLS = {"gt": ">", "gte": "≥", "lt": "<", "lte": "≤", ">": ">", ">=": "≥", "<": "<", "<=": "≤", "=<": "≤",
           "=>": "≥"}
BEYOND = {">": lambda a, b: a > b, "≥": lambda a, b: a >= b, "<": lambda a, b: a < b, "≤": lambda a, b: a <= b}
VERDICTS = {"fired": "fired", "holding": "holding", "met": "met", "not_met": "not met",
            "inconclusive": "inconclusive", "no_data": "no data"}
HANDLING = {"execute": "runs at once, a containment owner reviews it afterwards",
            "override_window": "proceeds at the deadline unless a person overrides it",
            "gate": "waits for a person's approval"}
DECISIONS = {"rollback": "roll back", "fallback": "engage the fallback mode", "expand": "open the next ring",
             "none": "nothing"}
KNOWN = {"summary", "metrics", "links", "decision", "handling", "reason", "checks", "trigger", "context_tag",
         "context_tags"}
LINE_LIMIT = 40  # lines of "anything else" shown; the JSON download has every value


@dataclass
class Row:
    """One check or metric: what was measured against what, over which window, and the verdict."""

    metric: str
    rule: str = ""
    kind: str = ""
    threshold: str = ""
    observed: str = ""
    window: str = ""
    value: str = ""  # the observed value alone, and the window's length alone: for the one-line form
    span: str = ""
    verdict: str = ""  # fired | holding | met | not met | inconclusive | no data | beyond | within | ""
    notes: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)  # what the context tags in force did to it
    tag_labels: list[str] = field(default_factory=list)  # the same, short: `expected_latency_increase: 15% (exceeded)`

    @property
    def style(self) -> str:
        if self.verdict in ("fired", "not met", "beyond", "no data"):
            return "danger"
        if self.verdict in ("holding", "met", "within"):
            return "ok"
        return "warn" if self.verdict else ""

    @property
    def line(self) -> str:
        """The short form the queue shows: `latency_p95_ms 898 > 800 over 3 min: fired`."""
        text = f"{self.metric} {self.value or self.observed or '?'}"
        threshold = self.threshold.split(" (", 1)[0]
        if threshold:
            text += f" {threshold}" if threshold[0] in "<>≤≥" else f" vs {threshold}"
        if self.span or self.window:
            text += f" over {self.span or self.window}"
        return f"{text}: {self.verdict}" if self.verdict else text


@dataclass
class Evidence:
    summary: str = ""
    decision: str = ""
    fired: Row | None = None
    checks: list[Row] = field(default_factory=list)
    metrics: list[Row] = field(default_factory=list)
    links: list[dict] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        rows = self.metrics + ([self.fired] if self.fired else [])
        return [row.line for row in rows]

    def __bool__(self) -> bool:
        return bool(self.summary or self.decision or self.fired or self.checks or self.metrics or self.links
                    or self.tags or self.other)


def number(value: object) -> str:
    """A measured value without float noise: 898.3499999 → 898.35, 0.0400 → 0.04, 12.0 → 12."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if abs(value) >= 1e6:
            return f"{value:,.0f}"
        return f"{value:.3g}" if value and abs(value) < 1e-3 else f"{round(value, 3):g}"
    try:
        return number(float(str(value)))
    except ValueError:
        return str(value)


def _time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.astimezone(dt.UTC) if moment.tzinfo else moment


def _span(seconds: float) -> str:
    seconds = int(round(seconds))
    for unit, name in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= unit and seconds % unit == 0:
            return f"{seconds // unit} {name}"
    return f"{seconds // 60} min {seconds % 60} s" if seconds > 60 else f"{seconds} s"


def _window(start: object, end: object) -> tuple[str, str]:
    """(`3 min, 02:53:14–02:56:14 UTC`, `3 min`)."""
    first, last = _time(start), _time(end)
    if first is None or last is None:
        return "", ""
    day = "" if first.date() == last.date() else f"{first:%Y-%m-%d} "
    span = _span((last - first).total_seconds())
    return f"{span}, {day}{first:%H:%M:%S}–{last:%H:%M:%S} UTC", span


def _tag_line(tag: dict) -> str:
    text = f"{tag.get('label', 'a context tag')}: {str(tag.get('effect', '')).replace('_', ' ')}"
    if tag.get("detail"):
        text += f" ({tag['detail']})"
    if tag.get("reason"):
        text += f" — “{tag['reason']}”"
    return text


def check_row(check: dict) -> Row:
    """A rollout evaluation's check (rollouts.evaluation.Check.as_evidence)."""
    symbol = SYMBOLS.get(str(check.get("operator", "")), str(check.get("operator", "")))
    threshold = f"{symbol} {number(check.get('threshold'))}".strip()
    base = check.get("base_threshold")
    if base is not None and number(base) != number(check.get("threshold")):
        threshold += f" (written {symbol} {number(base)}, widened by a context tag)"
    samples = check.get("samples")
    observed = ""
    if check.get("value") is not None:
        observed = f"{number(check['value'])} mean"
    if samples is not None:
        needed = check.get("min_samples")
        observed += f"{' over ' if observed else ''}{samples} sample{'s' if samples != 1 else ''}"
        if needed and samples < needed:
            observed += f" (needs {needed})"
    if check.get("share") is not None:
        observed += f"; {number(check['share'])} % beyond"
    if check.get("kind") == "trigger":
        kind = f"rollback trigger{', ' + str(check['severity']) if check.get('severity') else ''}"
    else:
        kind = "expansion criterion"
    notes = [str(check["note"])] if check.get("note") else []
    notes += [label for flag, label in (("flapping", "flapping: it keeps coming back beyond the threshold"),
                                        ("sparse", "sparse data: a longer window was used"),
                                        ("lost", "signals lost"),
                                        ("ask_first", "a person is asked before anything happens"))
              if check.get(flag)]
    if check.get("late"):
        notes.append(f"{check['late']} sample{'s' if check['late'] != 1 else ''} too late to count")
    if check.get("ignored"):
        notes.append(f"{check['ignored']} non-finite value{'s' if check['ignored'] != 1 else ''} ignored")
    in_force = [tag for tag in check.get("tags") or ([check["tag"]] if check.get("tag") else [])
                if isinstance(tag, dict)]
    tags = [_tag_line(tag) for tag in in_force]
    labels = [f"{tag.get('label', 'a tag')} ({str(tag.get('effect', '')).replace('_', ' ')})" for tag in in_force]
    status = str(check.get("status", ""))
    window, span = _window(check.get("window_start"), check.get("window_end"))
    return Row(metric=str(check.get("metric", "?")), rule=str(check.get("rule", "")), kind=kind, threshold=threshold,
               observed=observed, window=window, value=number(check.get("value")), span=span,
               verdict=VERDICTS.get(status, status.replace("_", " ")), notes=notes, tags=tags, tag_labels=labels)


def metric_row(metric: dict) -> Row:
    """A metric an agent attached: `{"metric", "value", "operator", "threshold", "window"}`."""
    symbol = SYMBOLS.get(str(metric.get("operator", "")), str(metric.get("operator", "")))
    threshold = f"{symbol} {number(metric['threshold'])}".strip() if "threshold" in metric else ""
    verdict = ""
    try:
        value, limit = float(metric["value"]), float(metric["threshold"])
        if symbol in BEYOND:
            verdict = "beyond" if BEYOND[symbol](value, limit) else "within"
    except (KeyError, TypeError, ValueError):
        pass
    return Row(metric=str(metric.get("metric", "?")), threshold=threshold, observed=number(metric.get("value")),
               window=str(metric.get("window") or ""), verdict=verdict)


def _flatten(value: object, path: str = "") -> Iterable[tuple[str, str]]:
    """Anything else as `path: value` lines a person reads (`customer.tier: gold`)."""
    if isinstance(value, dict):
        if not value:
            yield path or "—", "none"
        for key, item in value.items():
            yield from _flatten(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        for i, item in enumerate(value, 1):
            yield from _flatten(item, f"{path} {i}")
    elif isinstance(value, list):
        yield path, ", ".join(number(item) if isinstance(item, (int, float)) else str(item) for item in value) or "none"
    elif isinstance(value, (int, float, bool)) or value is None:
        yield path, number(value) or "—"
    elif _time(value) is not None and "T" in str(value):
        yield path, f"{_time(value):%Y-%m-%d %H:%M:%S} UTC"
    else:
        yield path, str(value)


@register.filter
def readable_evidence(evidence: object) -> Evidence:
    """An approval request's (or a rollout action's) evidence dict, ready for the evidence partial."""
    if not isinstance(evidence, dict):
        return Evidence(other=[("evidence", json.dumps(evidence, ensure_ascii=False))] if evidence else [])
    result = Evidence(summary=str(evidence.get("summary") or ""))
    if evidence.get("decision"):
        what = DECISIONS.get(str(evidence["decision"]), str(evidence["decision"]).replace("_", " "))
        result.decision = f"Evaluation proposed: {what}"
        if evidence.get("handling") in HANDLING:
            result.decision += f"; it {HANDLING[evidence['handling']]}"
        if evidence.get("reason"):
            result.decision += f". Why: {evidence['reason']}"
    elif evidence.get("reason"):
        result.other.append(("reason", str(evidence["reason"])))
    if isinstance(evidence.get("trigger"), dict):
        result.fired = check_row(evidence["trigger"])
    checks = [c for c in evidence.get("checks") or [] if isinstance(c, dict)]
    result.checks = [check_row(c) for c in checks]
    result.metrics = [metric_row(m) for m in evidence.get("metrics") or [] if isinstance(m, dict)]
    result.links = [{"label": str(link.get("label") or link["url"]), "url": link["url"]}
                    for link in evidence.get("links") or []
                    if isinstance(link, dict) and isinstance(link.get("url"), str)
                    and link["url"].lower().startswith(("https://", "http://"))]
    tags = evidence.get("context_tags") or ([evidence["context_tag"]] if evidence.get("context_tag") else [])
    result.tags = [_tag_line(tag) for tag in tags if isinstance(tag, dict)]
    rest = {k: v for k, v in evidence.items() if k not in KNOWN}
    if rest:
        result.other += [(key.replace("_", " "), value) for key, value in _flatten(rest)][:LINE_LIMIT]
    return result


@register.filter
def bundle_evidence(parts: dict) -> Evidence:
    """The evidence bundle's `evidence` (summary, metrics, links, other) as one readable evidence."""
    if not isinstance(parts, dict):
        return Evidence()
    whole = dict(parts.get("other") or {})
    whole.update({key: parts[key] for key in ("summary", "metrics", "links") if parts.get(key)})
    return readable_evidence(whole)
