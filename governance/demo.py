"""Demo data for zero-setup mode: people for every role, three workflows, an agent token.

Idempotent: everything is looked up before it is created, so seeding twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import transaction

from governance import services
from governance.models import ApiToken, ServiceAccount, Workflow
from governance.permissions import ROLE_SCOPE, Role

DEMO_PASSWORD = "ringfence-demo"

# username, full name, role
PEOPLE = [
    ("ada", "Ada Admin", Role.ADMINISTRATOR),
    ("alice", "Alice Approver", Role.APPROVER),
    ("bob", "Bob Approver", Role.APPROVER),
    ("sam", "Sam Senior", Role.SENIOR_APPROVER),
    ("olivia", "Olivia Owner", Role.CONTAINMENT_OWNER),
    ("oscar", "Oscar Owner", Role.CONTAINMENT_OWNER),
    ("rhea", "Rhea Release", Role.RELEASE_MANAGER),
    ("maya", "Maya Manager", Role.MANAGER),
    ("aude", "Aude Auditor", Role.AUDITOR),
]

WORKFLOWS = [
    {
        "slug": "refund-agent", "name": "Refund agent", "environment": "production", "owning_team": "Payments",
        "autonomy_tier": 2, "off_hours_tier": 3, "timezone": "Europe/London",
        "description": "Refunds customers for failed orders; refunds above a limit need a person.",
        "actions": [("refund_customer", "high", 1), ("issue_voucher", "medium", 1)],
    },
    {
        "slug": "account-disable-agent", "name": "Account-disable agent", "environment": "production",
        "owning_team": "Trust & Safety", "autonomy_tier": 3, "off_hours_tier": None, "timezone": "America/New_York",
        "description": "Disables accounts flagged for abuse. Always gated, four eyes for critical cases.",
        "actions": [("disable_account", "critical", 2), ("flag_account", "medium", 1)],
    },
    {
        "slug": "support-reply-prompt", "name": "Support-reply prompt", "environment": "production",
        "owning_team": "Support Automation", "autonomy_tier": 1, "off_hours_tier": 2, "timezone": "UTC",
        "description": "Drafts replies to support tickets; new prompt versions roll out ring by ring.",
        "actions": [("send_reply", "low", 1)],
    },
    {
        "slug": "billing-summary-staging", "name": "Billing summary (staging)", "environment": "staging",
        "owning_team": "Payments", "autonomy_tier": 1, "off_hours_tier": None, "timezone": "UTC",
        "description": "Staging copy of the billing summary workflow.",
        "actions": [],
    },
]

# Who is in scope of which workflow (besides auditors, who read all).
SCOPE = {
    "alice": ["refund-agent", "account-disable-agent"],
    "bob": ["refund-agent", "account-disable-agent", "support-reply-prompt"],
    "sam": ["refund-agent", "account-disable-agent", "support-reply-prompt"],
    "olivia": ["refund-agent", "support-reply-prompt"],
    "oscar": ["account-disable-agent", "support-reply-prompt"],
    "rhea": ["refund-agent", "account-disable-agent", "support-reply-prompt", "billing-summary-staging"],
    "maya": ["refund-agent", "account-disable-agent", "support-reply-prompt"],
}

CONTAINMENT = {
    # workflow: (primary, backup) for every duty
    "refund-agent": ("olivia", "oscar"),
    "account-disable-agent": ("oscar", "olivia"),
    "support-reply-prompt": ("olivia", "oscar"),
}


@dataclass
class DemoResult:
    created: list[str] = field(default_factory=list)
    token_file: Path | None = None


@transaction.atomic
def seed() -> DemoResult:
    result = DemoResult()
    users = {}
    for username, full_name, role in PEOPLE:
        user = User.objects.filter(username=username).first()
        if user is None:
            first, last = full_name.split(" ", 1)
            user = User.objects.create_user(username, f"{username}@example.com", DEMO_PASSWORD,
                                            first_name=first, last_name=last)
            user.is_staff = role == Role.ADMINISTRATOR
            user.save(update_fields=["is_staff"])
            result.created.append(f"user {username}")
        user.groups.add(Group.objects.get(name=role))
        users[username] = user
    admin = users["ada"]

    workflows = {}
    for spec in WORKFLOWS:
        spec = dict(spec)
        actions = spec.pop("actions")
        workflow = Workflow.objects.filter(slug=spec["slug"]).first()
        if workflow is None:
            workflow = services.create_workflow(actor=admin, business_start=time(9), business_end=time(17), **spec)
            for name, risk, quorum in actions:
                services.define_action(workflow.pk, actor=admin, name=name, risk=risk, quorum=quorum)
            result.created.append(f"workflow {workflow.slug}")
        workflows[workflow.slug] = workflow

    for username, slugs in SCOPE.items():
        user = users[username]
        role = next(r for u, _, r in PEOPLE if u == username)
        for slug in slugs:
            if not user.has_perm("governance.view_workflow", workflows[slug]):
                services.grant_scope(workflows[slug].pk, actor=admin, user=user, permissions=list(ROLE_SCOPE[role]))

    for slug, (primary, backup) in CONTAINMENT.items():
        workflow = workflows[slug]
        for duty in ("pause", "narrow", "fallback", "rollback", "escalate", "approve_expansion"):
            for username, position in ((primary, "primary"), (backup, "backup")):
                if not workflow.containment.filter(duty=duty, user=users[username]).exists():
                    services.assign_containment(workflow.pk, actor=admin, user=users[username], duty=duty, position=position)

    account = ServiceAccount.objects.filter(name="demo-agent").first()
    if account is None:
        account = services.create_service_account(
            actor=admin, name="demo-agent", owner=users["rhea"],
            workflows=[workflows["refund-agent"], workflows["account-disable-agent"], workflows["support-reply-prompt"]],
            description="The demo's agents and CI pipeline",
        )
        result.created.append("service account demo-agent")
    token_file = settings.VAR_DIR / "demo-agent-token"
    existing = token_file.read_text().strip() if token_file.exists() else ""
    if not existing or not ApiToken.objects.usable().filter(digest=ApiToken.digest_of(existing)).exists():
        issued = services.issue_token(account.pk, actor=admin, label="demo")
        token_file.write_text(issued.raw + "\n")
        token_file.chmod(0o600)
        result.created.append("demo agent token")
    result.token_file = token_file
    return result
