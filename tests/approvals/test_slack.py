"""Deciding from Slack: requests posted to the workflow's channel and kept up to date there, and
buttons and modals that go through the page's own service, against a local server playing Slack's
Web API and interaction payloads signed the way Slack signs them."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import time_machine
from django.core.management import CommandError, call_command

from approvals import notifications, routing, services, slack
from approvals.models import ApprovalRequest, Decision, Delivery, Notice, SlackDecision, SlackLink, SlackMessage
from approvals.sending import DeliveryFailed
from audit.models import AuditEvent
from core import clock
from governance import services as governance_services
from governance.models import IdentityLink

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
TOKEN = "xoxb-test-bot-token"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TEAM = "T0RINGFENCE"
ALICE, STRANGER = "U0ALICE", "U0STRANGER"
CHANNEL, CHANNEL_ID = "#refunds", "C0REFUNDS1"
URL = "/integrations/slack/interactions"
RULE = {"id": 7, "position": 1, "shadow": False, "condition": "double(params.amount) > 50.0", "outcome": "approve",
        "reason": "", "quorum": 1, "approver_roles": []}
# What each Web API method must be given (https://api.slack.com/methods).
REQUIRED = {"chat.postMessage": ("channel",), "chat.update": ("channel", "ts"),
            "chat.postEphemeral": ("channel", "user", "text"), "views.open": ("trigger_id", "view"),
            "users.info": ("user",)}


class FakeSlack:
    """Slack's Web API on loopback: checks the bot token and each method's documented fields, keeps
    the messages it was asked to post and update, and records every call. `down` answers 503."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.messages: dict[str, dict] = {}  # ts -> {"channel", "text", "blocks"}
        self.emails: dict[str, str] = {}  # users.info: Slack user id -> confirmed email
        self.down = False
        self._ts = itertools.count(1)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, args: dict) -> None:
                method = urlsplit(self.path).path.removeprefix("/api/")
                fake.calls.append({"method": method, "args": args, "auth": self.headers.get("Authorization")})
                if fake.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps(fake.answer(method, args, self.headers.get("Authorization"))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._answer(dict(parse_qsl(urlsplit(self.path).query)))

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    args = json.loads(raw or b"{}")
                else:
                    args = dict(parse_qsl(raw.decode()))
                self._answer(args)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, method: str, args: dict, auth: str | None) -> dict:
        if auth != f"Bearer {TOKEN}":
            return {"ok": False, "error": "not_authed" if not auth else "invalid_auth"}
        if method not in REQUIRED:
            return {"ok": False, "error": "unknown_method"}
        missing = [name for name in REQUIRED[method] if not args.get(name)]
        if missing:
            return {"ok": False, "error": f"missing_{missing[0]}"}
        if method == "chat.postMessage":
            if not (args.get("text") or args.get("blocks")):
                return {"ok": False, "error": "no_text"}
            ts = f"1772445600.{next(self._ts):06d}"
            channel = CHANNEL_ID if args["channel"] == CHANNEL else args["channel"]
            self.messages[ts] = {"channel": channel, "text": args.get("text"), "blocks": args.get("blocks")}
            return {"ok": True, "channel": channel, "ts": ts, "message": {"text": args.get("text")}}
        if method == "chat.update":
            message = self.messages.get(args["ts"])
            if message is None or message["channel"] != args["channel"]:  # needs the channel's id, not its name
                return {"ok": False, "error": "message_not_found"}
            message.update(text=args.get("text"), blocks=args.get("blocks"))
            return {"ok": True, "channel": args["channel"], "ts": args["ts"]}
        if method == "users.info":
            email = self.emails.get(args["user"])
            profile = {"email": email} if email else {}
            return {"ok": True, "user": {"id": args["user"], "deleted": False, "is_email_confirmed": bool(email),
                                         "profile": profile}}
        return {"ok": True}

    def called(self, method: str) -> list[dict]:
        return [c["args"] for c in self.calls if c["method"] == method]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_slack(settings):
    fake = FakeSlack()
    settings.SLACK_BOT_TOKEN, settings.SLACK_SIGNING_SECRET, settings.SLACK_API_URL = TOKEN, SECRET, fake.url
    yield fake
    fake.close()


@pytest.fixture
def frozen():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def routed(workflow, admin_user, approver, fake_slack, frozen):
    """The workflow's notices go to #refunds (and by email to Alice); Alice is linked to her Slack user."""
    routing.set_routes(workflow.pk, actor=admin_user, routes=[{"slack_channel": CHANNEL,
                                                              "emails": ["alice@example.com"]}])
    slack.link_user(actor=admin_user, user=approver, slack_user_id=ALICE, team_id=TEAM)
    return workflow


def deliver_all(req: ApprovalRequest) -> None:
    """What the worker does after commit: deliver every notice of the request not delivered yet."""
    for notice in Notice.objects.filter(request=req, delivered_at__isnull=True).order_by("pk"):
        notifications.deliver(notice.pk)


def texts(blocks: list[dict]) -> str:
    """Every text of a message's or a modal's blocks, in order, one per line."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(blocks)
    return "\n".join(found)


def buttons(blocks: list[dict]) -> dict[str, str]:
    return {e["action_id"]: e.get("value", e.get("url")) for b in blocks if b["type"] == "actions"
            for e in b["elements"]}


def signed(client, payload: dict, *, secret: str = SECRET, at: dt.datetime | None = None):
    """POST an interaction as Slack does: `payload=<json>` form-encoded, signed over v0:timestamp:body."""
    body = urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(int((at or clock.now()).timestamp()))
    signature = "v0=" + hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return client.post(URL, data=body, content_type="application/x-www-form-urlencoded",
                       headers={"X-Slack-Signature": signature, "X-Slack-Request-Timestamp": stamp})


def press(verdict: str, req: ApprovalRequest, slack_user: str = ALICE) -> dict:
    return {"type": "block_actions", "team": {"id": TEAM}, "user": {"id": slack_user, "team_id": TEAM},
            "trigger_id": "1337.42.abcdef", "channel": {"id": CHANNEL_ID},
            "container": {"type": "message", "channel_id": CHANNEL_ID, "message_ts": "1772445600.000001"},
            "response_url": "https://hooks.slack.invalid/actions/1", "actions": [
                {"type": "button", "action_id": f"ringfence_{verdict}", "value": str(req.pk),
                 "block_id": f"request-{req.pk}", "action_ts": "1772445601.1"}]}


def submit(view: dict, justification: str | None, reason: str | None = None, slack_user: str = ALICE) -> dict:
    values = {"justification": {"justification": {"type": "plain_text_input", "value": justification}}}
    if reason is not None:
        values["reason"] = {"reason": {"type": "static_select", "selected_option": {"value": reason}}}
    return {"type": "view_submission", "team": {"id": TEAM}, "user": {"id": slack_user, "team_id": TEAM},
            "view": {**view, "id": "V0MODAL", "state": {"values": values}}}


def audit_actions(req: ApprovalRequest) -> list[str]:
    return list(AuditEvent.objects.filter(subject_type="approvals.approvalrequest", subject_id=str(req.pk))
                .order_by("seq").values_list("action", flat=True))


def test_a_new_request_is_posted_to_its_channel_with_what_rule_evidence_deadline_and_buttons(routed, make_request,
                                                                                          fake_slack):
    req = make_request(rule=RULE)
    deliver_all(req)
    [call] = [c for c in fake_slack.calls if c["method"] == "chat.postMessage"]
    assert call["auth"] == f"Bearer {TOKEN}"
    args = call["args"]
    assert args["channel"] == CHANNEL
    assert args["text"] == f"Approval needed: refund_customer on refund-agent (#{req.pk})"
    shown = texts(args["blocks"])
    assert "*Approval needed:* `refund_customer` on *refund-agent*" in shown
    assert "asked by refund-bot" in shown
    assert '`order` = "A-1001"' in shown and '`amount` = "120.00"' in shown
    assert "`Rule 2: double(params.amount) &gt; 50.0 → approve by 1`" in shown
    assert "refund above the automatic limit" in shown and "`refund_amount 120 &gt; 50: beyond`" in shown
    assert "Confidence 82 %" in shown
    due = int((T0 + dt.timedelta(minutes=10)).timestamp())
    assert f"Answer by <!date^{due}^{{date_short_pretty}} at {{time}}|2026-03-02 10:10 UTC>" in shown
    assert f"<!date^{due}^{{ago}}|" in shown and "then it escalates to level 2" in shown
    assert buttons(args["blocks"]) == {"ringfence_approve": str(req.pk), "ringfence_reject": str(req.pk),
                                       "ringfence_open": f"http://127.0.0.1:8000/approvals/{req.pk}/"}
    message = SlackMessage.objects.get(request=req)
    assert (message.channel, message.channel_id, message.ts) == (CHANNEL, CHANNEL_ID, "1772445600.000001")
    assert Delivery.objects.get(notice__request=req, channel="slack").status == Delivery.Status.SENT


def test_approve_in_slack_decides_through_the_service_and_updates_the_message(routed, make_request, approver,
                                                                              fake_slack, client):
    req = make_request()
    deliver_all(req)
    response = signed(client, press("approve", req))
    assert response.status_code == 200
    req.refresh_from_db()
    assert req.state == ApprovalRequest.State.APPROVED and req.closed_by_label == "alice"
    decision = Decision.objects.get(request=req)
    assert decision.decided_by == approver
    assert SlackDecision.objects.get(decision=decision).slack_user_id == ALICE
    assert audit_actions(req) == ["approval.requested", "approval.decided", "approval.approved", "slack.decided"]
    slack_event = AuditEvent.objects.get(action="slack.decided")
    assert slack_event.actor_label == "alice" and slack_event.data["slack_user_id"] == ALICE
    assert slack_event.data["matched_by"] == "link"

    deliver_all(req)  # the "decided" notice updates the message in place
    [update] = fake_slack.called("chat.update")
    assert (update["channel"], update["ts"]) == (CHANNEL_ID, "1772445600.000001")
    assert "*Approved by alice at 10:00 — in Slack*" in texts(update["blocks"])
    assert buttons(update["blocks"]) == {"ringfence_open": f"http://127.0.0.1:8000/approvals/{req.pk}/"}
    assert len(fake_slack.called("chat.postMessage")) == 1 and not fake_slack.called("chat.postEphemeral")


def test_reject_opens_a_modal_whose_submission_needs_a_justification(routed, make_request, fake_slack, client):
    req = make_request()
    deliver_all(req)
    assert signed(client, press("reject", req)).status_code == 200
    [opened] = fake_slack.called("views.open")
    assert opened["trigger_id"] == "1337.42.abcdef"
    view = opened["view"]
    assert view["type"] == "modal" and view["submit"]["text"] == "Reject"
    assert [b["block_id"] for b in view["blocks"] if b["type"] == "input"] == ["justification"]
    assert ApprovalRequest.objects.get(pk=req.pk).state == ApprovalRequest.State.PENDING  # nothing yet

    refused = signed(client, submit(view, "   "))
    assert refused.status_code == 200
    assert refused.json() == {"response_action": "errors", "errors": {
        "justification": "Say why: rejecting or overriding needs a justification."}}
    assert not Decision.objects.filter(request=req).exists()
    assert audit_actions(req) == ["approval.requested"]

    accepted = signed(client, submit(view, "Duplicate of A-1000, already refunded."))
    assert accepted.status_code == 200 and accepted.content == b""  # Slack closes the modal
    req.refresh_from_db()
    assert req.state == ApprovalRequest.State.REJECTED
    assert Decision.objects.get(request=req).justification == "Duplicate of A-1000, already refunded."
    deliver_all(req)
    shown = texts(fake_slack.called("chat.update")[-1]["blocks"])
    assert "*Rejected by alice at 10:00 — in Slack*" in shown
    assert "alice rejected at 10:00 — in Slack: Duplicate of A-1000, already refunded." in shown


def test_override_needs_the_reason_category_the_page_asks_for(routed, make_request, workflow, fake_slack, client):
    req = make_request(mode="override_window", kind="rollback", action="roll_back", idempotency_key="w")
    deliver_all(req)
    assert set(buttons(fake_slack.called("chat.postMessage")[0]["blocks"])) == {
        "ringfence_approve", "ringfence_override", "ringfence_open"}
    signed(client, press("override", req))
    view = fake_slack.called("views.open")[0]["view"]
    [select] = [b for b in view["blocks"] if b.get("block_id") == "reason"]
    assert [o["value"] for o in select["element"]["options"]] == [v for v, _ in Decision.Reason.choices]
    assert signed(client, submit(view, "Known change, tagged late.", reason="")).json() == {
        "response_action": "errors",
        "errors": {"reason": "Choose why you override: expected behaviour, noise, known change or other."}}
    assert signed(client, submit(view, "Known change, tagged late.", reason="known_change")).status_code == 200
    assert ApprovalRequest.objects.get(pk=req.pk).state == ApprovalRequest.State.OVERRIDDEN
    assert Decision.objects.get(request=req).reason == "known_change"


def test_four_eyes_holds_in_slack(routed, make_request, approver, fake_slack, client):
    """Alice asked for this herself: her own Slack user cannot approve it."""
    req = make_request(requester=approver)
    deliver_all(req)
    assert signed(client, press("approve", req)).status_code == 200
    [told] = fake_slack.called("chat.postEphemeral")
    assert (told["channel"], told["user"]) == (CHANNEL_ID, ALICE)
    assert told["text"] == "You asked for this (or own the service account that did); someone else must decide it."
    assert ApprovalRequest.objects.get(pk=req.pk).state == ApprovalRequest.State.PENDING
    assert not Decision.objects.filter(request=req).exists() and not SlackDecision.objects.exists()
    assert audit_actions(req) == ["approval.requested"]
    # Nor can she reject it: the modal is not even opened.
    signed(client, press("reject", req))
    assert not fake_slack.called("views.open")
    assert len(fake_slack.called("chat.postEphemeral")) == 2


def test_a_bad_signature_is_refused_with_401_and_changes_nothing(routed, make_request, fake_slack, client):
    req = make_request()
    deliver_all(req)
    calls = len(fake_slack.calls)
    assert signed(client, press("approve", req), secret="not-the-signing-secret").status_code == 401
    body = urlencode({"payload": json.dumps(press("approve", req))})
    assert client.post(URL, data=body, content_type="application/x-www-form-urlencoded").status_code == 401
    assert ApprovalRequest.objects.get(pk=req.pk).state == ApprovalRequest.State.PENDING
    assert not Decision.objects.filter(request=req).exists() and audit_actions(req) == ["approval.requested"]
    assert len(fake_slack.calls) == calls  # not even an answer in Slack


def test_a_replayed_request_older_than_five_minutes_is_refused(routed, make_request, frozen, fake_slack, client):
    req = make_request()
    deliver_all(req)
    captured_at = clock.now()
    frozen.shift(dt.timedelta(minutes=5, seconds=1))
    assert signed(client, press("approve", req), at=captured_at).status_code == 401
    assert ApprovalRequest.objects.get(pk=req.pk).state == ApprovalRequest.State.PENDING
    assert audit_actions(req) == ["approval.requested"]
    assert signed(client, press("approve", req)).status_code == 200  # the same press, freshly signed
    assert ApprovalRequest.objects.get(pk=req.pk).state == ApprovalRequest.State.APPROVED


def test_slack_down_the_notice_is_retried_from_the_outbox_and_nothing_else_waits(routed, make_request, fake_slack,
                                                                                 frozen, mailoutbox):
    fake_slack.down = True
    req = make_request()
    notice = Notice.objects.get(request=req)
    with pytest.raises(DeliveryFailed):
        notifications.deliver(notice.pk)
    slack_delivery = Delivery.objects.get(notice=notice, channel="slack")
    assert slack_delivery.status == Delivery.Status.FAILED and "Slack answered 503" in slack_delivery.last_error
    assert [m.to for m in mailoutbox] == [["alice@example.com"]]  # the email went out all the same
    assert not SlackMessage.objects.exists()

    fake_slack.down = False
    frozen.shift(notifications.RETRY_AFTER + dt.timedelta(seconds=1))
    assert notice.pk in notifications.stale_notice_ids()  # the sweep publishes it again
    notifications.deliver(notice.pk)
    slack_delivery.refresh_from_db()
    assert (slack_delivery.status, slack_delivery.attempts) == (Delivery.Status.SENT, 2)
    assert [c["method"] for c in fake_slack.calls] == ["chat.postMessage", "chat.postMessage"]  # refused, then taken
    assert len(fake_slack.messages) == 1 and SlackMessage.objects.get(request=req).ts
    assert len(mailoutbox) == 1  # the email is not sent twice
    assert Notice.objects.get(pk=notice.pk).delivered_at is not None


def test_the_message_follows_the_request_when_decided_on_the_web_escalated_or_held(routed, make_request, workflow,
                                                                                   containment_owner,
                                                                                   senior_approver, fake_slack,
                                                                                   frozen, client):
    req = make_request()
    deliver_all(req)
    frozen.shift(dt.timedelta(minutes=10))
    services.handle_all_due()
    deliver_all(req)
    escalated = texts(fake_slack.called("chat.update")[-1]["blocks"])
    assert "Escalated to level 2." in escalated and "then it expires" in escalated
    services.record_decision(req.pk, actor=senior_approver, verdict="reject", justification="Not without a ticket.")
    deliver_all(req)
    shown = texts(fake_slack.called("chat.update")[-1]["blocks"])
    assert "*Rejected by sam at 10:10 — on the web*" in shown
    assert "sam rejected at 10:10 — on the web: Not without a ticket." in shown
    assert len(fake_slack.called("chat.postMessage")) == 1  # one message, updated in place

    held = make_request(idempotency_key="held")
    deliver_all(held)
    message = fake_slack.messages[SlackMessage.objects.get(request=held).ts]
    assert "ringfence_approve" in buttons(message["blocks"])
    governance_services.pause_workflow(workflow.pk, actor=containment_owner, reason="incident 42")
    signed(client, press("approve", held))  # pressed on a message that does not show the pause yet
    told = fake_slack.called("chat.postEphemeral")[-1]["text"]
    assert told.startswith("On hold: refund-agent was paused by olivia at 10:10: incident 42.")
    assert ApprovalRequest.objects.get(pk=held.pk).state == ApprovalRequest.State.PENDING
    assert not Decision.objects.filter(request=held).exists()
    assert "*On hold:* refund-agent was paused by olivia" in texts(message["blocks"])  # re-rendered in place
    assert set(buttons(message["blocks"])) == {"ringfence_open"}


def test_a_slack_user_known_by_no_link_and_no_verified_email_changes_nothing(routed, make_request, approver,
                                                                             fake_slack, client):
    """Slack confirms Alice's address for this user, but the identity provider never verified it here."""
    fake_slack.emails[STRANGER] = "alice@example.com"
    IdentityLink.objects.create(user=approver, issuer="https://idp.example", subject="alice-1",
                                email="alice@example.com", email_verified=False)
    req = make_request()
    deliver_all(req)
    signed(client, press("approve", req, slack_user=STRANGER))
    assert [args["user"] for args in fake_slack.called("users.info")] == [STRANGER]
    [told] = fake_slack.called("chat.postEphemeral")
    assert told["user"] == STRANGER and told["text"].startswith("Your Slack account is not linked")
    assert ApprovalRequest.objects.get(pk=req.pk).state == ApprovalRequest.State.PENDING
    assert not Decision.objects.filter(request=req).exists()


def test_the_email_the_identity_provider_verified_finds_the_person(routed, make_request, approver, fake_slack,
                                                                   client):
    fake_slack.emails[STRANGER] = "ALICE@example.com"
    IdentityLink.objects.create(user=approver, issuer="https://idp.example", subject="alice-1",
                                email="alice@example.com", email_verified=True)
    req = make_request()
    signed(client, press("approve", req, slack_user=STRANGER))
    assert [args["user"] for args in fake_slack.called("users.info")] == [STRANGER]
    assert Decision.objects.get(request=req).decided_by == approver
    assert AuditEvent.objects.get(action="slack.decided").data["matched_by"] == "email"


def test_only_administrators_link_slack_users_and_each_link_is_audited(admin_user, approver, workflow):
    call_command("slack_link", "add", "alice", "u0alice", "--by", "ada")
    [event] = AuditEvent.objects.filter(action="slack.user_linked")
    assert event.actor_label == "ada" and event.data["user"] == "alice" and event.data["slack_user_id"] == ALICE
    with pytest.raises(CommandError, match="Only an administrator"):
        call_command("slack_link", "add", "alice", "U0OTHER", "--by", "alice")
    with pytest.raises(CommandError, match="U0ALICE already acts as alice"):
        call_command("slack_link", "add", "ada", ALICE, "--by", "ada")
    call_command("slack_link", "remove", ALICE, "--by", "ada")
    assert AuditEvent.objects.filter(action="slack.user_unlinked").count() == 1
    assert not SlackLink.objects.exists()
