"""Small keyword-override factories. They call the services, so test data is audited like real data."""

from __future__ import annotations

import itertools
from datetime import time

from django.contrib.auth.models import Group, User

from governance import services
from governance.models import ServiceAccount, Workflow
from governance.permissions import ROLE_SCOPE, Role

_counter = itertools.count(1)


def make_user(username: str | None = None, *, role: Role | None = None, **fields) -> User:
    username = username or f"user{next(_counter)}"
    user = User.objects.create_user(username, f"{username}@example.com", "pw-for-tests-1234", **fields)
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


def make_admin(username: str = "admin") -> User:
    return make_user(username, role=Role.ADMINISTRATOR, is_staff=True)


def make_workflow(slug: str | None = None, *, actor: User | None = None, **fields) -> Workflow:
    actor = (actor or User.objects.filter(groups__name=Role.ADMINISTRATOR).first()
             or make_admin(f"admin{next(_counter)}"))
    slug = slug or f"wf-{next(_counter)}"
    defaults = {"name": slug.replace("-", " ").title(), "business_start": time(9), "business_end": time(17)}
    return services.create_workflow(actor=actor, slug=slug, **{**defaults, **fields})


def scope(user: User, workflow: Workflow, role: Role | None = None) -> None:
    admin = User.objects.filter(groups__name=Role.ADMINISTRATOR).first() or make_admin(f"admin{next(_counter)}")
    role = role or next(Role(g) for g in user.groups.values_list("name", flat=True))
    services.grant_scope(workflow.pk, actor=admin, user=user, permissions=list(ROLE_SCOPE[role]))


def make_service_account(name: str | None = None, *, owner: User, workflows: list[Workflow]) -> ServiceAccount:
    admin = User.objects.filter(groups__name=Role.ADMINISTRATOR).first() or make_admin(f"admin{next(_counter)}")
    return services.create_service_account(actor=admin, name=name or f"agent-{next(_counter)}", owner=owner,
                                           workflows=workflows)
