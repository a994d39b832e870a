"""Metric providers: Datadog and web endpoints asked the documented way, pulled values stored as samples,
failures inconclusive (no sample) and told to the owners, the fetch log on the plan page, the template
escaping, and the `metric_providers` section of ringfence.yaml. The providers are local HTTP servers
that check the request (tests/rollouts/test_metric_providers_prometheus.py runs a real Prometheus)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
import yaml

from approvals.models import Notice
from audit.models import AuditEvent
from configuration import exporting, planning
from configuration.document import Document
from configuration.loading import ConfigError
from core import clock
from core.errors import TransitionRefused
from rollouts import notifications, providers
from rollouts.models import Metric, MetricFetch, MetricProvider, RolloutPlan, Signal
from tests.support.json_endpoint import Endpoint, json_endpoint

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def endpoint(settings) -> Iterator[Endpoint]:
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with json_endpoint() as server:
        yield server


@pytest.fixture
def frozen():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def plan(frozen, live_plan) -> RolloutPlan:
    return live_plan


def pull(slug: str, plan: RolloutPlan) -> MetricFetch | None:
    return providers.fetch_now(plan, MetricProvider.objects.select_related("metric").get(metric__slug=slug))


def samples(plan: RolloutPlan, slug: str) -> list[tuple[datetime, float, str]]:
    return list(Signal.objects.filter(plan=plan, metric__slug=slug).order_by("observed_at")
                .values_list("observed_at", "value", "segment"))


def datadog(admin_user, url: str, **overrides) -> MetricProvider:
    return providers.set_metric_provider(actor=admin_user, slug="error_rate", provider={
        "kind": "datadog", "url": url, "query": "avg:agent.errors{workflow:{{ workflow }},segment:{{ segment }}}",
        "api_key_env": "RINGFENCE_PROVIDER_DD_API_KEY", "app_key_env": "RINGFENCE_PROVIDER_DD_APP_KEY",
        "interval_seconds": 30, "timeout_seconds": 1, "max_failures": 3, **overrides})


def web(admin_user, url: str, **overrides) -> MetricProvider:
    return providers.set_metric_provider(actor=admin_user, slug="quality_score", provider={
        "kind": "web", "url": url + "/evals/{{ workflow }}/score?segment={{ segment }}&ring={{ ring }}",
        "query": '$.segments[?(@.name == "{{ segment }}")].score',
        "headers": {"Authorization": "RINGFENCE_PROVIDER_EVALS"},
        "interval_seconds": 30, "timeout_seconds": 1, "max_failures": 3, **overrides})


# -- the documented requests ------------------------------------------------------------------------

def test_datadog_is_asked_with_its_keys_and_its_last_point_becomes_a_sample(plan, endpoint, admin_user, monkeypatch):
    monkeypatch.setenv("RINGFENCE_PROVIDER_DD_API_KEY", "dd-api-secret")
    monkeypatch.setenv("RINGFENCE_PROVIDER_DD_APP_KEY", "dd-app-secret")
    datadog(admin_user, endpoint.url)
    at_ms = (T0 - timedelta(seconds=20)).timestamp() * 1000
    endpoint.answer({"status": "ok", "series": [{"pointlist": [[at_ms - 10_000, 0.01], [at_ms, 0.02],
                                                                 [at_ms + 10_000, None]]}]})

    fetch = pull("error_rate", plan)

    request = endpoint.requests[0]
    assert request["path"] == "/api/v1/query"
    assert request["query"]["query"] == ["avg:agent.errors{workflow:refund-agent,segment:support-ops}"]
    assert request["query"]["to"] == [str(int(T0.timestamp()))]
    assert request["query"]["from"] == [str(int(T0.timestamp()) - 300)]
    assert request["headers"]["dd-api-key"] == "dd-api-secret"
    assert request["headers"]["dd-application-key"] == "dd-app-secret"
    assert (fetch.status, fetch.value, fetch.failures, fetch.segment) == ("ok", 0.02, 0, "internal_team:support-ops")
    assert samples(plan, "error_rate") == [(T0 - timedelta(seconds=20), 0.02, "internal_team:support-ops")]


def test_a_web_endpoint_is_read_at_its_json_path_with_headers_from_the_environment(plan, endpoint, admin_user,
                                                                                   monkeypatch):
    monkeypatch.setenv("RINGFENCE_PROVIDER_EVALS", "Bearer evals-secret")
    web(admin_user, endpoint.url)
    endpoint.answer({"segments": [{"name": "partners", "score": 0.5}, {"name": "support-ops", "score": 0.93}]})

    fetch = pull("quality_score", plan)

    request = endpoint.requests[0]
    assert request["path"] == "/evals/refund-agent/score"
    assert request["query"] == {"segment": ["support-ops"], "ring": ["0"]}
    assert request["headers"]["authorization"] == "Bearer evals-secret"
    assert fetch.status == "ok" and fetch.value == 0.93
    assert samples(plan, "quality_score") == [(T0, 0.93, "internal_team:support-ops")]
    # Nothing secret is stored: the provider names the variable, the audit trail too.
    provider = MetricProvider.objects.get(metric__slug="quality_score")
    assert provider.headers == {"Authorization": "RINGFENCE_PROVIDER_EVALS"}
    event = AuditEvent.objects.filter(action="metric.provider_set").latest("seq")
    assert "evals-secret" not in json.dumps(event.data)
    assert event.data["provider"]["headers"] == {"Authorization": "RINGFENCE_PROVIDER_EVALS"}


# -- failures are inconclusive --------------------------------------------------------------------

FAILURES = {
    "http error": ((500, {"error": "boom"}, 0.0), "error", "HTTP 500"),
    "timeout": ((200, {"segments": []}, 1.5), "timeout", "no answer within 1 s"),
    "nothing found": ((200, {"segments": [{"name": "partners", "score": 0.5}]}, 0.0), "empty",
                      "the JSONPath finds nothing"),
    "null": ((200, {"segments": [{"name": "support-ops", "score": None}]}, 0.0), "empty", "the value is null"),
    "not finite": ((200, b'{"segments": [{"name": "support-ops", "score": NaN}]}', 0.0), "error",
                   "not a finite number"),
    "text": ((200, {"segments": [{"name": "support-ops", "score": "high"}]}, 0.0), "error", "not a number"),
    "not json": ((200, b"<html>oops</html>", 0.0), "error", "not JSON"),
}


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
def test_a_failed_pull_is_recorded_and_gives_no_sample(case, plan, endpoint, admin_user, monkeypatch):
    monkeypatch.setenv("RINGFENCE_PROVIDER_EVALS", "token")
    web(admin_user, endpoint.url)
    answer, status, words = FAILURES[case]
    endpoint.answers.append(answer)

    fetch = pull("quality_score", plan)

    assert (fetch.status, fetch.value, fetch.failures) == (status, None, 1)
    assert words in fetch.error
    assert samples(plan, "quality_score") == []


def test_a_missing_secret_or_a_refused_address_is_a_failed_pull_that_sends_nothing(plan, endpoint, admin_user,
                                                                                   monkeypatch, settings):
    monkeypatch.delenv("RINGFENCE_PROVIDER_EVALS", raising=False)
    web(admin_user, endpoint.url)
    fetch = pull("quality_score", plan)
    assert fetch.status == "error" and fetch.error == ("the environment variable RINGFENCE_PROVIDER_EVALS "
                                                       "(header Authorization) is not set")

    monkeypatch.setenv("RINGFENCE_PROVIDER_EVALS", "token")
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    with time_machine.travel(T0 + timedelta(seconds=30), tick=False):
        fetch = pull("quality_score", plan)
    assert fetch.status == "error" and "127.0.0.1 is a loopback address; allow it with WEBHOOK_ALLOWED_NETWORKS" \
        in fetch.error
    assert fetch.failures == 2
    assert endpoint.requests == [] and samples(plan, "quality_score") == []


def test_pulled_values_feed_the_criteria_and_failed_pulls_leave_them_inconclusive(plan, endpoint, admin_user,
                                                                                  monkeypatch, frozen):
    from rollouts import selectors

    monkeypatch.setenv("RINGFENCE_PROVIDER_EVALS", "token")
    web(admin_user, endpoint.url, interval_seconds=60)
    for _ in range(6):
        endpoint.answer({"segments": [{"name": "support-ops", "score": 0.95}]})
        assert pull("quality_score", plan).status == "ok"
        frozen.shift(60)
    check = next(c for c in selectors.evaluate(plan, clock.now()).criteria if c.metric == "quality_score")
    assert check.status == "met", check.note

    for _ in range(10):  # the provider fails for ten minutes: nothing counts as met
        endpoint.answer({"error": "down"}, status=503)
        assert pull("quality_score", plan).status == "error"
        frozen.shift(60)
    check = next(c for c in selectors.evaluate(plan, clock.now()).criteria if c.metric == "quality_score")
    assert check.status == "inconclusive", check.note
    assert len(samples(plan, "quality_score")) == 6


# -- owners told, once per run of failures --------------------------------------------------------

def test_max_failures_in_a_row_tell_the_owners_once_per_run(plan, endpoint, admin_user, owner, monkeypatch, frozen):
    monkeypatch.setenv("RINGFENCE_PROVIDER_EVALS", "token")
    web(admin_user, endpoint.url, max_failures=3)

    def step(status: int) -> MetricFetch:
        endpoint.answer({"segments": [{"name": "support-ops", "score": 0.9}]}, status=status)
        fetch = pull("quality_score", plan)
        frozen.shift(30)
        return fetch

    def notices() -> list[Notice]:
        return list(Notice.objects.filter(event="signals_lost", subject_type="rollouts.metricfetch").order_by("pk"))

    assert [step(500).failures for _ in range(2)] == [1, 2]
    assert notices() == []
    third = step(500)
    assert third.failures == 3
    [notice] = notices()
    assert notice.subject_id == str(third.pk) and notice.workflow_id == plan.workflow_id
    assert notice.recipients == notifications.owners_of(plan.workflow) == [owner.email]
    assert "quality_score cannot be pulled from web (3 failures)" in notice.title
    assert notice.data["failures"] == 3 and notice.data["plan"] == plan.pk

    assert step(500).failures == 4
    assert len(notices()) == 1  # no repeat noise while nothing changes
    assert step(200).failures == 0
    assert [step(500).failures for _ in range(3)] == [1, 2, 3]
    assert len(notices()) == 2  # a new run of failures is told again


def test_metrics_show_each_live_plans_failed_pulls_in_a_row(plan, endpoint, admin_user, monkeypatch, frozen):
    from django.test import Client
    from prometheus_client.parser import text_string_to_metric_families

    monkeypatch.setenv("RINGFENCE_PROVIDER_EVALS", "token")
    web(admin_user, endpoint.url, max_failures=3)

    def scraped() -> dict[tuple, float]:
        text = Client().get("/metrics").content.decode()  # loopback: a trusted scraper by default
        return {(sample.labels["metric"], sample.labels["segment"], sample.labels["status"]): sample.value
                for family in text_string_to_metric_families(text) if family.name == "ringfence_metric_fetch_failures"
                for sample in family.samples if sample.labels["plan"] == str(plan.pk)}

    assert scraped() == {}
    for status in (500, 500):
        endpoint.answer({"segments": [{"name": "support-ops", "score": 0.9}]}, status=status)
        pull("quality_score", plan)
        frozen.shift(30)
    assert scraped() == {("quality_score", "internal_team:support-ops", "error"): 2.0}
    # The first pull was for an earlier ring's segment: only the newest pull of the metric reports.
    newest = MetricFetch.objects.filter(plan=plan).latest("pk")
    MetricFetch.objects.filter(plan=plan).exclude(pk=newest.pk).update(segment="internal_team:earlier-ring")
    assert scraped() == {("quality_score", "internal_team:support-ops", "error"): 2.0}
    endpoint.answer({"segments": [{"name": "support-ops", "score": 0.9}]})
    pull("quality_score", plan)
    assert scraped() == {("quality_score", "internal_team:support-ops", "ok"): 0.0}

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from config import observability

    with CaptureQueriesContext(connection) as queries:
        list(observability._metric_fetches())
    assert len(queries) == 1  # one statement, however many plans and metrics


# -- intervals, pruning, the beat sweep --------------------------------------------------------------

def test_the_sweep_pulls_each_metric_of_each_live_plan_once_per_interval(plan, endpoint, admin_user, monkeypatch,
                                                                         frozen, settings):
    monkeypatch.setenv("RINGFENCE_PROVIDER_EVALS", "token")
    web(admin_user, endpoint.url, interval_seconds=60)
    providers.set_metric_provider(actor=admin_user, slug="review_load", provider={
        "kind": "web", "url": endpoint.url + "/unused", "query": "$.x"})  # no rule of the plan reads it
    for _ in range(3):
        endpoint.answer({"segments": [{"name": "support-ops", "score": 0.9}]})

    assert [f.metric.slug for f in providers.pull_due()] == ["quality_score"]
    frozen.shift(59)
    assert providers.pull_due() == []
    frozen.shift(1)
    assert len(providers.pull_due()) == 1
    assert [r["path"] for r in endpoint.requests] == ["/evals/refund-agent/score"] * 2

    settings.METRIC_FETCH_KEEP = 3
    for _ in range(4):
        frozen.shift(60)
        providers.pull_due()  # 404s now: failures are pulls too
    kept = list(MetricFetch.objects.filter(plan=plan).order_by("started_at"))
    assert len(kept) == 3 and kept[-1].started_at == clock.now()


def test_plans_that_are_not_live_are_not_pulled(make_plan, endpoint, admin_user, frozen):
    make_plan()  # a draft
    web(admin_user, endpoint.url)
    assert providers.pull_due() == []
    assert endpoint.requests == []


def test_the_plan_page_shows_the_latest_pulls(plan, endpoint, admin_user, owner, client, monkeypatch, frozen):
    monkeypatch.setenv("RINGFENCE_PROVIDER_EVALS", "token")
    web(admin_user, endpoint.url)
    endpoint.answer({"segments": [{"name": "support-ops", "score": 0.87}]})
    pull("quality_score", plan)
    frozen.shift(30)
    endpoint.answer({"error": "down"}, status=502)
    pull("quality_score", plan)

    client.force_login(owner)
    page = client.get(plan.get_absolute_url()).content.decode()
    assert "Pulled from providers" in page
    assert "0.87" in page and "HTTP 502" in page
    assert page.count("<code>quality_score</code>") >= 2
    assert '"error": "down"' not in page and "down" not in page.split("Pulled from providers")[1].split("</table>")[0]


# -- templates ------------------------------------------------------------------------------------

VALUES = {"segment": 'ops"} or vector(1) #', "segment_kind": "internal_team", "ring": "0", "workflow": "refund-agent",
          "window": "60s"}


def test_a_segment_inside_a_promql_string_is_escaped_and_cannot_break_out():
    rendered = providers.render('sum(x{team="{{ segment }}", wf=\'{{workflow}}\'}[{{ window }}])', VALUES, "promql")
    assert rendered == 'sum(x{team="ops\\"} or vector(1) #", wf=\'refund-agent\'}[60s])'


def test_a_value_outside_quotes_must_be_a_plain_token():
    with pytest.raises(providers.FetchFailed, match="not a plain token"):
        providers.render("sum(x{team={{ segment }}})", VALUES, "promql")
    with pytest.raises(providers.FetchFailed, match="not a plain token"):
        providers.render("avg:x{segment:{{ segment }}}", VALUES, "datadog")
    with pytest.raises(providers.FetchFailed, match="backtick"):
        providers.render("x{team=`{{ segment }}`}", {**VALUES, "segment": "a`b"}, "promql")
    assert providers.render("x{team=`{{ segment }}`}", {**VALUES, "segment": 'a"b'}, "promql") == 'x{team=`a"b`}'
    with pytest.raises(providers.FetchFailed, match="unknown placeholder"):
        providers.render("x{{ tenant }}", VALUES, "promql")


def test_a_url_percent_encodes_and_a_json_path_escapes_its_strings():
    assert (providers.render("https://e.example/s?seg={{ segment }}&w={{workflow}}", VALUES, "url")
            == "https://e.example/s?seg=ops%22%7D%20or%20vector%281%29%20%23&w=refund-agent")
    assert (providers.render('$.s[?(@.n == "{{ segment }}")].v', {**VALUES, "segment": 'a"b\\c'}, "jsonpath")
            == '$.s[?(@.n == "a\\"b\\\\c")].v')


def test_the_prometheus_answer_is_read_as_one_value_per_segment_or_one_value():
    def body(result: object, kind: str = "vector") -> bytes:
        return json.dumps({"status": "success", "data": {"resultType": kind, "result": result}}).encode()

    at = T0
    two = [{"metric": {"team": "ops"}, "value": [T0.timestamp(), "12.5"]},
           {"metric": {"team": "partners"}, "value": [T0.timestamp(), "99"]}]
    assert providers.read_prometheus(body(two), segment_label="team", segment_value="ops", at=at) == (12.5, T0)
    with pytest.raises(providers.FetchFailed, match="2 series"):
        providers.read_prometheus(body(two), segment_label="", segment_value="ops", at=at)
    with pytest.raises(providers.FetchFailed, match="no series with team='x'") as empty:
        providers.read_prometheus(body(two), segment_label="team", segment_value="x", at=at)
    assert empty.value.status == "empty"
    assert providers.read_prometheus(body([T0.timestamp(), "3"], "scalar"), segment_label="", segment_value="",
                                     at=at) == (3.0, T0)
    with pytest.raises(providers.FetchFailed, match="not a finite number"):
        providers.read_prometheus(body([{"metric": {}, "value": [T0.timestamp(), "+Inf"]}]), segment_label="",
                                  segment_value="", at=at)
    with pytest.raises(providers.FetchFailed, match="gives a matrix"):
        providers.read_prometheus(body([], "matrix"), segment_label="", segment_value="", at=at)
    with pytest.raises(providers.FetchFailed, match=r"an error \(bad_data\)"):
        providers.read_prometheus(json.dumps({"status": "error", "errorType": "bad_data", "error": "x"}).encode(),
                                  segment_label="", segment_value="", at=at)


# -- who may set a provider, and what is refused ------------------------------------------------------

def test_only_administrators_and_release_managers_set_a_provider_and_bad_settings_are_refused(
        admin_user, bystander, release_manager, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    good = {"kind": "prometheus", "url": "https://prometheus.example", "query": "up"}
    with pytest.raises(TransitionRefused) as refused:
        providers.set_metric_provider(actor=bystander, slug="error_rate", provider=good)
    assert refused.value.code == "forbidden"
    bad = [
        ({**good, "url": "http://127.0.0.1:9090"}, "loopback address; allow it with WEBHOOK_ALLOWED_NETWORKS"),
        ({**good, "query": "up{x=\"{{ tenant }}\"}"}, "unknown placeholder {{ tenant }}"),
        ({**good, "kind": "datadog"}, "Datadog needs api_key_env and app_key_env"),
        ({**good, "kind": "web", "query": "$[?("}, "not a JSONPath"),
        ({**good, "headers": {"Authorization": "lower_case"}}, "not the name of an environment variable"),
        ({**good, "interval_seconds": 0}, "interval_seconds"),
        ({**good, "url": "https://{{ workflow }}.prometheus.example"}, "only a web provider's URL is a template"),
    ]
    for provider, words in bad:
        with pytest.raises(TransitionRefused) as refused:
            providers.set_metric_provider(actor=release_manager, slug="error_rate", provider=provider)
        assert words in refused.value.message, provider
    assert not MetricProvider.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="metric.provider_").exists()

    providers.set_metric_provider(actor=release_manager, slug="error_rate", provider=good)
    providers.set_metric_provider(actor=release_manager, slug="error_rate", provider=None)
    assert not MetricProvider.objects.exists()
    events = list(AuditEvent.objects.filter(action__startswith="metric.").order_by("seq"))
    assert [(e.action, e.data["provider"] and e.data["provider"]["kind"]) for e in events] == [
        ("metric.provider_set", "prometheus"), ("metric.provider_removed", None)]


# -- ringfence.yaml -------------------------------------------------------------------------------

FILE = """
version: 1
metrics:
  - {slug: refund_accuracy, label: Refund accuracy, direction: higher_is_better}
metric_providers:
  - metric: latency_p95_ms
    kind: prometheus
    url: https://prometheus.example
    query: 'histogram_quantile(0.95, sum by (le) (rate(lat_bucket{team="{{ segment }}"}[{{ window }}])))'
    interval: 30
    timeout: 5
  - {metric: error_rate, kind: datadog, query: 'avg:agent.errors{segment:{{ segment }}}',
     api_key_env: RINGFENCE_PROVIDER_DD_API_KEY, app_key_env: RINGFENCE_PROVIDER_DD_APP_KEY}
  - {metric: refund_accuracy, kind: web, url: 'https://evals.example/score?segment={{ segment }}',
     query: '$.score', headers: {Authorization: RINGFENCE_PROVIDER_EVALS_TOKEN}, max_failures: 5}
"""


def test_providers_are_planned_applied_and_exported_from_the_file(admin_user):
    doc = Document.model_validate(yaml.safe_load(FILE))
    plan_ = planning.plan(doc)
    labels = [c.label for c in plan_.changes]
    assert labels == ["metric/refund_accuracy", "metric_provider/error_rate", "metric_provider/latency_p95_ms",
                      "metric_provider/refund_accuracy"]
    planning.apply(plan_, actor=admin_user, digest="0" * 64, origin="ringfence.yaml")

    latency = MetricProvider.objects.get(metric__slug="latency_p95_ms")
    assert (latency.kind, latency.interval_seconds, latency.timeout_seconds, latency.max_failures) == (
        "prometheus", 30, 5.0, 3)
    assert MetricProvider.objects.get(metric__slug="error_rate").url == "https://api.datadoghq.com"
    assert MetricProvider.objects.get(metric__slug="refund_accuracy").headers == {
        "Authorization": "RINGFENCE_PROVIDER_EVALS_TOKEN"}
    assert AuditEvent.objects.filter(action="metric.provider_set").count() == 3
    assert AuditEvent.objects.filter(action="metric.defined").count() == 1  # the metric refund_accuracy
    assert planning.plan(doc).empty

    exported = yaml.safe_load(exporting.export_yaml())
    assert {p["metric"] for p in exported["metric_providers"]} == {"latency_p95_ms", "error_rate", "refund_accuracy"}
    assert planning.plan(Document.model_validate(exported)).empty

    changed = yaml.safe_load(FILE)
    changed["metric_providers"] = changed["metric_providers"][:1]
    changed["metric_providers"][0]["interval"] = 60
    plan_ = planning.plan(Document.model_validate(changed), prune=True)
    assert [c.describe() for c in plan_.changes] == ["~ metric_provider/latency_p95_ms  (interval_seconds: 30 → 60)",
                                                      "- metric_provider/error_rate",
                                                      "- metric_provider/refund_accuracy"]
    planning.apply(plan_, actor=admin_user, digest="1" * 64, origin="ringfence.yaml")
    assert list(MetricProvider.objects.values_list("metric__slug", "interval_seconds")) == [("latency_p95_ms", 60)]
    assert Metric.objects.filter(slug="refund_accuracy").exists()  # the metric itself stays


def test_the_file_is_checked_before_anything_is_applied(admin_user, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    doc = Document.model_validate({"version": 1, "metric_providers": [
        {"metric": "nope", "kind": "prometheus", "url": "http://127.0.0.1:9090", "query": "up"},
        {"metric": "error_rate", "kind": "web", "url": "https://e.example/{{ tenant }}", "query": "$.x"},
        {"metric": "error_rate", "kind": "datadog", "query": "avg:x{*}"},
    ]})
    with pytest.raises(ConfigError) as error:
        planning.plan(doc)
    text = str(error.value.problems)
    assert "no metric 'nope'; declare it under metrics" in text
    assert "127.0.0.1 is a loopback address; allow it with WEBHOOK_ALLOWED_NETWORKS" in text
    assert "unknown placeholder {{ tenant }}" in text
    assert "metric error_rate has two providers" in text
    assert "Datadog needs api_key_env and app_key_env" in text
    assert not MetricProvider.objects.exists()


# -- credentials stay Ringfence's own ----------------------------------------------------------------

def test_a_provider_may_name_only_variables_kept_for_providers(admin_user, release_manager, settings):
    good = {"kind": "prometheus", "url": "https://prometheus.example", "query": "up"}
    for provider, fieldname in [
        ({**good, "headers": {"X-Key": "SECRET_KEY"}}, "headers"),
        ({**good, "kind": "datadog", "api_key_env": "AUDIT_SIGNING_KEY",
          "app_key_env": "RINGFENCE_PROVIDER_DD_APP_KEY"}, "api_key_env"),
        ({**good, "kind": "datadog", "api_key_env": "RINGFENCE_PROVIDER_DD_API_KEY", "app_key_env": "DATABASE_URL"},
         "app_key_env"),
    ]:
        with pytest.raises(TransitionRefused) as refused:
            providers.set_metric_provider(actor=release_manager, slug="error_rate", provider=provider)
        assert refused.value.field == fieldname
        assert "does not start with RINGFENCE_PROVIDER_" in refused.value.message, provider
    assert not MetricProvider.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="metric.provider_").exists()

    doc = Document.model_validate({"version": 1, "metric_providers": [
        {"metric": "quality_score", "kind": "web", "url": "https://e.example/x", "query": "$.x",
         "headers": {"Authorization": "SECRET_KEY"}}]})
    with pytest.raises(ConfigError) as error:
        planning.plan(doc)
    assert "SECRET_KEY does not start with RINGFENCE_PROVIDER_" in str(error.value.problems)
    assert not MetricProvider.objects.exists()


def test_a_provider_saved_before_the_rule_sends_no_other_variable(plan, endpoint, admin_user, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "django-secret")
    web(admin_user, endpoint.url)
    MetricProvider.objects.filter(metric__slug="quality_score").update(headers={"Authorization": "SECRET_KEY"})
    fetch = pull("quality_score", plan)
    assert fetch.status == "error" and "SECRET_KEY" in fetch.error and "RINGFENCE_PROVIDER_" in fetch.error
    assert endpoint.requests == []


def test_a_secret_with_a_line_break_fails_the_pull_naming_only_the_variable(plan, endpoint, admin_user, owner,
                                                                            client, monkeypatch):
    secret = "Bearer s3cr3t-value"
    monkeypatch.setenv("RINGFENCE_PROVIDER_EVALS", secret + "\n")
    web(admin_user, endpoint.url, max_failures=1)

    fetch = pull("quality_score", plan)

    assert fetch.status == "error" and fetch.failures == 1
    assert "RINGFENCE_PROVIDER_EVALS" in fetch.error and "s3cr3t" not in fetch.error
    assert endpoint.requests == []
    [notice] = Notice.objects.filter(event="signals_lost", subject_type="rollouts.metricfetch")
    assert "RINGFENCE_PROVIDER_EVALS" in notice.body and "s3cr3t" not in notice.body + notice.title
    client.force_login(owner)
    page = client.get(plan.get_absolute_url()).content.decode()
    assert "RINGFENCE_PROVIDER_EVALS" in page and "s3cr3t" not in page


def test_a_header_http_client_refuses_is_told_in_fixed_words(endpoint):
    from core import outbound

    for send in (lambda h: outbound.get(endpoint.url + "/x", h, timeout=1),
                 lambda h: outbound.post(endpoint.url + "/x", b"{}", h, timeout=1)):
        with pytest.raises(outbound.Refused) as refused:
            send({"Authorization": "Bearer s3cr3t\r\nX-Injected: 1"})
        assert str(refused.value) == outbound.BAD_HEADER and "s3cr3t" not in str(refused.value)
    assert endpoint.requests == []


# -- the host is the template's own ------------------------------------------------------------------

def test_a_web_url_has_no_placeholder_before_its_path_and_no_url_carries_credentials(release_manager):
    web_ = {"kind": "web", "query": "$.x"}
    bad = [
        ({**web_, "url": "https://{{ segment }}/score"}, "never in the scheme, host or port"),
        ({**web_, "url": "https://evals.{{ segment }}.example/score"}, "never in the scheme, host or port"),
        ({**web_, "url": "https://evals.example:{{ ring }}/score"}, "never in the scheme, host or port"),
        ({**web_, "url": "https://evals.example{{ segment }}"}, "never in the scheme, host or port"),
        ({**web_, "url": "https://user:pass@evals.example/score?s={{ segment }}"}, "never carries credentials"),
        ({"kind": "prometheus", "url": "https://u:p@prometheus.example", "query": "up"}, "never carries credentials"),
    ]
    for provider, words in bad:
        with pytest.raises(TransitionRefused) as refused:
            providers.set_metric_provider(actor=release_manager, slug="quality_score", provider=provider)
        assert words in refused.value.message, provider
        assert refused.value.field == "url"
    assert not MetricProvider.objects.exists()
    assert providers.problems({**web_, "url": "https://evals.example/s/{{ segment }}?r={{ ring }}"}) == []


def test_a_rendered_url_on_another_host_fails_the_pull(plan, endpoint, admin_user, monkeypatch):
    monkeypatch.setenv("RINGFENCE_PROVIDER_EVALS", "token")
    web(admin_user, endpoint.url)
    MetricProvider.objects.filter(metric__slug="quality_score").update(url="http://{{ segment }}/score")
    fetch = pull("quality_score", plan)
    assert fetch.status == "error" and "scheme, host or port is not the template's" in fetch.error
    assert endpoint.requests == []


# -- answers of an unexpected shape end the fetch --------------------------------------------------

def prometheus_body(result: object) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


MALFORMED = {
    "prometheus series not an object": ("prometheus", prometheus_body([["x"]])),
    "prometheus value too short": ("prometheus", prometheus_body([{"metric": {}, "value": [1]}])),
    "datadog stamp not a number": ("datadog", {"status": "ok", "series": [{"pointlist": [["abc", 0.5]]}]}),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_an_answer_of_an_unexpected_shape_is_a_failed_fetch(case, plan, endpoint, admin_user, monkeypatch, frozen):
    monkeypatch.setenv("RINGFENCE_PROVIDER_DD_API_KEY", "k")
    monkeypatch.setenv("RINGFENCE_PROVIDER_DD_APP_KEY", "k")
    kind, body = MALFORMED[case]
    if kind == "datadog":
        datadog(admin_user, endpoint.url)
    else:
        providers.set_metric_provider(actor=admin_user, slug="error_rate", provider={
            "kind": "prometheus", "url": endpoint.url, "query": "up", "interval_seconds": 30})
    for failures in (1, 2):
        endpoint.answer(body)
        fetch = pull("error_rate", plan)
        assert (fetch.status, fetch.error, fetch.failures) == ("error", providers.UNEXPECTED, failures)
        frozen.shift(30)
    assert not MetricFetch.objects.filter(status="running").exists()
    assert samples(plan, "error_rate") == []


# -- what Ringfence measures itself is never pushed --------------------------------------------------

def test_an_agent_cannot_push_a_pulled_or_a_review_metric(plan, endpoint, admin_user, agent_token, monkeypatch):
    from django.test import Client

    from rollouts import review_signals

    monkeypatch.setenv("RINGFENCE_PROVIDER_EVALS", "token")
    web(admin_user, endpoint.url)
    api = Client(headers={"Authorization": f"Bearer {agent_token}"})

    def push(*metrics: str):
        samples = [{"metric": metric, "value": 0, "observed_at": (T0 - timedelta(seconds=10)).isoformat(),
                    "segment": "internal_team:support-ops"} for metric in metrics]
        return api.post("/api/v1/signals", json.dumps({"workflow": "refund-agent", "samples": samples}),
                        content_type="application/json")

    for metric in ("quality_score", *review_signals.METRICS):
        response = push("latency_p95_ms", metric)
        assert response.status_code == 409 and response["Content-Type"] == "application/problem+json", metric
        problem = response.json()
        assert problem["code"] == "metric_not_pushed" and metric in problem["detail"]
        assert [e["field"] for e in problem["errors"]] == ["samples.1.metric"]
    assert not Signal.objects.filter(plan=plan).exists()
    assert push("latency_p95_ms").status_code == 200

    # The pull still stores its own samples.
    endpoint.answer({"segments": [{"name": "support-ops", "score": 0.9}]})
    assert pull("quality_score", plan).status == "ok"
    assert samples(plan, "quality_score") == [(T0, 0.9, "internal_team:support-ops")]
