"""IN-01 and IN-04: schemathesis over the whole OpenAPI, positive and negative cases.

Every operation gets generated requests with a valid token. Checks: no 5xx, responses conform
to the documented schemas, negative cases are refused, every 4xx is problem JSON, requests
that were refused changed nothing, and the audit chain verifies afterwards.
"""

from __future__ import annotations

import zlib
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode

from approvals.models import ApprovalRequest
from audit import log as audit
from audit.models import AuditEvent
from config.wsgi import application
from core.problems import CONTENT_TYPE
from governance.models import Workflow
from rollouts.models import ContextTag, RolloutAction, Signal
from tests.api.conftest import dispatch

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

MAX_EXAMPLES = 5
SEEN: Counter = Counter()


@schemathesis.check
def problem_json_for_every_error(ctx, response, case):
    """IN-04: every error is RFC 9457 problem JSON with our members and no trace."""
    SEEN[(case.operation.label, response.status_code)] += 1
    if response.status_code < 400:
        return None
    assert response.headers.get("content-type", [""])[0].split(";")[0] == CONTENT_TYPE, "error is not problem+json"
    body = response.json()
    missing = {"type", "title", "status", "detail", "instance", "code", "errors"} - set(body)
    assert not missing, f"problem lacks {missing}"
    assert body["status"] == response.status_code
    assert "Traceback" not in response.text
    return True


schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", application)
schema.config.generation.update(modes=["positive", "negative"], max_examples=MAX_EXAMPLES)
# 422 is the documented answer to a well-formed request a rule refuses (an unknown metric, an
# empty reason), so positive data may meet it.
schema.config.checks.positive_data_acceptance.expected_statuses = ["2xx", "401", "403", "404", "409", "422", "429"]


@pytest.fixture
def fuzzing(agent, api, actions, live_plan, settings):
    settings.API_RATE_LIMIT_REQUESTS = 1_000_000
    settings.API_LONG_POLL_MAX_SECONDS = 0.2
    approval_id = dispatch(api, "refund_customer").json()["approval_id"]
    known = {"workflow": "refund-agent", "slug": "refund-agent", "approval_id": approval_id, "plan_id": live_plan.pk,
             "plan": live_plan.pk}
    yield agent, known
    report = audit.verify_database()  # after all of the operation's generated requests
    assert report.ok, report


def _coin(case) -> bool:
    return zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode()) % 3 != 0


def _refer_to_existing_objects(case, known: dict) -> None:
    """Most positive cases name the workflow, plan and approval that exist, so that the
    generated values reach the rules behind the lookups instead of stopping at a 404."""
    for part in (case.path_parameters, case.query, case.body):
        if isinstance(part, dict):
            for name in set(part) & set(known):
                part[name] = known[name]


def state() -> tuple:
    """What a refused request must not change."""
    return (ApprovalRequest.objects.count(), AuditEvent.objects.count(), Signal.objects.count(),
            RolloutAction.objects.count(), ContextTag.objects.count(),
            tuple(Workflow.objects.order_by("pk").values_list("paused", flat=True)))


@schema.parametrize()
@hypothesis_settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, fuzzing):
    agent, known = fuzzing
    if case.meta and case.meta.generation.mode == GenerationMode.POSITIVE and _coin(case):
        _refer_to_existing_objects(case, known)
    before = state()
    response = case.call_and_validate(headers={"Authorization": f"Bearer {agent.token}"})
    if response.status_code >= 400:
        assert state() == before, f"{case.operation.label} answered {response.status_code} but changed state"



@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    by_operation: dict[str, Counter] = {}
    for (label, status), count in SEEN.items():
        by_operation.setdefault(label, Counter())[status] += count
    print("\nIN-01 cases per operation (by status):")
    for label, counts in sorted(by_operation.items()):
        print(f"  {label}: {sum(counts.values())} {dict(sorted(counts.items()))}")
