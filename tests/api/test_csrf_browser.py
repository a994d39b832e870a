"""ACL-07: CSRF with htmx in Chromium, and the API with and without a session (ASVS 4.0.3 V4.2.2)."""

from __future__ import annotations

import json

import pytest

from governance.models import Workflow

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def sign_in(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw-for-tests-1234")
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


FETCH = """async ([url, headers, body]) => {
  const response = await fetch(url, {method: "POST", headers, body, credentials: "same-origin"});
  return [response.status, response.headers.get("content-type"), await response.text()];
}"""

HTMX_POST = """() => new Promise(resolve => {
  document.body.addEventListener("htmx:afterRequest", e => resolve(e.detail.xhr.status), {once: true});
  document.querySelector("#kill-switch button").click();
})"""


def test_csrf_is_required_for_sessions_and_not_for_bearer_tokens(live_server, page, containment_owner, agent, actions):
    base = live_server.url
    sign_in(page, base, containment_owner.username)
    page.goto(f"{base}/workflows/refund-agent/")
    pause_url = f"{base}/api/v1/workflows/refund-agent/pause"
    results = {}

    # 1. The API with the session cookie and no token or CSRF header: refused.
    status, content_type, text = page.evaluate(FETCH, [pause_url, {"Content-Type": "application/json"},
                                                        json.dumps({"reason": "from a forged page"})])
    results["api session, no CSRF"] = status
    assert status == 403 and content_type.startswith("application/problem+json")
    assert json.loads(text)["code"] == "csrf_failed"
    assert not Workflow.objects.get(slug="refund-agent").paused

    # 2. The API with a bearer token from the same browser: no CSRF needed.
    status, _, text = page.evaluate(FETCH, [f"{base}/api/v1/dispatch",
                                            {"Content-Type": "application/json",
                                             "Authorization": f"Bearer {agent.token}",
                                             "Idempotency-Key": "browser-1"},
                                            json.dumps({"workflow": "refund-agent", "action": "send_receipt"})])
    results["api bearer"] = status
    assert status == 200 and json.loads(text)["decision"] == "allow"

    # 3. An htmx POST without X-CSRFToken (header config and form token removed): refused.
    page.evaluate("""() => { document.body.removeAttribute("hx-headers");
                            document.querySelectorAll("#kill-switch input[name=csrfmiddlewaretoken]")
                                .forEach(i => i.remove());
                            document.querySelector("#id_pause_reason").value = "no token"; }""")
    results["htmx, no CSRF"] = status = page.evaluate(HTMX_POST)
    assert status == 403
    assert not Workflow.objects.get(slug="refund-agent").paused

    # 4. The same htmx POST with hx-headers on <body> (the form's own token removed): accepted.
    page.reload()
    page.evaluate("""() => { document.querySelectorAll("#kill-switch input[name=csrfmiddlewaretoken]")
                                .forEach(i => i.remove());
                            document.querySelector("#id_pause_reason").value = "incident 42"; }""")
    results["htmx, hx-headers"] = status = page.evaluate(HTMX_POST)
    assert status == 200
    page.wait_for_selector("#kill-switch .badge.danger")
    assert Workflow.objects.get(slug="refund-agent").paused_reason == "incident 42"
    print(f"\nACL-07 {results}")
