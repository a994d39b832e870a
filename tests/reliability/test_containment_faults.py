"""Containment while the broker is down: a containment owner's rollback is committed and answered
at once, and the webhook executor performs it once Redis is back, because the sweep re-sends the
action whose message could not be published (the database is the truth)."""

from __future__ import annotations

import time

import pytest
from django.conf import settings

from audit.models import AuditEvent
from governance import services as governance_services
from governance.permissions import Role
from rollouts import plans as rollout_plans
from rollouts.models import ActionState, RolloutAction, RolloutPlan
from tests import factories
from tests.reliability.waiting import wait_until
from tests.reliability.web import session_headers
from tests.rollouts.conftest import DUTIES, plan_spec
from tests.rollouts.receiver import running_receiver

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]

SWEEP_S, STALL_S = 0.5, 2  # ROLLOUT_SWEEP_SECONDS and ROLLOUT_EXECUTOR_STALL_SECONDS of the processes
DOWN_S = 6


@pytest.fixture
def receiver():
    with running_receiver() as running:
        yield running


def test_a_rollback_asked_while_redis_is_down_commits_at_once_and_is_executed_once_it_returns(
        services, private_redis, figures, admin_user, workflow, containment_owner, receiver):
    for duty in DUTIES:
        governance_services.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty=duty)
    release_manager = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    factories.scope(release_manager, workflow)
    plan = rollout_plans.create_plan(actor=release_manager, workflow=workflow,
                                     **plan_spec(executor="webhook", webhook_url=receiver.url))
    rollout_plans.start_rollout(plan.pk, actor=release_manager)
    env = {"ROLLOUT_SWEEP_SECONDS": SWEEP_S, "ROLLOUT_EXECUTOR_STALL_SECONDS": STALL_S,
           "ROLLOUT_WEBHOOK_SECRET": settings.ROLLOUT_WEBHOOK_SECRET}
    web = services.web(ready=False, **env)
    for process in (services.worker(ready=False, **env), services.beat(ready=False, **env)):
        process.wait_for_ready()
    web.wait_ready()

    private_redis.shutdown_nosave()
    stopped = time.monotonic()
    answer = web.request("POST", f"/rollouts/{plan.pk}/actions/rollback/", timeout=30,
                         body=b"reason=latency+doubled+for+partners",
                         headers={**session_headers(containment_owner),
                                  "Content-Type": "application/x-www-form-urlencoded"})
    action = RolloutAction.objects.filter(plan=plan, kind="rollback").first()
    committed_state = action.state if action else None
    time.sleep(max(0.0, DOWN_S - (time.monotonic() - stopped)))  # the outage's length is the test's input
    assert not receiver.requests, "nothing can run the action while the broker is down"
    private_redis.start()
    back = time.monotonic()

    wait_until(lambda: RolloutAction.objects.get(pk=action.pk).state == ActionState.SUCCEEDED, 60,
               "the rollback was executed after Redis returned")
    executed_after = time.monotonic() - back
    wait_until(lambda: RolloutPlan.objects.get(pk=plan.pk).state == "rolled_back", 10, "the plan rolled back")
    rolled_back = [e for e in AuditEvent.objects.filter(action="rollout.rolled_back")
                   if e.data.get("action") == action.pk]
    figures.report("CON-BRK", f"Redis stopped {DOWN_S} s: the rollback page answered {answer.status} in "
                              f"{answer.seconds:.2f} s with the action {committed_state}; executed "
                              f"{executed_after:.1f} s after Redis returned (sweep {SWEEP_S:g} s, stall "
                              f"{STALL_S:g} s), receiver effects {sum(receiver.effects.values())}",
                   page_s=round(answer.seconds, 2), executed_after_s=round(executed_after, 1),
                   effects=sum(receiver.effects.values()))
    assert answer.status == 302 and answer.headers["location"] == f"/rollouts/{plan.pk}/"  # back to the plan page
    assert committed_state == ActionState.SCHEDULED
    assert receiver.effects == {action.idempotency_key: 1}
    assert len(rolled_back) == 1
    assert executed_after <= STALL_S + SWEEP_S + 5
