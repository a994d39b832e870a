"""The `identity` section of ringfence.yaml: which identity-provider group gives which roles and workflow scope.
Planned, applied (audited through governance.services), exported and planned again with no change; pruned only
when asked; refused with file, line and field when wrong; shown read-only on the administrators' page."""

from __future__ import annotations

import pytest
import yaml

from audit.models import AuditEvent
from configuration import loading
from governance import services
from governance.models import GroupMapping
from governance.permissions import APPROVE, VIEW, Role, perm
from tests import factories
from tests.support.config_files import run, write

pytestmark = pytest.mark.django_db

FILE = """\
version: 1
workflows:
  - slug: voucher-agent
    name: Voucher agent
identity:
  groups:
    - group: payments-approvers
      roles: [approver]
      scope: {voucher-agent: [view, approve], refund-agent: [view]}
    - {group: ringfence-auditors, roles: [auditor]}
"""


def test_mappings_are_planned_applied_audited_and_exported_back_unchanged(tmp_path, admin_user, workflow):
    path = write(tmp_path, FILE)
    code, out, _ = run("plan", path)
    assert code == 2
    assert "+ group_mapping/payments-approvers" in out and "+ group_mapping/ringfence-auditors" in out
    assert not GroupMapping.objects.exists()

    code, out, _ = run("apply", path, "--as", "ada")
    assert code == 0
    mapping = GroupMapping.objects.get(group="payments-approvers")
    assert mapping.roles == [Role.APPROVER]
    assert mapping.scope == {"refund-agent": [VIEW], "voucher-agent": [APPROVE, VIEW]}
    events = AuditEvent.objects.filter(action="identity.mapping_defined").order_by("seq")
    assert [(e.actor_label, e.data["group"]) for e in events] == [
        ("ada", "payments-approvers"), ("ada", "ringfence-auditors")]
    assert "group_mapping/payments-approvers" in AuditEvent.objects.get(action="config.applied").data["changes"]

    code, exported, _ = run("export")
    assert yaml.safe_load(exported)["identity"] == {"groups": [
        {"group": "payments-approvers", "roles": ["approver"],
         "scope": {"refund-agent": ["view"], "voucher-agent": ["approve", "view"]}},
        {"group": "ringfence-auditors", "roles": ["auditor"]}]}
    again = write(tmp_path, exported, "exported.yaml")
    assert run("plan", again)[0] == 0 and run("plan", again, "--prune")[0] == 0
    assert run("plan", path)[0] == 0


def test_a_changed_mapping_is_an_update_and_prune_removes_an_unnamed_one(tmp_path, admin_user, workflow):
    run("apply", write(tmp_path, FILE), "--as", "ada")
    changed = FILE.replace("roles: [approver]", "roles: [senior_approver]").replace(
        "    - {group: ringfence-auditors, roles: [auditor]}\n", "")
    path = write(tmp_path, changed, "changed.yaml")
    code, out, _ = run("plan", path)
    assert code == 2 and "~ group_mapping/payments-approvers  (roles: ['approver'] → ['senior_approver'])" in out
    assert "- group_mapping" not in out  # left alone without --prune
    code, out, _ = run("plan", path, "--prune")
    assert "- group_mapping/ringfence-auditors" in out
    run("apply", path, "--prune", "--as", "ada")
    assert list(GroupMapping.objects.values_list("group", "roles")) == [("payments-approvers", ["senior_approver"])]
    assert AuditEvent.objects.get(action="identity.mapping_removed").data["group"] == "ringfence-auditors"

    without = write(tmp_path, "version: 1\nworkflows: []\n", "none.yaml")
    assert run("plan", without, "--prune")[0] == 0  # no identity section: the live mappings are not the file's


def test_what_a_mapping_gave_someone_is_neither_exported_as_scope_nor_pruned(tmp_path, admin_user, workflow):
    run("apply", write(tmp_path, FILE.replace("voucher-agent: [view, approve], ", "")), "--as", "ada")
    user = services.sign_in_with_identity(issuer="https://login.example.com", groups_claim="groups",
                                          claims={"sub": "00u-alice", "preferred_username": "alice",
                                                  "groups": ["payments-approvers"]})
    assert user.has_perm(perm(VIEW), workflow)
    code, exported, _ = run("export")
    assert "alice" not in exported
    path = write(tmp_path, exported, "exported.yaml")
    assert run("plan", path, "--prune")[0] == 0
    run("apply", path, "--prune", "--as", "ada")
    assert type(user).objects.get(pk=user.pk).has_perm(perm(VIEW), workflow)


@pytest.mark.parametrize(("broken", "line", "field", "words"), [
    ("scope: {voucher-agent: [view, approve], refund-agent: [view]}",
     "scope: {voucher-agent: [view], billing-agent: [view]}", "identity.groups[0].scope.billing-agent", "no workflow"),
    ("{group: ringfence-auditors, roles: [auditor]}", "{group: payments-approvers, roles: [auditor]}",
     "identity.groups[1].group", "mapped twice"),
    ("{group: ringfence-auditors, roles: [auditor]}", "{group: ringfence-auditors}", "identity.groups[1]",
     "gives roles, scope or both"),
    ("roles: [auditor]", "roles: [wizard]", "identity.groups[1].roles[0]", "must be one of"),
    ("roles: [auditor]", "roles: [auditor], team: x", "identity.groups[1].team", "unknown key"),
])
def test_a_wrong_mapping_names_file_line_and_field_and_changes_nothing(tmp_path, admin_user, workflow, broken, line,
                                                                        field, words):
    path = write(tmp_path, FILE.replace(broken, line))
    code, _, err = run("plan", path)
    assert code == 1
    expected_line = next(n for n, text in enumerate(FILE.replace(broken, line).splitlines(), 1) if line in text)
    problems = [p for p in err.splitlines() if field in p]
    assert problems and words in problems[0] and f"ringfence.yaml:{expected_line}:" in problems[0], err
    assert run("apply", path, "--as", "ada")[0] == 1
    assert not GroupMapping.objects.exists()


def test_the_schema_describes_the_identity_section():
    document, _ = loading.load_text(FILE)
    assert [m.group for m in document.identity.groups] == ["payments-approvers", "ringfence-auditors"]
    code, out, _ = run("schema")
    assert code == 0 and "GroupMapping" in out


def test_administrators_see_the_mappings_and_who_signed_in_read_only(tmp_path, client, admin_user, workflow):
    run("apply", write(tmp_path, FILE), "--as", "ada")
    services.sign_in_with_identity(issuer="https://login.example.com", groups_claim="groups",
                                   claims={"sub": "00u-alice", "preferred_username": "alice", "email": "a@example.com",
                                           "email_verified": True, "groups": ["payments-approvers"]})
    client.force_login(admin_user)
    page = client.get("/admin/")
    assert 'href="/admin/identity/"' in page.text
    page = client.get("/admin/identity/")
    assert page.status_code == 200
    assert "payments-approvers" in page.text and "voucher-agent: approve, view" in page.text
    assert "alice" in page.text and "a@example.com (verified)" in page.text and "view on refund-agent" in page.text
    assert "<form" not in page.text.split('id="content-main"')[1]  # read-only: the file changes mappings

    staff = factories.make_user("rhea", role=Role.RELEASE_MANAGER, is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/identity/").status_code == 403
    client.logout()
    assert client.get("/admin/identity/").status_code == 302
