"""The API parses bodies and keys exactly as documented, and every refusal changes nothing.

Idempotency keys match their published pattern, bodies are UTF-8 JSON sent as JSON, nothing is
coerced, a member named twice is refused, and `observed_at` is a time a sample can have been
measured at. Each refusal is 4xx problem JSON naming the field; no audit entry, no request row.
"""

from __future__ import annotations

import codecs
import datetime as dt
import json
import re
from contextlib import contextmanager

import pytest
import time_machine
from django.test import Client

from approvals.models import ApprovalRequest
from audit.models import AuditEvent
from core import clock, idempotency, jsonbody
from core.api_schemas import Command
from core.models import IdempotencyKey
from core.problems import Problem
from governance import services
from governance.models import Workflow
from rollouts.models import ContextTag, RolloutAction, Signal
from tests import factories
from tests.api.conftest import assert_problem, dispatch, issue

pytestmark = pytest.mark.django_db

PAUSE = "/api/v1/workflows/refund-agent/pause"


@pytest.fixture
def now():
    """The clock stopped at a whole second (tokens live 90 days: no travelling years ahead)."""
    at = clock.now().astimezone(dt.UTC).replace(microsecond=0)
    with time_machine.travel(at, tick=False):
        yield at


def rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def snapshot() -> tuple:
    return (AuditEvent.objects.count(), ApprovalRequest.objects.count(), IdempotencyKey.objects.count(),
            Signal.objects.count(), ContextTag.objects.count(), RolloutAction.objects.count(),
            tuple(Workflow.objects.order_by("pk").values_list("paused", flat=True)))


@contextmanager
def changes_nothing():
    before = snapshot()
    yield
    assert snapshot() == before


def post(client: Client, path: str, body: bytes | str, content_type: str = "application/json", **headers):
    return client.generic("POST", path, body, content_type=content_type, headers=headers)


def fields(problem: dict) -> list[tuple[str, str]]:
    return [(e["in"], e["field"]) for e in problem["errors"]]


# -- 1. Idempotency keys ---------------------------------------------------------------------

@pytest.mark.parametrize("key", ["two words", "x" * 256, "naïve", 'a"b', "tab\there", '""', "é"])
def test_an_idempotency_key_outside_its_pattern_is_400_and_changes_nothing(api, actions, key):
    with changes_nothing():
        problem = assert_problem(dispatch(api, "send_receipt", key=key), 400, "idempotency_key_invalid")
    assert fields(problem) == [("header", "Idempotency-Key")]


@pytest.mark.parametrize("key", ["0b9e7c1e-3f5d-4c2a-9a61-5d8f0e2b7c44", "job-42:step.3_retry/2", "x" * 255,
                                 '"quoted-as-sf-string"',
                                 "!#$%&'()*+-./:;<=>?@[\\]^_`{|}~"])
def test_keys_matching_the_published_pattern_are_accepted(api, actions, key):
    assert dispatch(api, "send_receipt", key=key).status_code == 200
    assert IdempotencyKey.objects.count() == 1


def test_the_openapi_document_publishes_the_pattern_the_server_applies(api):
    operation = api.get("/api/v1/openapi.json").json()["paths"]["/api/v1/dispatch"]["post"]
    header = next(p for p in operation["parameters"] if p["name"] == "Idempotency-Key")
    assert header["schema"]["pattern"] == idempotency.KEY_PATTERN and header["schema"]["maxLength"] == 255
    published = re.compile(header["schema"]["pattern"])
    assert published.match("b1c0-42") and not published.match("two words") and not published.match("a,b")


# -- 2. UTF-8, and JSON where JSON is expected -----------------------------------------------

REASON = {"reason": "incident 7, café"}


@pytest.mark.parametrize(("raw", "why"), [
    (json.dumps(REASON).encode("utf-16"), "byte order mark"),
    (json.dumps(REASON).encode("utf-16-le"), "UTF-16-LE"),
    (json.dumps(REASON).encode("utf-32-be"), "UTF-32-BE"),
    (codecs.BOM_UTF8 + json.dumps(REASON).encode(), "byte order mark"),
    (json.dumps(REASON, ensure_ascii=False).encode("latin-1"), "not valid UTF-8"),
])
def test_a_body_that_is_not_utf8_is_400_naming_the_body(api, workflow, raw, why):
    with changes_nothing():
        problem = assert_problem(post(api, PAUSE, raw), 400, "malformed_body")
    assert why in problem["detail"] and fields(problem) == [("body", "(body)")]


def test_the_first_invalid_byte_is_named():
    with pytest.raises(Problem) as refused:
        jsonbody.decode(b'{"reason": "ok \xff"}')
    assert refused.value.errors[0].message == "Byte 15 is not valid UTF-8."


@pytest.mark.parametrize("content_type", ["application/json; charset=latin-1", "application/json; charset=utf-16",
                                          "text/plain", "application/merge-patch+json",
                                          "application/x-www-form-urlencoded"])
def test_another_media_type_or_charset_is_415_naming_content_type(api, workflow, content_type):
    with changes_nothing():
        problem = assert_problem(post(api, PAUSE, json.dumps(REASON).encode(), content_type), 415,
                                 "unsupported_media_type")
    assert fields(problem) == [("header", "Content-Type")]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/json; charset=UTF-8",
                                          "Application/JSON"])
def test_json_with_a_utf8_charset_is_accepted(api, workflow, content_type):
    response = post(api, PAUSE, json.dumps(REASON, ensure_ascii=False).encode(), content_type)
    assert response.status_code == 200 and response.json()["paused_reason"] == REASON["reason"]


def test_an_escaped_lone_surrogate_is_400_naming_the_field_and_a_pair_is_a_character(api, workflow):
    with changes_nothing():
        problem = assert_problem(post(api, PAUSE, b'{"reason": "broken \\ud800 text"}'), 400, "malformed_body")
    assert fields(problem) == [("body", "reason")]
    response = post(api, PAUSE, b'{"reason": "smile \\ud83d\\ude00"}')
    assert response.status_code == 200 and response.json()["paused_reason"] == "smile \U0001f600"


# -- 3. No coercion --------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "kind"), [("0.5", "float_type"), (True, "float_type"), ("1", "float_type")])
def test_a_number_sent_as_text_or_boolean_is_refused(api, actions, value, kind):
    with changes_nothing():
        problem = assert_problem(dispatch(api, "send_receipt", confidence=value), 422, "invalid")
    assert [(e["field"], e["type"]) for e in problem["errors"]] == [("confidence", kind)]


def test_an_integer_is_a_number(api, actions):
    assert dispatch(api, "send_receipt", confidence=1).status_code == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"reason": 5}, "reason"),
    ({"reason": ["incident"]}, "reason"),
    ({"reason": "x", "to_ring": True}, "to_ring"),
    ({"reason": "x", "to_ring": "0"}, "to_ring"),
    ({"reason": "x", "exposure_percent": 10.0}, "exposure_percent"),
])
def test_text_and_integers_are_not_coerced_either(api, live_plan, body, field):
    with changes_nothing():
        problem = assert_problem(post(api, f"/api/v1/rollouts/{live_plan.pk}/narrow", json.dumps(body)), 422, "invalid")
    assert fields(problem) == [("body", field)]


def test_a_boolean_is_true_or_false_only():
    class Probe(Command):
        flag: bool

    assert Probe.model_validate({"flag": True}).flag is True
    for value in (1, 0, "true", "yes"):
        with pytest.raises(ValueError):
            Probe.model_validate({"flag": value})


def tag(api: Client, ends_at: object):
    body = {"workflow": "refund-agent", "kind": "migration_window", "reason": "db migration", "ends_at": ends_at}
    return post(api, "/api/v1/context-tags", json.dumps(body))


@pytest.mark.parametrize("spell", [lambda at: int(at.timestamp()), lambda at: str(int(at.timestamp())),
                                   lambda at: at.date().isoformat(), lambda at: rfc3339(at)[:-1],
                                   lambda at: rfc3339(at).replace("T", " "), lambda at: "next tuesday",
                                   lambda at: True])
def test_a_date_time_is_an_rfc3339_string_with_its_offset(api, workflow, now, spell):
    with changes_nothing():
        problem = assert_problem(tag(api, spell(now + dt.timedelta(days=2))), 422, "invalid")
    assert fields(problem) == [("body", "ends_at")]


@pytest.mark.parametrize("spell", [rfc3339, lambda at: at.astimezone(dt.timezone(dt.timedelta(hours=1))).isoformat(),
                                   lambda at: rfc3339(at).replace("T", "t").replace("Z", ".5z")])
def test_rfc3339_date_times_are_accepted(api, workflow, now, spell):
    response = tag(api, spell(now + dt.timedelta(hours=2)))
    assert response.status_code == 201, response.content
    assert ContextTag.objects.get().ends_at.replace(microsecond=0) == now + dt.timedelta(hours=2)


# -- 4. Duplicate members --------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "field"), [
    (b'{"reason": "first", "reason": "second"}', "reason"),
])
def test_a_member_sent_twice_is_422_naming_it(api, workflow, raw, field):
    with changes_nothing():
        problem = assert_problem(post(api, PAUSE, raw, **{"Idempotency-Key": "k-1"}), 422, "duplicate_key")
    assert fields(problem) == [("body", field)]


def test_a_nested_member_sent_twice_is_named_by_its_path(api, actions):
    raw = b'{"workflow": "refund-agent", "action": "send_receipt", "parameters": {"amount": 10, "amount": 5000}}'
    with changes_nothing():
        problem = assert_problem(post(api, "/api/v1/dispatch", raw, **{"Idempotency-Key": "k-2"}), 422,
                                 "duplicate_key")
    assert fields(problem) == [("body", "parameters.amount")]


def test_a_sample_member_sent_twice_refuses_the_batch(api, live_plan, now):
    at = rfc3339(now - dt.timedelta(minutes=1))
    raw = ('{"workflow": "refund-agent", "samples": [{"metric": "error_rate", "value": 0.01, "observed_at": "%s"},'
           ' {"metric": "error_rate", "value": 0.01, "value": 0.9, "observed_at": "%s"}]}' % (at, at)).encode()
    with changes_nothing():
        problem = assert_problem(post(api, "/api/v1/signals", raw), 422, "duplicate_key")
    assert fields(problem) == [("body", "samples.1.value")]


@pytest.fixture
def ci(admin_user, workflow) -> Client:
    account = factories.make_service_account("gitops", owner=admin_user, workflows=[workflow])
    services.update_service_account(account.pk, actor=admin_user, permissions=["config"])
    return Client(headers={"Authorization": f"Bearer {issue(account)}"})


def test_the_config_api_refuses_a_member_sent_twice_too(ci):
    raw = b'{"workflows": [{"slug": "voucher-agent", "slug": "refund-agent"}]}'
    with changes_nothing():
        problem = assert_problem(post(ci, "/api/v1/config/plan", raw), 422, "duplicate_key")
    assert fields(problem) == [("body", "workflows.0.slug")]
    # apply reads its body under its Idempotency-Key: the refusal is the key's answer, replayed as documented.
    events = AuditEvent.objects.count()
    refused = post(ci, "/api/v1/config/apply", raw, **{"Idempotency-Key": "deploy-1"})
    assert fields(assert_problem(refused, 422, "duplicate_key")) == [("body", "workflows.0.slug")]
    replayed = post(ci, "/api/v1/config/apply", raw, **{"Idempotency-Key": "deploy-1"})
    assert replayed.content == refused.content and replayed["Idempotent-Replayed"] == "true"
    assert AuditEvent.objects.count() == events and not Workflow.objects.filter(slug="voucher-agent").exists()


@pytest.mark.parametrize(("raw", "content_type", "status", "code"), [
    (b'{"workflows": []}', "application/json; charset=latin-1", 415, "unsupported_media_type"),
    (b"workflows: []", "application/yaml; charset=iso-8859-1", 415, "unsupported_media_type"),
    (codecs.BOM_UTF8 + b'{"workflows": []}', "application/json", 400, "malformed_body"),
    (b'{"workflows": NaN}', "application/json", 422, "non_finite_number"),
])
def test_the_config_api_reads_json_as_strictly_as_every_body(ci, raw, content_type, status, code):
    with changes_nothing():
        assert_problem(post(ci, "/api/v1/config/plan", raw, content_type), status, code)


# -- 5. observed_at within a sane range ------------------------------------------------------

def samples(*observed_at: str) -> str:
    return json.dumps({"workflow": "refund-agent", "samples": [
        {"metric": "error_rate", "value": 0.01, "observed_at": at, "segment": f"customer_group:c{i}"}
        for i, at in enumerate(observed_at)]})


@pytest.mark.parametrize(("spell", "message"), [
    (lambda now: "1999-12-31T23:59:59Z", "Before 2000"),
    (lambda now: "1970-01-01T00:00:00Z", "Before 2000"),
    (lambda now: rfc3339(now + dt.timedelta(minutes=5, seconds=1)), "More than 5 minutes in the future"),
    (lambda now: rfc3339(now + dt.timedelta(days=365)), "More than 5 minutes in the future"),
])
def test_a_sample_measured_before_2000_or_beyond_the_allowed_skew_is_refused(api, live_plan, now, spell, message):
    with changes_nothing():
        problem = assert_problem(post(api, "/api/v1/signals", samples(rfc3339(now), spell(now))), 422,
                                 "invalid_samples")
    assert fields(problem) == [("body", "samples.1.observed_at")]
    assert problem["errors"][0]["message"].startswith(message)


def test_samples_from_2000_up_to_the_allowed_skew_are_stored(api, live_plan, now):
    response = post(api, "/api/v1/signals", samples("2000-01-01T00:00:00Z", rfc3339(now + dt.timedelta(minutes=5))))
    assert response.status_code == 200, response.content
    assert response.json()["stored"] == 2 and response.json()["late"] == 1


def test_observed_at_as_a_unix_timestamp_is_refused(api, live_plan, now):
    raw = json.dumps({"workflow": "refund-agent", "samples": [
        {"metric": "error_rate", "value": 0.01, "observed_at": now.timestamp()}]})
    with changes_nothing():
        problem = assert_problem(post(api, "/api/v1/signals", raw), 422, "invalid")
    assert fields(problem) == [("body", "samples.0.observed_at")]
