"""Metric providers: samples Ringfence pulls from Prometheus, Datadog or any JSON endpoint, instead of
waiting for a pusher to post them to /api/v1/signals.

A metric with a provider (`MetricProvider`) is pulled for every live plan whose criteria or triggers
read it, every `interval_seconds`, for the segment of the plan's current ring. A value that comes back
becomes one sample through `rollouts.signals.ingest_signals`, exactly as a pushed one (same evaluation,
evidence and dashboards). A provider error, a timeout, an empty answer or a value that is not a finite
number gives no sample: the rules see too few samples, which is inconclusive (a person decides; never
a pass) and, long enough, "signals lost". Every fetch is a `MetricFetch` row (status, time taken, value,
Ringfence's own words for what went wrong, never what the provider wrote back); after `max_failures`
failed fetches in a row the workflow's containment owners are told, once per run of failures.

The query (and a web provider's URL) is a template over {{ segment }} (the ring's segment value),
{{ segment_kind }}, {{ ring }}, {{ workflow }} and {{ window }} (the interval, as `60s`). Substitution
is escaped for where the placeholder stands: inside a quoted string of PromQL or JSONPath the value is
escaped for that string; in a URL it is percent-encoded; anywhere else it must be a plain token
(letters, digits, `_ . : -`) or the fetch fails, so a segment name can never change a query's shape.

Credentials are never stored: the provider names the environment variables holding them, read by the
worker at each fetch. Only variables whose names start with RINGFENCE_PROVIDER_ may be named (a release
manager sets providers and chooses where they send: SECRET_KEY or DATABASE_URL must never be one of them),
and a value holding a control character (CR, LF, …) is refused naming only the variable. A URL never
carries credentials (no `user:pass@`), and a web URL's placeholders stand only after its host: the
scheme, host and port are the template's own, checked again once it is rendered. Requests go through
`core.outbound.get` (private addresses refused unless WEBHOOK_ALLOWED_NETWORKS allows them: a
Prometheus on the same host or network must be listed).

Audit actions: `metric.provider_set` and `metric.provider_removed` (their data name the provider).
Fetches are not audited one by one (the decisions they lead to are), as samples are not.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlencode, urlsplit

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q

from approvals import notifications as outbox
from approvals.models import Notice
from audit import log as audit
from core import clock, outbound
from core.errors import TransitionRefused, require
from governance.permissions import Role
from governance.services import is_administrator
from rollouts import notifications
from rollouts.models import Metric, MetricFetch, MetricProvider, RolloutPlan
from rollouts.plans import validated
from rollouts.signals import ingest_signals

log = logging.getLogger(__name__)

AUDIT_ACTIONS = ("metric.provider_set", "metric.provider_removed")

Status = MetricFetch.Status
Kind = MetricProvider.Kind

PLACEHOLDERS = ("segment", "segment_kind", "ring", "workflow", "window")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_TOKEN = re.compile(r"[A-Za-z0-9_.:-]+")
DATADOG_SITE = "https://api.datadoghq.com"
# Datadog's points are rolled up; the last point within this long (at least the interval) is read.
DATADOG_LOOKBACK = timedelta(minutes=5)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,100}$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,99}$")
# The only environment variables a provider may name: never Ringfence's own secrets.
ENV_PREFIX = "RINGFENCE_PROVIDER_"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A web URL's template up to its first placeholder must hold the whole scheme://host:port and the
# character that ends it, so no placeholder stands in the scheme, the host or the port.
_URL_ORIGIN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#{}]*[/?#]")


class FetchFailed(Exception):
    """No sample: `status` (error, empty or timeout) and Ringfence's own words for why."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# -- templates -------------------------------------------------------------------------------------

# Quote characters of each dialect; `url` percent-encodes every value wherever it stands.
QUOTES = {"promql": "\"'`", "jsonpath": "\"'", "datadog": "", "url": ""}


def placeholders_in(template: str) -> list[str]:
    return _PLACEHOLDER.findall(template)


def _escape(value: str, quote_char: str) -> str:
    if quote_char == "`":  # a raw string: nothing can be escaped inside it
        if "`" in value:
            raise FetchFailed(Status.ERROR, "a value holds a backtick and stands in a raw (`) string")
        return value
    escaped = value.replace("\\", "\\\\").replace(quote_char, "\\" + quote_char)
    return escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def render(template: str, values: dict[str, str], dialect: str) -> str:
    """The template with each {{ name }} replaced, escaped for where it stands (module docstring).
    FetchFailed when a placeholder is unknown or a value cannot stand where it is."""
    quotes = QUOTES[dialect]
    out: list[str] = []
    inside = ""  # the quote character of the string the scan is in
    i = 0
    while i < len(template):
        found = _PLACEHOLDER.match(template, i)
        if found:
            name = found.group(1)
            if name not in values:
                raise FetchFailed(Status.ERROR, f"unknown placeholder {{{{ {name} }}}}")
            value = str(values[name])
            if dialect == "url":
                out.append(quote(value, safe=""))
            elif inside:
                out.append(_escape(value, inside))
            elif _TOKEN.fullmatch(value):
                out.append(value)
            else:
                raise FetchFailed(Status.ERROR, f"the {name} {value!r} is not a plain token; put "
                                                f"{{{{ {name} }}}} inside a quoted string")
            i = found.end()
            continue
        char = template[i]
        out.append(char)
        if inside and char == "\\" and inside != "`" and i + 1 < len(template):
            out.append(template[i + 1])
            i += 2
            continue
        if inside and char == inside:
            inside = ""
        elif not inside and char in quotes:
            inside = char
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class Context:
    """What a fetch is for: the plan's workflow, its current ring and segment, and the time."""

    workflow: str
    ring: int | None
    segment_kind: str
    segment_value: str
    at: datetime
    interval_seconds: int

    @property
    def segment(self) -> str:
        return f"{self.segment_kind}:{self.segment_value}" if self.segment_kind else ""

    def values(self) -> dict[str, str]:
        return {"segment": self.segment_value, "segment_kind": self.segment_kind,
                "ring": "" if self.ring is None else str(self.ring), "workflow": self.workflow,
                "window": f"{self.interval_seconds}s"}


# -- reading a provider's answer (pure) ------------------------------------------------------------

def _number(raw: object, where: str) -> float:
    if raw is None:
        raise FetchFailed(Status.EMPTY, f"{where} is null")
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise FetchFailed(Status.ERROR, f"{where} is not a number")
    try:
        value = float(raw)
    except ValueError:
        raise FetchFailed(Status.ERROR, f"{where} is not a number") from None
    if not math.isfinite(value):
        raise FetchFailed(Status.ERROR, f"{where} is not a finite number ({value})")
    return value


def _json(body: bytes, who: str) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FetchFailed(Status.ERROR, f"{who} answered something that is not JSON") from None


def _at(seconds: object, fallback: datetime) -> datetime:
    try:
        return min(datetime.fromtimestamp(float(seconds), UTC), fallback)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return fallback


def read_prometheus(body: bytes, *, segment_label: str, segment_value: str,
                    at: datetime) -> tuple[float, datetime]:
    """An instant query's answer: a scalar, or a vector of one series (or, with `segment_label`, the
    one series whose label is the segment's value). A matrix or a string is an error."""
    answer = _json(body, "Prometheus")
    if not isinstance(answer, dict) or answer.get("status") != "success":
        kind = answer.get("errorType", "") if isinstance(answer, dict) else ""
        raise FetchFailed(Status.ERROR, f"Prometheus answered an error{f' ({kind})' if kind else ''}")
    data = answer.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return _number(result[1], "the scalar"), _at(result[0], at)
    if kind != "vector" or not isinstance(result, list):
        raise FetchFailed(Status.ERROR, f"the query gives a {kind}; an instant vector or a scalar is needed")
    series = result
    if segment_label:
        series = [s for s in result if (s.get("metric") or {}).get(segment_label) == segment_value]
    if not series:
        raise FetchFailed(Status.EMPTY, "no series" + (f" with {segment_label}={segment_value!r}" if segment_label
                                                       else ""))
    if len(series) > 1:
        raise FetchFailed(Status.ERROR, f"{len(series)} series; aggregate them (sum, avg, …) or name a "
                                        "segment_label")
    point = series[0].get("value") or [None, None]
    return _number(point[1], "the value"), _at(point[0], at)


def read_datadog(body: bytes, *, at: datetime) -> tuple[float, datetime]:
    """The metrics query API's answer: the last non-null point of its one series."""
    answer = _json(body, "Datadog")
    if not isinstance(answer, dict) or answer.get("status") == "error" or answer.get("error"):
        raise FetchFailed(Status.ERROR, "Datadog answered an error")
    series = answer.get("series") or []
    if not series:
        raise FetchFailed(Status.EMPTY, "no series")
    if len(series) > 1:
        raise FetchFailed(Status.ERROR, f"{len(series)} series; aggregate them in the query")
    points = [p for p in series[0].get("pointlist") or [] if isinstance(p, list) and len(p) == 2 and p[1] is not None]
    if not points:
        raise FetchFailed(Status.EMPTY, "no point in the series")
    stamp, raw = points[-1]
    return _number(raw, "the last point"), _at(float(stamp) / 1000 if stamp is not None else None, at)


def read_web(body: bytes, *, json_path: str) -> float:
    """A JSON answer and the one value its JSONPath finds."""
    from jsonpath_ng.ext import parse

    answer = _json(body, "The endpoint")
    try:
        found = parse(json_path).find(answer)
    except Exception as exc:  # noqa: BLE001 - the library raises several kinds; any is a failed fetch
        raise FetchFailed(Status.ERROR, f"the JSONPath cannot be read ({type(exc).__name__})") from None
    if not found:
        raise FetchFailed(Status.EMPTY, "the JSONPath finds nothing")
    if len(found) > 1:
        raise FetchFailed(Status.ERROR, f"the JSONPath finds {len(found)} values; it must find one")
    return _number(found[0].value, "the value")


# -- asking a provider (I/O) -----------------------------------------------------------------------

def _secret(env: str, what: str) -> str:
    if not env.startswith(ENV_PREFIX) or not _ENV_NAME.match(env):
        raise FetchFailed(Status.ERROR, f"the environment variable {env} ({what}) does not start with {ENV_PREFIX}")
    value = os.environ.get(env, "")
    if not value:
        raise FetchFailed(Status.ERROR, f"the environment variable {env} ({what}) is not set")
    if _CONTROL.search(value):
        raise FetchFailed(Status.ERROR, f"the environment variable {env} ({what}) holds a control character")
    return value


def _same_origin(rendered: str, template: str) -> None:
    """FetchFailed when the rendered URL's scheme, host or port is not the template's own, or it
    carries credentials."""
    try:
        got, want = urlsplit(rendered), urlsplit(template)
    except ValueError:
        raise FetchFailed(Status.ERROR, "the URL is not valid once rendered") from None
    if "@" in got.netloc:
        raise FetchFailed(Status.ERROR, "the URL carries credentials (user:pass@); name a variable in headers")
    if (got.scheme.lower(), got.netloc.lower()) != (want.scheme.lower(), want.netloc.lower()):
        raise FetchFailed(Status.ERROR, "the rendered URL's scheme, host or port is not the template's")


def _headers(provider: MetricProvider) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "Ringfence metric provider"}
    for name, env in sorted((provider.headers or {}).items()):
        headers[name] = _secret(env, f"header {name}")
    if provider.kind == Kind.DATADOG:
        headers["DD-API-KEY"] = _secret(provider.api_key_env, "Datadog API key")
        headers["DD-APPLICATION-KEY"] = _secret(provider.app_key_env, "Datadog application key")
    return headers


def request_for(provider: MetricProvider, context: Context) -> tuple[str, dict[str, str]]:
    """The URL a fetch GETs and its headers (credentials read from the environment now)."""
    values = context.values()
    base = provider.url.rstrip("/")
    if provider.kind == Kind.PROMETHEUS:
        query = render(provider.query, values, "promql")
        url = f"{base}/api/v1/query?" + urlencode({"query": query, "time": f"{context.at.timestamp():.3f}"})
    elif provider.kind == Kind.DATADOG:
        query = render(provider.query, values, "datadog")
        lookback = max(DATADOG_LOOKBACK, timedelta(seconds=provider.interval_seconds))
        to = int(context.at.timestamp())
        url = f"{base}/api/v1/query?" + urlencode({"from": to - int(lookback.total_seconds()), "to": to,
                                                   "query": query})
    else:
        url = render(provider.url, values, "url")
    _same_origin(url, provider.url if provider.kind == Kind.WEB else base)
    return url, _headers(provider)


def ask(provider: MetricProvider, context: Context) -> tuple[float, datetime]:
    """One fetch: the value and when it was measured, or FetchFailed."""
    url, headers = request_for(provider, context)
    label = f"{provider.kind} provider of {provider.metric.slug}"
    try:
        reply = outbound.get(url, headers, timeout=provider.timeout_seconds, label=label,
                             max_bytes=settings.METRIC_FETCH_MAX_BYTES)
    except outbound.Refused as refusal:
        raise FetchFailed(Status.ERROR, str(refusal)) from None
    except TimeoutError:
        raise FetchFailed(Status.TIMEOUT, f"no answer within {provider.timeout_seconds:g} s") from None
    except ValueError as exc:
        raise FetchFailed(Status.ERROR, str(exc)) from None
    except OSError as exc:
        raise FetchFailed(Status.ERROR, f"could not connect ({type(exc).__name__})") from None
    if reply.status != 200:
        if provider.kind == Kind.PROMETHEUS and 400 <= reply.status < 600:
            try:  # Prometheus says what kind of error in a word of its own vocabulary
                read_prometheus(reply.body, segment_label="", segment_value="", at=context.at)
            except FetchFailed as failed:
                raise FetchFailed(Status.ERROR, f"HTTP {reply.status}: {failed.message}") from None
        raise FetchFailed(Status.ERROR, f"HTTP {reply.status}")
    if provider.kind == Kind.PROMETHEUS:
        return read_prometheus(reply.body, segment_label=provider.segment_label,
                               segment_value=context.segment_value, at=context.at)
    if provider.kind == Kind.DATADOG:
        return read_datadog(reply.body, at=context.at)
    return read_web(reply.body, json_path=render(provider.query, context.values(), "jsonpath")), context.at


# -- pulling for live plans ------------------------------------------------------------------------

def providers_for(plan: RolloutPlan) -> list[MetricProvider]:
    """The providers of the metrics the plan's criteria and triggers read."""
    used = Q(metric__in=plan.criteria.values("metric_id")) | Q(metric__in=plan.triggers.values("metric_id"))
    return list(MetricProvider.objects.filter(used).select_related("metric").order_by("metric__slug"))


def context_for(plan: RolloutPlan, provider: MetricProvider, at: datetime) -> Context:
    ring = next((r for r in plan.rings.all() if r.order == plan.current_ring), None)
    return Context(workflow=plan.workflow.slug, ring=plan.current_ring,
                   segment_kind=ring.segment_kind if ring else "", segment_value=ring.segment_value if ring else "",
                   at=at, interval_seconds=provider.interval_seconds)


@transaction.atomic
def claim_fetch(plan: RolloutPlan, provider: MetricProvider, context: Context) -> MetricFetch | None:
    """Start a fetch when the metric is due for this plan (none started within its interval); None
    otherwise. The provider's row is locked for the check, so two sweeps never fetch the same twice."""
    MetricProvider.objects.select_for_update().filter(pk=provider.pk).first()
    due_after = context.at - timedelta(seconds=provider.interval_seconds)
    if MetricFetch.objects.filter(plan=plan, metric_id=provider.metric_id, started_at__gt=due_after).exists():
        return None
    return MetricFetch.objects.create(plan=plan, metric_id=provider.metric_id, ring=context.ring,
                                      segment=context.segment, started_at=context.at, status=Status.RUNNING)


def record_fetch(fetch: MetricFetch, provider: MetricProvider, *, status: str, value: float | None = None,
                 observed_at: datetime | None = None, error: str = "", duration_ms: int = 0) -> MetricFetch:
    """Finish a fetch: its outcome, the failures in a row, the sample (ok), and the owners' notice when
    the failures reach the provider's `max_failures`. The sample goes through `ingest_signals`."""
    with transaction.atomic():
        previous = (MetricFetch.objects.filter(plan_id=fetch.plan_id, metric_id=fetch.metric_id)
                    .exclude(pk=fetch.pk).exclude(status=Status.RUNNING).order_by("-started_at", "-id")
                    .values_list("failures", flat=True).first())
        fetch.status, fetch.value, fetch.error = status, value, error[:500]
        fetch.duration_ms = max(0, duration_ms)
        fetch.failures = 0 if status == Status.OK else (previous or 0) + 1
        fetch.save(update_fields=["status", "value", "error", "duration_ms", "failures"])
        if status == Status.OK:
            plan = RolloutPlan.objects.get(pk=fetch.plan_id)
            try:
                ingest_signals(plan, [(fetch.metric_id, fetch.ring, fetch.segment, observed_at or fetch.started_at,
                                       value)])
            except TransitionRefused as refusal:  # the plan ended while the provider answered
                log.info("pulled %s for plan %s not stored: %s", provider.metric.slug, plan.pk, refusal.message)
        elif fetch.failures == provider.max_failures:
            _open_failure_notice(fetch, provider)
    return fetch


def _open_failure_notice(fetch: MetricFetch, provider: MetricProvider) -> None:
    """Tell the workflow's containment owners, once per run of failures (the fetch that reached the
    limit is the notice's subject). Uses the "signals lost" event of the one outbox."""
    plan = RolloutPlan.objects.select_related("workflow").get(pk=fetch.plan_id)
    slug = provider.metric.slug
    link = f"{settings.SITE_URL}{plan.get_absolute_url()}"
    title = f"{plan.workflow.slug}: {slug} cannot be pulled from {provider.kind} ({fetch.failures} failures)"
    body = "\n".join([
        f"{plan.name} ({plan.workflow.slug}, ring {plan.current_ring}) has pulled no value of {slug} from its "
        f"{provider.kind} provider {fetch.failures} times in a row; the last: {fetch.status}, {fetch.error or '-'}.",
        "",
        "Without samples its criteria are inconclusive (a person decides each expansion) and its triggers "
        "count the signals as lost once too few arrive.",
        "", link])
    outbox.enqueue(source=Notice.Source.ROLLOUT, event=Notice.Event.SIGNALS_LOST, subject=fetch,
                   workflow=plan.workflow, recipients=notifications.owners_of(plan.workflow), title=title, body=body,
                   link=link, data={"plan": plan.pk, "metric": slug, "provider": provider.kind,
                                    "failures": fetch.failures, "status": fetch.status, "fetch": fetch.pk})


UNEXPECTED = "unexpected answer shape"


def fetch_now(plan: RolloutPlan, provider: MetricProvider, *, at: datetime | None = None,
              asker: Callable[[MetricProvider, Context], tuple[float, datetime]] = ask) -> MetricFetch | None:
    """Pull one metric for one plan if it is due: claim, ask (outside any transaction), record. Once
    claimed, a fetch always ends recorded: an exception other than FetchFailed (an answer of a shape the
    readers did not expect) is an `error` in Ringfence's own words, never the exception's text."""
    context = context_for(plan, provider, at or clock.now())
    fetch = claim_fetch(plan, provider, context)
    if fetch is None:
        return None
    started = time.monotonic()
    try:
        value, observed_at = asker(provider, context)
    except FetchFailed as failed:
        log.warning("pulling %s for plan %s: %s", provider.metric.slug, plan.pk, failed.message)
        return record_fetch(fetch, provider, status=failed.status, error=failed.message,
                            duration_ms=round((time.monotonic() - started) * 1000))
    except Exception as exc:  # noqa: BLE001 - an answer the readers did not expect; its text may quote it
        log.warning("pulling %s for plan %s: unexpected answer (%s)", provider.metric.slug, plan.pk,
                    type(exc).__name__)
        return record_fetch(fetch, provider, status=Status.ERROR, error=UNEXPECTED,
                            duration_ms=round((time.monotonic() - started) * 1000))
    return record_fetch(fetch, provider, status=Status.OK, value=value, observed_at=observed_at,
                        duration_ms=round((time.monotonic() - started) * 1000))


def prune_fetches(plan_id: int, metric_id: int, keep: int | None = None) -> int:
    """Keep the newest METRIC_FETCH_KEEP fetches of a plan's metric; returns how many were deleted."""
    keep = settings.METRIC_FETCH_KEEP if keep is None else keep
    rows = MetricFetch.objects.filter(plan_id=plan_id, metric_id=metric_id)
    cutoff = rows.order_by("-started_at", "-id").values_list("started_at", "id")[keep:keep + 1]
    if not cutoff:
        return 0
    at, pk = cutoff[0]
    deleted, _ = rows.filter(Q(started_at__lt=at) | Q(started_at=at, id__lte=pk)).delete()
    return deleted


def pull_due(*, at: datetime | None = None) -> list[MetricFetch]:
    """Beat: pull every metric that is due for every live plan, one after another; returns the fetches
    made. One plan's or provider's failure never stops the others."""
    done = []
    plans = RolloutPlan.objects.filter(state__in=RolloutPlan.LIVE_STATES).select_related("workflow")
    for plan in plans:
        for provider in providers_for(plan):
            try:
                fetch = fetch_now(plan, provider, at=at)
            except Exception:  # noqa: BLE001 - logged; the next sweep tries again
                log.exception("pulling %s for plan %s failed", provider.metric.slug, plan.pk)
                continue
            if fetch is not None:
                done.append(fetch)
                prune_fetches(plan.pk, provider.metric_id)
    return done


def recent_fetches(plan: RolloutPlan, limit: int = 10) -> list[MetricFetch]:
    """The plan's latest fetches, newest first, for the plan page."""
    return list(plan.metric_fetches.select_related("metric").order_by("-started_at", "-id")[:limit])


# -- defining a metric's provider ------------------------------------------------------------------

FIELDS = ("kind", "url", "query", "segment_label", "api_key_env", "app_key_env", "headers", "interval_seconds",
          "timeout_seconds", "max_failures")


def describe(provider: MetricProvider) -> dict:
    """A provider's settings, as ringfence.yaml and the audit trail write them (names of variables, no values)."""
    return {name: getattr(provider, name) for name in FIELDS}


_SAMPLE = {"segment": "segment", "segment_kind": "internal_team", "ring": "0", "workflow": "workflow",
           "window": "60s"}


def problems(settings_: dict) -> list[tuple[str, str]]:
    """What is wrong with a provider's settings, as (field, message) pairs; empty when they can be saved."""
    found: list[tuple[str, str]] = []
    kind, url, query = settings_.get("kind"), settings_.get("url") or "", settings_.get("query") or ""
    if kind not in Kind.values:
        return [("kind", f"use one of {', '.join(Kind.values)}")]
    for fieldname, template in (("url", url), ("query", query)):
        for name in placeholders_in(template):
            if name not in PLACEHOLDERS:
                found.append((fieldname, f"unknown placeholder {{{{ {name} }}}}; use {', '.join(PLACEHOLDERS)}"))
    if kind != Kind.WEB and placeholders_in(url):
        found.append(("url", "only a web provider's URL is a template; put the placeholders in the query"))
    elif kind == Kind.WEB and placeholders_in(url) and not _URL_ORIGIN.match(url[:url.index("{{")]):
        found.append(("url", "placeholders may stand only after the host (in the path or the query), never in "
                             "the scheme, host or port"))
    try:
        userinfo = "@" in urlsplit(url).netloc
    except ValueError:
        userinfo = False  # not a URL: target_problem names it
    if userinfo:
        found.append(("url", "a URL never carries credentials (user:pass@); name a variable in headers"))
    if not query.strip():
        found.append(("query", "a JSONPath to the value" if kind == Kind.WEB else "a query"))
    try:  # a web URL percent-encodes every value, so a sample segment shows its host
        shown = render(url, _SAMPLE, "url") if kind == Kind.WEB else url
    except FetchFailed:  # an unknown placeholder: named above
        shown = url
    if why := outbound.target_problem(shown, label=f"{kind} provider"):
        found.append(("url", why))
    if kind == Kind.WEB and query.strip():
        from jsonpath_ng.ext import parse

        try:
            parse(render(query, _SAMPLE, "jsonpath"))
        except Exception as exc:  # noqa: BLE001 - any parse failure is the problem
            found.append(("query", f"not a JSONPath: {str(exc)[:200]}"))
    if kind == Kind.DATADOG and not (settings_.get("api_key_env") and settings_.get("app_key_env")):
        found.append(("api_key_env", "Datadog needs api_key_env and app_key_env (names of environment variables)"))
    for fieldname in ("api_key_env", "app_key_env"):
        if settings_.get(fieldname) and not _ENV_NAME.match(settings_[fieldname]):
            found.append((fieldname, "the name of an environment variable (A-Z, 0-9, _)"))
        elif settings_.get(fieldname) and not settings_[fieldname].startswith(ENV_PREFIX):
            found.append((fieldname, f"{settings_[fieldname]} does not start with {ENV_PREFIX}; a provider names "
                                     f"only variables kept for providers"))
    for name, env in (settings_.get("headers") or {}).items():
        if not _HEADER_NAME.match(str(name)):
            found.append(("headers", f"{name!r} is not a header name"))
        if not _ENV_NAME.match(str(env)):
            found.append(("headers", f"{name}: {env!r} is not the name of an environment variable"))
        elif not str(env).startswith(ENV_PREFIX):
            found.append(("headers", f"{name}: {env} does not start with {ENV_PREFIX}; a provider names only "
                                     f"variables kept for providers"))
    if settings_.get("segment_label") and kind != Kind.PROMETHEUS:
        found.append(("segment_label", "only a Prometheus provider picks a series by label"))
    return found


@transaction.atomic
def set_metric_provider(*, actor: AbstractBaseUser, slug: str, provider: dict | None) -> MetricProvider | None:
    """Pull a metric from a provider (its settings: FIELDS), change them, or stop pulling it (None).
    Administrators and release managers; built-in metrics too. Audit: `metric.provider_set` with the
    provider as it was and as it is, or `metric.provider_removed` with what it was (variable names, never
    their values)."""
    require(is_administrator(actor) or actor.groups.filter(name=Role.RELEASE_MANAGER).exists(), "forbidden",
            "Only administrators and release managers say where metrics are pulled from.")
    metric = Metric.objects.select_for_update().filter(slug=slug).first()
    require(metric is not None, "not_found", f"No metric {slug}.", field="metric")
    current = MetricProvider.objects.filter(metric=metric).first()
    before = describe(current) if current else None
    if provider is None:
        require(current is not None, "conflict", f"{slug} is not pulled from a provider.")
        current.delete()
        audit.record(actor, "metric.provider_removed", metric, data={"slug": slug, "provider": None,
                                                                     "before": before})
        return None
    if found := problems(provider):
        fieldname, message = found[0]
        raise TransitionRefused("invalid", f"{fieldname}: {message}", field=fieldname)
    row = current or MetricProvider(metric=metric)
    for name in FIELDS:
        if name in provider:
            setattr(row, name, provider[name])
    validated(row, "")
    row.save()
    audit.record(actor, "metric.provider_set", metric, data={"slug": slug, "provider": describe(row),
                                                            **({"before": before} if before else {})})
    return row
