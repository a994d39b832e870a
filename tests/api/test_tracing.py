"""OpenTelemetry: an agent's `traceparent` continues into the request, its queries and the tasks it
publishes, and the trace id is kept with the audit event, shown and linked on the auditors' desk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from asgiref.sync import async_to_sync
from celery.signals import after_task_publish
from django.db import connections
from django.test import AsyncClient, Client
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from audit import log as audit
from audit import sequencing
from audit.models import AuditEvent
from config import tracing
from tests.auditing.test_export import run_verifier
from tests.support.celery_processes import celery_processes, wait_until

AGENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
AGENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"
TRACE_URL = "https://jaeger.example/trace/{trace_id}"


@pytest.fixture
def spans():
    """Django, psycopg and Celery instrumented as config.tracing does, onto spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(provider)
    connections.close_all()  # the next queries open connections psycopg's instrumentation sees
    yield exporter
    tracing.uninstrument()
    connections.close_all()
    assert not trace.get_current_span().get_span_context().is_valid, "a span outlived its request"


@pytest.fixture
def published():
    """The headers of every Celery message as it was published."""
    sent: list[tuple[str, dict]] = []

    def keep(sender=None, headers=None, **_):
        sent.append((sender, dict(headers or {})))

    after_task_publish.connect(keep, weak=False)
    yield sent
    after_task_publish.disconnect(keep)


def dispatch_over_asgi(agent, action: str, traceparent: str | None = TRACEPARENT):
    """The dispatch as uvicorn hands it to Django: an ASGI request."""
    headers = {**agent.headers, "Idempotency-Key": uuid.uuid4().hex}
    if traceparent:
        headers["traceparent"] = traceparent
    body = json.dumps({"workflow": "refund-agent", "action": action, "parameters": {"order": "A-1"}})
    return async_to_sync(AsyncClient().post)("/api/v1/dispatch", body, content_type="application/json",
                                              headers=headers)


def hex_id(span_id: int) -> str:
    return format(span_id, "016x")


@pytest.mark.django_db(transaction=True)
def test_an_agents_trace_continues_into_the_request_its_queries_its_tasks_and_the_audit_event(
        spans, published, agent, actions, approver, auditor, settings, tmp_path):
    settings.OTEL_TRACE_URL_TEMPLATE = TRACE_URL
    spans.clear()  # the fixtures' own queries
    response = dispatch_over_asgi(agent, "refund_customer")
    assert response.status_code == 200 and response.json()["decision"] == "pending"

    finished = spans.get_finished_spans()
    server = [s for s in finished if s.kind == SpanKind.SERVER]
    assert len(server) == 1
    request = server[0]
    assert format(request.context.trace_id, "032x") == AGENT_TRACE
    assert request.parent.is_remote and hex_id(request.parent.span_id) == AGENT_SPAN
    # The queries ran under the request's span.
    queries = [s for s in finished if s.attributes.get("db.system") == "postgresql"]
    assert len(queries) >= 5
    assert {format(s.context.trace_id, "032x") for s in queries} == {AGENT_TRACE}
    assert {s.parent.span_id for s in queries} == {request.context.span_id}
    # Every message the request published carries the trace to the worker.
    assert published, "the pending request publishes its timer and its notices"
    for task, headers in published:
        assert headers["traceparent"].split("-")[1] == AGENT_TRACE, task
    # The audit event keeps the trace id in its hashed contents; the log still verifies.
    event = AuditEvent.objects.get(action="approval.requested")
    assert json.loads(event.canonical)["trace"] == AGENT_TRACE
    assert f'"trace":"{AGENT_TRACE}"' in event.canonical and audit.verify_database().ok
    # The auditors' desk shows it, linked to the tracing UI, and finds the trace's events.
    desk = Client()
    desk.force_login(auditor)
    page = desk.get(f"/audit/events/{event.seq}/").content.decode()
    assert f'<a href="https://jaeger.example/trace/{AGENT_TRACE}"' in page and f"<code>{AGENT_TRACE}</code>" in page
    found = desk.get("/audit/", {"trace": AGENT_TRACE.upper()}).content.decode()
    assert f"/audit/events/{event.seq}/" in found
    assert desk.get("/audit/", {"trace": "not-a-trace"}).status_code == 422
    # The export carries it, and the standalone verifier passes the file as it is.
    audit.write_checkpoint("interval")
    sequencing.sign_tree_head()
    export = b"".join(desk.get("/audit/export.jsonl").streaming_content).decode()
    traced = AuditEvent.objects.filter(canonical__contains=AGENT_TRACE).count()
    assert traced >= 1 and export.count(f'"trace":"{AGENT_TRACE}"') == traced
    (tmp_path / "export.jsonl").write_text(export)
    verdict = run_verifier(tmp_path / "export.jsonl")
    assert verdict.returncode == 0 and "OK" in verdict.stdout, verdict.stdout + verdict.stderr


@pytest.mark.django_db(transaction=True)
def test_an_unsampled_trace_leaves_no_trace_id_in_the_audit_event(spans, agent, actions):
    """An agent's traceparent whose flags say "not sampled" (-00): no span is exported, so the event
    keeps no id that would lead nowhere."""
    spans.clear()
    response = dispatch_over_asgi(agent, "send_receipt", traceparent=f"00-{AGENT_TRACE}-{AGENT_SPAN}-00")
    assert response.status_code == 200
    assert not [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    event = AuditEvent.objects.filter(action__startswith="dispatch.").get()
    assert "trace" not in json.loads(event.canonical) and AGENT_TRACE not in event.canonical


@pytest.mark.django_db(transaction=True)
def test_without_a_trace_nothing_changes_in_the_audit_event(spans, agent, actions, auditor):
    """A request with no traceparent gets a trace of its own (the events keep its id); with no
    span at all the event's bytes are exactly today's, with no "trace" key."""
    spans.clear()
    dispatch_over_asgi(agent, "send_receipt", traceparent=None)
    own = spans.get_finished_spans()
    server = next(s for s in own if s.kind == SpanKind.SERVER)
    assert server.parent is None
    event = AuditEvent.objects.filter(action__startswith="dispatch.").get()
    assert json.loads(event.canonical)["trace"] == format(server.context.trace_id, "032x")

    tracing.uninstrument()
    dispatch_over_asgi(agent, "send_receipt", traceparent=TRACEPARENT)
    untraced = AuditEvent.objects.filter(action__startswith="dispatch.").order_by("-seq").first()
    assert untraced.seq != event.seq and "trace" not in json.loads(untraced.canonical)
    desk = Client()
    desk.force_login(auditor)
    assert "<dt>Trace</dt>" not in desk.get(f"/audit/events/{untraced.seq}/").content.decode()


def test_without_the_endpoint_no_provider_is_installed():
    """A fresh process without OTEL_EXPORTER_OTLP_ENDPOINT loads the application with no provider and
    no instrumentation or exporter imported; with it, the provider is installed and named."""
    code = ("import sys; from config.asgi import application; from config import tracing; "
            "from opentelemetry import trace; "
            "print(tracing._provider is not None, type(trace.get_tracer_provider()).__name__, "
            "any(m.startswith(('opentelemetry.instrumentation', 'opentelemetry.exporter')) for m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert off.stdout.split() == ["False", "ProxyTracerProvider", "False"], off.stderr[-2000:]
    on_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "ringfence-eu"}
    code_on = ("from config.asgi import application; from config import tracing; "
               "print(tracing._provider.resource.attributes['service.name'])")
    on = subprocess.run([sys.executable, "-c", code_on], env=on_env, capture_output=True, text=True, timeout=60)
    assert on.stdout.split() == ["ringfence-eu"], on.stderr[-2000:]


class Collector:
    """A tiny OTLP/HTTP collector: keeps the spans POSTed to /v1/traces (protobuf)."""

    def __init__(self) -> None:
        self.spans: list = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    for resource in request.resource_spans:
                        service = {a.key: a.value.string_value for a in resource.resource.attributes}
                        for scope in resource.scope_spans:
                            collector.spans += [(service.get("service.name"), span) for span in scope.spans]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.django_db(transaction=True)
def test_the_worker_continues_the_trace_of_the_request_that_published_its_task(
        spans, published, agent, actions, approver):
    collector = Collector()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    try:
        with celery_processes(beat=False, env=env) as celery:
            response = dispatch_over_asgi(agent, "refund_customer")
            assert response.json()["decision"] == "pending"
            immediate = [task for task, headers in published if "eta" not in headers or not headers["eta"]]
            assert immediate, published
            runs = wait_until(lambda: [(service, span) for service, span in collector.spans
                                       if span.name.startswith("run/") and span.trace_id.hex() == AGENT_TRACE],
                              timeout=30, what="the worker's task span reached the collector")
            celery.check_alive()
    finally:
        collector.close()
    assert {service for service, _ in runs} == {"ringfence-worker"}
    assert {span.name for _, span in runs} >= {f"run/{task}" for task in immediate}
    producer_ids = {span.context.span_id for span in spans.get_finished_spans() if span.kind == SpanKind.PRODUCER}
    assert {int.from_bytes(span.parent_span_id, "big") for _, span in runs} <= producer_ids
    # The worker's own queries are in the same trace.
    assert any(span.trace_id.hex() == AGENT_TRACE and not span.name.startswith("run/")
               for _, span in collector.spans)
