"""ringfence.yaml's `metric_providers` section: metrics Ringfence pulls instead of waiting for pushes.

    metric_providers:
      - metric: latency_p95_ms
        kind: prometheus                 # prometheus | datadog | web
        url: http://prometheus.internal:9090
        query: 'histogram_quantile(0.95, sum by (le) (rate(latency_ms_bucket{team="{{ segment }}"}[{{ window }}])))'
        interval: 30                     # seconds between pulls
        timeout: 5                       # seconds
        max_failures: 3                  # failed pulls in a row before the owners are told
      - {metric: error_rate, kind: datadog, query: 'avg:agent.errors{segment:{{ segment }}}',
         api_key_env: RINGFENCE_PROVIDER_DD_API_KEY, app_key_env: RINGFENCE_PROVIDER_DD_APP_KEY}
      - {metric: quality_score, kind: web, url: 'https://evals.internal/api/score?segment={{ segment }}',
         query: '$.score', headers: {Authorization: RINGFENCE_PROVIDER_EVALS_TOKEN}}

One object per metric, `metric_provider/<slug>`, planned and applied like the rest of the file through
rollouts.providers.set_metric_provider (built-in metrics too). Credentials are the names of environment
variables (starting with RINGFENCE_PROVIDER_), never values. Without the key the live providers are
left alone; `--prune` stops pulling the metrics a present section does not name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from configuration.document import Document
from configuration.document import MetricProvider as DocProvider
from rollouts import providers
from rollouts.models import MetricProvider

KIND = "metric_provider"


def canonical(entry: DocProvider) -> dict:
    """A provider of the file in the form rollouts.providers.describe gives a live one."""
    url = entry.url.strip() or (providers.DATADOG_SITE if entry.kind == "datadog" else "")
    return {"kind": entry.kind, "url": url, "query": entry.query.strip(), "segment_label": entry.segment_label,
            "api_key_env": entry.api_key_env, "app_key_env": entry.app_key_env,
            "headers": {name: entry.headers[name] for name in sorted(entry.headers)},
            "interval_seconds": entry.interval, "timeout_seconds": float(entry.timeout),
            "max_failures": entry.max_failures}


def desired(doc: Document) -> dict[tuple[str, str], tuple[dict, tuple]]:
    return {(KIND, entry.metric): (canonical(entry), ("metric_providers", i))
            for i, entry in enumerate(doc.metric_providers or [])}


def _live_one(row: MetricProvider) -> dict:
    found = providers.describe(row)
    found["headers"] = {name: found["headers"][name] for name in sorted(found["headers"] or {})}
    found["timeout_seconds"] = float(found["timeout_seconds"])
    return found


def live() -> dict[tuple[str, str], dict]:
    return {(KIND, row.metric.slug): _live_one(row) for row in MetricProvider.objects.select_related("metric")}


def pruned(doc: Document, current: dict, wanted: dict) -> list[tuple[str, str, dict]]:
    """With a `metric_providers` section: the live providers it does not name."""
    if doc.metric_providers is None:
        return []
    return [(KIND, key, fields) for (kind, key), fields in current.items()
            if kind == KIND and (kind, key) not in wanted]


def check(doc: Document, metrics: set[str], problem: Callable[[tuple, str, str], None]) -> None:
    seen: set[str] = set()
    for i, entry in enumerate(doc.metric_providers or []):
        path, label = ("metric_providers", i), f"metric_providers[{i}]"
        if entry.metric in seen:
            problem(path, label, f"metric {entry.metric} has two providers")
        seen.add(entry.metric)
        if entry.metric not in metrics:
            problem((*path, "metric"), f"{label}.metric", f"no metric {entry.metric!r}; declare it under metrics")
        for fieldname, message in providers.problems(canonical(entry)):
            name = {"interval_seconds": "interval", "timeout_seconds": "timeout"}.get(fieldname, fieldname)
            problem((*path, name), f"{label}.{name}", message)


def apply(op: str, key: str, wanted: dict, actor: AbstractBaseUser) -> None:
    providers.set_metric_provider(actor=actor, slug=key, provider=None if op == "delete" else wanted)


def exported(state: dict[tuple[str, str], Any]) -> dict:
    """The live providers as the file writes them (defaults and empty fields left out)."""
    entries = []
    for (kind, slug), fields in sorted(state.items()):
        if kind != KIND:
            continue
        entry: dict[str, Any] = {"metric": slug, "kind": fields["kind"]}
        if fields["url"] and not (fields["kind"] == "datadog" and fields["url"] == providers.DATADOG_SITE):
            entry["url"] = fields["url"]
        entry["query"] = fields["query"]
        for name in ("segment_label", "api_key_env", "app_key_env", "headers"):
            if fields[name]:
                entry[name] = fields[name]
        entry.update(interval=fields["interval_seconds"], timeout=fields["timeout_seconds"],
                     max_failures=fields["max_failures"])
        entries.append(entry)
    return {"metric_providers": entries} if entries else {}
