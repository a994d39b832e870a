"""Names of the roles and object permissions; no business rules here."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    APPROVER = "approver"
    SENIOR_APPROVER = "senior_approver"
    CONTAINMENT_OWNER = "containment_owner"
    RELEASE_MANAGER = "release_manager"
    MANAGER = "manager"
    AUDITOR = "auditor"
    ADMINISTRATOR = "administrator"
    AGENT = "agent"


# Object permissions on governance.Workflow (codenames).
VIEW = "view_workflow"
APPROVE = "approve_workflow"
CONTAIN = "contain_workflow"
MANAGE_ROLLOUTS = "manage_rollouts"
SCOPED_PERMISSIONS = (VIEW, APPROVE, CONTAIN, MANAGE_ROLLOUTS)

# What being in scope of a workflow means for each role. Auditors read every workflow and
# administrators set every workflow up, both without object permissions (governance.selectors).
ROLE_SCOPE = {
    Role.APPROVER: (VIEW, APPROVE),
    Role.SENIOR_APPROVER: (VIEW, APPROVE),
    Role.CONTAINMENT_OWNER: (VIEW, CONTAIN),
    Role.RELEASE_MANAGER: (VIEW, MANAGE_ROLLOUTS),
    Role.MANAGER: (VIEW,),
    Role.AUDITOR: (VIEW,),
    Role.ADMINISTRATOR: (VIEW,),
    Role.AGENT: (VIEW,),
}


def perm(codename: str) -> str:
    return f"governance.{codename}"
