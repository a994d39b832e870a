"""An agent calling the API of a web server subprocess, and a person deciding on its pages."""

from __future__ import annotations

import uuid

from governance import services as governance_services
from tests.reliability.http import HttpResponse

ALLOWED, GATED = "send_reply", "refund_customer"  # low risk runs at tier 2; high risk needs a person


def api_token(admin, workflow, agent) -> str:
    """Declare the two actions and issue the agent a token (shown once)."""
    governance_services.define_action(workflow.pk, actor=admin, name=ALLOWED, risk="low")
    governance_services.define_action(workflow.pk, actor=admin, name=GATED, risk="high")
    return governance_services.issue_token(agent.pk, actor=admin, label="reliability").raw


def dispatch(web, token: str, workflow, action: str, *, timeout: float = 30) -> tuple[str, HttpResponse]:
    """POST /api/v1/dispatch with a fresh idempotency key; returns the key and the answer."""
    key = uuid.uuid4().hex
    response = web.request("POST", "/api/v1/dispatch", timeout=timeout,
                           body={"workflow": workflow.slug, "action": action, "parameters": {"ticket": key[:8]}},
                           headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key})
    return key, response


def decide(web, headers: dict[str, str], approval_id: int, verdict: str = "approve", *,
           timeout: float = 30) -> HttpResponse:
    """The decision form of the request page, as a browser without JavaScript posts it."""
    return web.request("POST", f"/approvals/{approval_id}/decide/", timeout=timeout, body=f"verdict={verdict}".encode(),
                       headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})


def decision_of(response: HttpResponse) -> str | None:
    """`allow` / `deny` / `pending` from a 200 dispatch answer, else None."""
    if response.status == 200 and response.content_type == "application/json":
        return response.json().get("decision")
    return None
