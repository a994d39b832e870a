"""Demo data for zero-setup mode: people for every role. Workflows, actions and their rules, policies,
scope, containment owners and the demo agent come from examples/ringfence.yaml (configuration.demo).

Idempotent: everything is looked up before it is created, so seeding twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth.models import Group, User
from django.db import transaction

from governance.permissions import Role

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


@dataclass
class DemoResult:
    created: list[str] = field(default_factory=list)


@transaction.atomic
def seed() -> DemoResult:
    result = DemoResult()
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
    return result
