"""core.outbound.get, the guarded GET of the metric providers: the same address guard as `post`, the
body read within the size limit and the whole exchange within the timeout, no redirect followed."""

from __future__ import annotations

import time

import pytest

from core import outbound
from tests.support.json_endpoint import json_endpoint


@pytest.fixture
def endpoint():
    with json_endpoint() as server:
        yield server


def test_a_loopback_address_is_refused_and_nothing_is_sent(endpoint, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    with pytest.raises(outbound.Refused, match="metric provider 127.0.0.1 is a loopback address; allow it with "
                                               "WEBHOOK_ALLOWED_NETWORKS"):
        outbound.get(endpoint.url + "/x", {}, timeout=1)
    assert endpoint.requests == []


def test_an_allowed_address_is_read_with_the_headers_and_a_redirect_is_not_followed(endpoint, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    endpoint.answer({"value": 1.5})
    endpoint.answer({"elsewhere": True}, status=302)
    reply = outbound.get(endpoint.url + "/api/v1/query?query=up%7Bjob%3D%22x%22%7D", {"X-Test": "yes"}, timeout=1)
    assert (reply.status, reply.body) == (200, b'{"value": 1.5}')
    assert endpoint.requests[0]["query"] == {"query": ['up{job="x"}']}
    assert endpoint.requests[0]["headers"]["x-test"] == "yes"
    assert outbound.get(endpoint.url + "/moved", {}, timeout=1).status == 302
    assert len(endpoint.requests) == 2


def test_a_long_or_slow_answer_fails_within_its_bounds(endpoint, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    endpoint.answer({"padding": "x" * 5000})
    with pytest.raises(ValueError, match="longer than 1024 bytes"):
        outbound.get(endpoint.url, {}, timeout=1, max_bytes=1024)
    endpoint.answer({"late": True}, delay=2.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        outbound.get(endpoint.url, {}, timeout=0.5)
    assert time.monotonic() - started < 1.5
