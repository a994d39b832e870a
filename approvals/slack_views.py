"""Slack's door: `POST /integrations/slack/interactions`, where Slack sends button presses and modal
submissions. Nothing of the body is read before its signature is checked: a missing, wrong or
stale (over 5 minutes) signature is answered 401 and changes nothing."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from approvals import slack, slack_interactions
from core.denials import security_log


@csrf_exempt  # Slack signs its requests instead
@require_POST
def interactions(request: HttpRequest) -> HttpResponse:
    if not slack.enabled():
        return HttpResponse("Slack is not configured here.", status=404, content_type="text/plain")
    if not slack.signature_ok(request.body, request.headers):
        security_log.info("refused a Slack request: bad or stale signature, path=%s", request.path)
        return HttpResponse("Bad or stale Slack signature.", status=401, content_type="text/plain")
    try:
        payload = json.loads(request.POST.get("payload") or "")
    except json.JSONDecodeError:
        return HttpResponse("Expected a form field `payload` holding JSON.", status=400, content_type="text/plain")
    if not isinstance(payload, dict):
        return HttpResponse("Expected a JSON object.", status=400, content_type="text/plain")
    answer = slack_interactions.handle(payload)
    return HttpResponse(status=200) if answer is None else JsonResponse(answer)
