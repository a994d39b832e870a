"""OpenTelemetry tracing, when OTEL_EXPORTER_OTLP_ENDPOINT is set; nothing at all when it is not.

Each process sets itself up once: the web process when its WSGI or ASGI application is built
(config.wsgi, config.asgi), a Celery worker's pool process when it starts (`worker_process_init`,
config.celery). Setting up installs a TracerProvider named OTEL_SERVICE_NAME (`ringfence` for the
web, `ringfence-worker` for workers) whose spans leave in batches for the OTLP/HTTP collector, and
instruments Django (one server span per request), psycopg (one span per query) and Celery (one
span per task published and per task run). Without the endpoint nothing is installed and this
module imports no OpenTelemetry package (redis loads the SDK's metrics module by itself when the
SDK is installed, and leaves it unused).

What that gives: an agent that sends a W3C `traceparent` with its dispatch finds its trace continued
in the request's span, in the database queries under it, and in the Celery tasks the request
published (timers, notices, executors), whose messages carry the trace context in their headers.
Every audit event recorded under a span keeps the trace id (audit.log), so an auditor goes from a
decision to the agent's trace (OTEL_TRACE_URL_TEMPLATE links it on the event's page).

The SDK reads the other standard variables itself: OTEL_EXPORTER_OTLP_HEADERS (a collector's API
key), OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (e.g.
`parentbased_traceidratio` and `0.1`), OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_* (the batch processor).
The health and metrics endpoints get no spans (OTEL_PYTHON_DJANGO_EXCLUDED_URLS overrides that).
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
WEB_SERVICE = "ringfence"
WORKER_SERVICE = "ringfence-worker"
# Polled by supervisors and Prometheus every few seconds: spans of them would drown the rest.
EXCLUDED_URLS = "/healthz,/readyz,/metrics"

_provider: Any = None
_instrumentors: list[Any] = []


def enabled() -> bool:
    return bool(os.environ.get(ENDPOINT, "").strip())


def setup(default_service_name: str, *, web: bool = True) -> bool:
    """Install the exporting TracerProvider and the instrumentation once per process; False (and
    nothing imported) when OTEL_EXPORTER_OTLP_ENDPOINT is unset or it was done already."""
    global _provider
    if _provider is not None or not enabled():
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", "").strip() or default_service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint, headers: OTEL_* variables
    trace.set_tracer_provider(provider)
    _provider = provider
    instrument(provider, web=web)
    logger.info("tracing: spans of %s go to %s", name, os.environ[ENDPOINT].strip())
    return True


def instrument(tracer_provider: Any, *, web: bool = True) -> None:
    """Django (in the web process), psycopg and Celery, onto `tracer_provider` (the tests pass one
    that keeps spans in memory)."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    if web:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        django = DjangoInstrumentor()
        django.instrument(tracer_provider=tracer_provider,
                          excluded_urls=os.environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS", EXCLUDED_URLS))
        _instrumentors.append(django)
    psycopg = PsycopgInstrumentor()
    psycopg.instrument(tracer_provider=tracer_provider)
    celery = CeleryInstrumentor()
    celery.instrument(tracer_provider=tracer_provider)
    _instrumentors.extend([psycopg, celery])


def uninstrument() -> None:
    """Undo `instrument` (tests)."""
    while _instrumentors:
        _instrumentors.pop().uninstrument()


def shutdown() -> None:
    """Send the spans still waiting in the batch (a worker process that ends)."""
    if _provider is not None:
        _provider.shutdown()
