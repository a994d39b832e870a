from __future__ import annotations

import logging
import os

from celery import Celery, bootsteps
from celery.app.amqp import AMQP
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown
from kombu import Connection

from core.worker_watchdog import StallWatchdog

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
logger = logging.getLogger(__name__)

_ENSURE_ARGS = ("errback", "max_retries", "interval_start", "interval_step", "interval_max")
_BACKOFF = ("interval_start", "interval_step", "interval_max")


class BrokerConnection(Connection):
    """kombu's connection, reconnecting with the backoff of the broker's transport options.

    kombu applies `interval_start/step/max` from the transport options when a publish reconnects,
    but the worker's consumer and beat call `ensure_connection` without them and get kombu's
    built-in 2, 4, 6 … 30 s: after an outage they would come back up to 30 s after the broker.
    """

    def ensure_connection(self, *args, **kwargs):
        given = set(_ENSURE_ARGS[:len(args)]) | kwargs.keys()
        for key in _BACKOFF:
            if key in self.transport_options and key not in given:
                kwargs[key] = self.transport_options[key]
        return super().ensure_connection(*args, **kwargs)


class BrokerAMQP(AMQP):
    Connection = BrokerConnection


class SweepAfterReconnect(bootsteps.StartStopStep):
    """A worker whose broker connection came back sends the timer sweep at once.

    Timers that fell due while the broker was away then fire as soon as it returns, not when
    beat's next sweep comes round (up to TIMER_SWEEP_SECONDS later; TMR-04). A sweep more is
    harmless (TMR-06). Not on the first connection: a worker starting is no sign of an outage.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}
    SCHEDULE_ENTRY = "sweep-due-timers"

    def __init__(self, parent, **kwargs) -> None:
        super().__init__(parent, **kwargs)
        self.connected_before = False

    def start(self, parent) -> None:
        if self.connected_before:
            entry = parent.app.conf.beat_schedule.get(self.SCHEDULE_ENTRY)
            try:
                if entry is not None:
                    parent.app.send_task(entry["task"])
            except Exception:  # noqa: BLE001 - beat sends the next sweep anyway
                logger.warning("could not send the sweep after reconnecting", exc_info=True)
        self.connected_before = True


class RingfenceCelery(Celery):
    def connection_for_write(self, url=None, **kwargs):
        """Connections that publish (pages, beat, tasks) give up on a hung broker after
        REDIS_SOCKET_TIMEOUT_SECONDS; the worker's consuming connection keeps the broker's
        transport options and waits a hiccup out (TMR-05)."""
        from django.conf import settings

        given = kwargs.get("transport_options") or {}
        kwargs["transport_options"] = {**settings.BROKER_PUBLISH_TRANSPORT_OPTIONS, **given}
        kwargs.setdefault("connect_timeout", settings.REDIS_SOCKET_TIMEOUT_SECONDS)
        return super().connection_for_write(url, **kwargs)


def _log_through_django(**_) -> None:
    """With LOG_FORMAT=json the worker and beat log through Django's LOGGING (JSON lines, each with its
    task's request id) instead of Celery's own format, which Celery keeps unless this signal is answered."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
    setup_logging.connect(_log_through_django, weak=False)


def _trace_this_process(**_) -> None:
    """Each pool process of a worker traces its tasks when OTEL_EXPORTER_OTLP_ENDPOINT is set (config.tracing)."""
    from config import tracing

    tracing.setup(tracing.WORKER_SERVICE, web=False)


def _send_last_spans(**_) -> None:
    from config import tracing

    tracing.shutdown()


if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
    worker_process_init.connect(_trace_this_process, weak=False)
    worker_process_shutdown.connect(_send_last_spans, weak=False)

app = RingfenceCelery("ringfence", amqp=BrokerAMQP)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.steps["consumer"].add(SweepAfterReconnect)
app.steps["worker"].add(StallWatchdog)
app.autodiscover_tasks()
