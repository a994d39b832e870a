"""Fault harness (RELIABILITY.md §4.7): private PostgreSQL and Redis on loopback ports, Ringfence's
processes against them, a TCP proxy for network faults, and the figures each test reports.

Every test under tests/reliability runs against the private cluster: this directory's
`django_db_setup` points Django's default connection at it and migrates it, so the shared
services on 5432/6379 never see a fault. Run with `make test-reliability` (`-m reliability`).
"""

from __future__ import annotations

import atexit
import os
import warnings
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections
from django.test import override_settings

from config.celery import app as celery_app
from governance.permissions import Role
from tests import factories
from tests.reliability.figures import Figures
from tests.reliability.pg import SUPERUSER, PrivateCluster
from tests.reliability.processes import Services
from tests.reliability.proxy import TcpProxy
from tests.reliability.redis_server import PrivateRedis

HERE = Path(__file__).resolve().parent
DBNAME = "ringfence_rel"
_figures = pytest.StashKey[Figures]()


def _is_reliability(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def pytest_itemcollected(item):
    if _is_reliability(item) and item.get_closest_marker("reliability") is None:
        item.add_marker(pytest.mark.reliability)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    # This directory repoints Django's database for the whole session; mixed with the rest of the
    # suite in one run it would move the other tests onto the private cluster. Run it on its own.
    mine = [item for item in items if _is_reliability(item)]
    if mine and len(mine) != len(items):
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if not _is_reliability(item)]
        warnings.warn(pytest.PytestWarning(
            f"{len(mine)} tests of tests/reliability deselected: run them on their own with "
            "`make test-reliability` (-m reliability)."), stacklevel=1)


def pytest_configure(config):
    config.stash[_figures] = Figures()


def pytest_terminal_summary(terminalreporter, config):
    figures = config.stash.get(_figures, None)
    if figures and figures.lines:
        terminalreporter.section("Ringfence reliability figures")
        for test_id, summary in figures.lines:
            terminalreporter.write_line(f"{test_id:8} {summary}")


@pytest.fixture
def figures(request) -> Figures:
    return request.config.stash[_figures]


@pytest.fixture
def agent(workflow, admin_user):
    """A service account asking for approvals of `workflow`, owned by a release manager."""
    owner = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    factories.scope(owner, workflow)
    return factories.make_service_account("refund-bot", owner=owner, workflows=[workflow])


# -- private PostgreSQL ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_cluster():
    cluster = PrivateCluster(DBNAME)
    atexit.register(cluster.destroy)  # also on an interrupted run
    cluster.init()
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker, pg_cluster):
    """Point the default connection at the private cluster and migrate it (no test_ copy: the
    whole cluster is throwaway)."""
    with django_db_blocker.unblock():
        connections.close_all()
        connections["default"].settings_dict.update(
            HOST="127.0.0.1", PORT=str(pg_cluster.port), NAME=DBNAME, USER=SUPERUSER, PASSWORD=""
        )
        call_command("migrate", verbosity=0, interactive=False)
    yield
    with django_db_blocker.unblock():
        connections.close_all()


@pytest.fixture
def private_pg(transactional_db, pg_cluster):
    """The private cluster, running and thawed at the start and at the end of the test (before
    the transactional flush, whatever the test did to it)."""
    pg_cluster.thaw()
    if not pg_cluster.running():
        pg_cluster.start()
    yield pg_cluster
    pg_cluster.thaw()
    if not pg_cluster.running():
        pg_cluster.start()
    pg_cluster.wait_ready()
    connections.close_all()  # a connection the fault cut must not be reused by the flush


# -- private Redis -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_server():
    server = PrivateRedis()
    atexit.register(server.destroy)
    server.start()
    yield server
    server.destroy()


@pytest.fixture(scope="session", autouse=True)
def _broker_and_cache_on_private_redis(redis_server):
    """Tasks the test process publishes (on_commit timers, pings) and its cache go to the private
    Redis. Celery lets CELERY_BROKER_URL in the environment override its configuration, so the
    environment is what is changed."""
    url = redis_server.url()
    saved = {key: os.environ.get(key) for key in ("CELERY_BROKER_URL", "REDIS_URL")}
    os.environ.update(CELERY_BROKER_URL=url, REDIS_URL=url)
    celery_app.conf.broker_url = url
    with override_settings(
        CELERY_BROKER_URL=url, REDIS_URL=url,
        CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}},
    ):
        yield
    for key, value in saved.items():
        if value is not None:
            os.environ[key] = value


@pytest.fixture
def private_redis(redis_server):
    redis_server.thaw()
    if not redis_server.running():
        redis_server.start()
    yield redis_server
    redis_server.thaw()
    if not redis_server.running():
        redis_server.start()
    redis_server.client().flushall()


# -- processes and proxy -----------------------------------------------------------------------
@pytest.fixture
def services(private_pg, private_redis, tmp_path):
    """Worker, beat, web and `make run` processes against the private services; killed at teardown."""
    services = Services(tmp_path)
    yield services
    services.cleanup()


@pytest.fixture
def tcp_proxy():
    """`tcp_proxy(upstream_port)` starts a proxy; all are stopped at teardown."""
    started: list[TcpProxy] = []

    def start(upstream_port: int) -> TcpProxy:
        proxy = TcpProxy(upstream_port).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
