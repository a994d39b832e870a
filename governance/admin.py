"""Admin screens. Every change of roles, scope, containment duties, service accounts, tokens and
users' flags goes through the audited services; what no service changes is shown read-only."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.http import HttpResponseRedirect
from guardian.admin import AdminGroupObjectPermissionsForm, AdminUserObjectPermissionsForm, GuardedModelAdmin

from audit.models import AuditCheckpoint, AuditEvent
from core.errors import TransitionRefused
from governance import services
from governance.forms import WorkflowAdminForm
from governance.models import (
    ApiToken,
    ContainmentAssignment,
    GovernedAction,
    ServiceAccount,
    Workflow,
    WorkflowUserObjectPermission,
)
from governance.permissions import SCOPED_PERMISSIONS, Role

User = get_user_model()

ONLY_SUPERUSERS = "Only a superuser grants or removes superuser status."
GROUP_SCOPE_READ_ONLY = ("Role groups are given no workflow scope here. Grant scope to each person: "
                         "Object permissions › Manage user (audited as scope.granted / scope.revoked).")


class ThroughServices:
    """A service's refusal is shown as a message and the page's transaction rolls back: nothing of
    the submitted form is kept."""

    def _refused(self, request, refusal: TransitionRefused) -> HttpResponseRedirect:
        self.message_user(request, refusal.message, messages.ERROR)
        return HttpResponseRedirect(request.get_full_path())

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except TransitionRefused as refusal:
            return self._refused(request, refusal)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except TransitionRefused as refusal:
            return self._refused(request, refusal)

    def changelist_view(self, request, extra_context=None):
        try:
            return super().changelist_view(request, extra_context)
        except TransitionRefused as refusal:
            return self._refused(request, refusal)


# --- people: flags, roles; global permissions read-only -----------------------------------------

class UserFlagsForm(auth_forms.UserChangeForm):
    """The user change form. Only superusers may tick or untick superuser status; the roles to
    choose from are the role groups."""

    actor = None  # the signed-in administrator, bound by UserFlagsAdmin.get_form

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        superuser = self.fields.get("is_superuser")
        if superuser is not None and not getattr(self.actor, "is_superuser", False):
            superuser.disabled = True
            superuser.help_text = ONLY_SUPERUSERS
        if "groups" in self.fields:
            self.fields["groups"].queryset = Group.objects.filter(name__in=[str(r) for r in Role]).order_by("name")

    def clean(self):
        cleaned = super().clean()
        superuser, key = self.fields.get("is_superuser"), self.add_prefix("is_superuser")
        # A disabled checkbox is not submitted by a browser: a value for it is an attempt to change it.
        if superuser is not None and superuser.disabled and key in self.data:
            asked = superuser.widget.value_from_datadict(self.data, self.files, key)
            if bool(asked) != bool(self.get_initial_for_field(superuser, "is_superuser")):
                self.add_error(None, ONLY_SUPERUSERS)
        return cleaned


admin.site.unregister(User)


@admin.register(User)
class UserFlagsAdmin(ThroughServices, UserAdmin):
    """Active, staff and superuser flags go through services.set_user_flags, roles through
    services.set_user_groups. Global Django permissions are read-only; accounts are deactivated,
    not deleted; a superuser's account is read-only to everyone else."""

    form = UserFlagsForm
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        ("Flags and roles", {
            "fields": ("is_active", "is_staff", "is_superuser", "groups"),
            "description": "Each change is checked and audited (user.flags_changed, user.roles_changed). "
                           "Deactivate an account instead of deleting it.",
        }),
        ("Global permissions (read-only)", {
            "fields": ("user_permissions",),
            "description": "Global Django permissions are not granted here. Workflow scope is given per "
                           "person on a workflow's Object permissions page; roles are the groups above.",
        }),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    readonly_fields = ("user_permissions", "last_login", "date_joined")
    filter_horizontal = ("groups",)

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if obj is None:
            return form
        return type(form.__name__, (form,), {"actor": request.user})

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        if not change:  # a new account: username and password only, with Django's default flags
            super().save_model(request, obj, form, change)
            return
        plain = [f for f in form.changed_data if f in ("username", "first_name", "last_name", "email")]
        if plain:
            obj.save(update_fields=plain)
        flags = {f: form.cleaned_data[f] for f in services.USER_FLAGS if f in form.changed_data}
        if flags:
            updated = services.set_user_flags(obj.pk, actor=request.user, **flags)
            for flag in services.USER_FLAGS:
                setattr(obj, flag, getattr(updated, flag))

    def save_related(self, request, form, formsets, change) -> None:
        # Not form.save_m2m(): groups are roles and change through the service; user_permissions is read-only.
        if "groups" in form.changed_data:
            services.set_user_groups(form.instance.pk, actor=request.user,
                                     groups=[group.name for group in form.cleaned_data["groups"]])
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)


admin.site.unregister(Group)


@admin.register(Group)
class RoleAdmin(GroupAdmin):
    """The role groups are fixed (migration 0003) and carry no workflow scope: read-only here.
    Members are chosen on each user's page."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# --- workflows: governed actions, object permissions (scope) ------------------------------------

class GovernedActionForm(forms.ModelForm):
    class Meta:
        model = GovernedAction
        fields = ("name", "risk", "quorum", "description")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:  # an action is keyed by its name: a new name is a new action
            self.fields["name"].disabled = True


class GovernedActionInline(admin.TabularInline):
    """Saved through services.define_action (workflow.action_defined). Actions are not deleted here."""

    model = GovernedAction
    form = GovernedActionForm
    extra = 0
    can_delete = False


def _scoped_permission_choices() -> list[tuple[str, str]]:
    names = dict(Permission.objects.filter(content_type__app_label="governance", content_type__model="workflow",
                                           codename__in=SCOPED_PERMISSIONS).values_list("codename", "name"))
    return [(codename, names.get(codename, codename)) for codename in SCOPED_PERMISSIONS]


class ScopeForm(AdminUserObjectPermissionsForm):
    """A person's object permissions on one workflow, saved through services.grant_scope /
    services.revoke_scope (scope.granted / scope.revoked), both or neither."""

    actor = None  # bound by WorkflowAdmin.get_obj_perms_manage_user_form

    def get_obj_perms_field_choices(self) -> list[tuple[str, str]]:
        return _scoped_permission_choices()

    def get_obj_perms_field_initial(self) -> list[str]:
        # Read from the table: guardian's get_user_perms shows an inactive user as holding nothing.
        return list(WorkflowUserObjectPermission.objects.filter(user=self.user, content_object=self.obj)
                    .values_list("permission__codename", flat=True))

    def save_obj_perms(self) -> None:
        chosen = set(self.cleaned_data[self.get_obj_perms_field_name()])
        held = set(self.get_obj_perms_field_initial()) & set(SCOPED_PERMISSIONS)
        with transaction.atomic():
            if chosen - held:
                services.grant_scope(self.obj.pk, actor=self.actor, user=self.user, permissions=sorted(chosen - held))
            if held - chosen:
                services.revoke_scope(self.obj.pk, actor=self.actor, user=self.user, permissions=sorted(held - chosen))


class GroupScopeForm(AdminGroupObjectPermissionsForm):
    """Shown, never saved: see GROUP_SCOPE_READ_ONLY."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.disabled = True

    def save_obj_perms(self) -> None:
        raise TransitionRefused("forbidden", GROUP_SCOPE_READ_ONLY)


@admin.register(Workflow)
class WorkflowAdmin(ThroughServices, GuardedModelAdmin):
    """Edits go through the services, so every change is checked and audited. Business days are
    weekday checkboxes (WorkflowAdminForm)."""

    form = WorkflowAdminForm
    list_display = ("slug", "name", "environment", "autonomy_tier", "off_hours_tier", "paused")
    search_fields = ("slug", "name")
    readonly_fields = ("paused", "paused_reason", "paused_by", "paused_at")
    inlines = [GovernedActionInline]
    actions = ["resume_selected"]
    obj_perms_manage_group_template = "admin/governance/workflow/obj_perms_manage_group.html"

    def get_readonly_fields(self, request, obj=None):
        # The slug names the workflow in URLs, scope and the audit trail: fixed once created.
        return (("slug",) if obj is not None else ()) + self.readonly_fields

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        fields = {f: form.cleaned_data[f] for f in services.WORKFLOW_FIELDS if f in form.cleaned_data}
        if change:
            services.update_workflow(obj.pk, actor=request.user, **fields)
        else:
            created = services.create_workflow(actor=request.user, slug=form.cleaned_data["slug"], **fields)
            obj.pk = created.pk

    def save_formset(self, request, form, formset, change) -> None:
        if formset.model is not GovernedAction:
            super().save_formset(request, form, formset, change)
            return
        # The lists the admin's change message reads, as formset.save() would have filled them.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for action_form in formset.forms:
            if not action_form.has_changed():
                continue
            data, existing = action_form.cleaned_data, action_form.instance.pk is not None
            action = services.define_action(form.instance.pk, actor=request.user, name=data["name"],
                                            risk=data["risk"], quorum=data["quorum"],
                                            description=data.get("description") or "")
            if existing:
                formset.changed_objects.append((action, action_form.changed_data))
            else:
                formset.new_objects.append(action)

    @admin.action(description="Resume the selected workflows")
    def resume_selected(self, request, queryset) -> None:
        for workflow in queryset:
            try:
                services.resume_workflow(workflow.pk, actor=request.user, reason="resumed from the admin")
            except TransitionRefused as refusal:
                self.message_user(request, f"{workflow.slug}: {refusal.message}", messages.WARNING)

    def get_obj_perms_base_context(self, request, obj):
        return {**super().get_obj_perms_base_context(request, obj), "read_only_note": GROUP_SCOPE_READ_ONLY}

    def get_obj_perms_manage_user_form(self, request):
        return type("ScopeForm", (ScopeForm,), {"actor": request.user})

    def get_obj_perms_manage_group_form(self, request):
        return GroupScopeForm

    def obj_perms_manage_user_view(self, request, object_pk, user_id):
        try:
            return super().obj_perms_manage_user_view(request, object_pk, user_id)
        except TransitionRefused as refusal:
            return self._refused(request, refusal)

    def obj_perms_manage_group_view(self, request, object_pk, group_id):
        if request.method == "POST":
            self.message_user(request, GROUP_SCOPE_READ_ONLY, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
        return super().obj_perms_manage_group_view(request, object_pk, group_id)


@admin.register(ContainmentAssignment)
class ContainmentAssignmentAdmin(ThroughServices, admin.ModelAdmin):
    """Added through services.assign_containment, removed through services.remove_containment;
    an assignment is not edited: remove it and assign again."""

    list_display = ("workflow", "duty", "position", "user")
    list_filter = ("duty", "position", "workflow")

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        created = services.assign_containment(
            obj.workflow_id, actor=request.user, user=obj.user, duty=obj.duty, position=obj.position
        )
        obj.pk = created.pk

    def delete_model(self, request, obj) -> None:
        services.remove_containment(obj.pk, actor=request.user)

    def delete_queryset(self, request, queryset) -> None:
        for assignment in queryset:
            services.remove_containment(assignment.pk, actor=request.user)


# --- service accounts and their tokens ----------------------------------------------------------

@admin.register(ServiceAccount)
class ServiceAccountAdmin(ThroughServices, admin.ModelAdmin):
    """Created through services.create_service_account; owner, workflows, active and description
    change through services.update_service_account. The name is fixed once created (the audit
    trail names the account by it); accounts are deactivated, not deleted."""

    list_display = ("name", "owner", "active", "created_at")
    fields = ("name", "description", "owner", "workflows", "active", "created_at")
    filter_horizontal = ("workflows",)
    actions = ["issue_token"]

    def get_readonly_fields(self, request, obj=None):
        return ("name", "created_at") if obj is not None else ("active", "created_at")

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        data = form.cleaned_data
        if not change:
            created = services.create_service_account(
                actor=request.user, name=data["name"], owner=data["owner"], workflows=list(data["workflows"]),
                description=data.get("description") or "",
            )
            obj.pk = created.pk
            return
        changes = {f: data[f] for f in ("owner", "workflows", "active", "description") if f in form.changed_data}
        if changes:
            services.update_service_account(obj.pk, actor=request.user, **changes)

    def save_related(self, request, form, formsets, change) -> None:
        # Not form.save_m2m(): the workflows were set by the service in save_model.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    @admin.action(description="Issue a new token (shown once)")
    def issue_token(self, request, queryset) -> None:
        for account in queryset:
            try:
                issued = services.issue_token(account.pk, actor=request.user, label="issued from the admin")
            except TransitionRefused as refusal:
                self.message_user(request, f"{account.name}: {refusal.message}", messages.WARNING)
                continue
            self.message_user(request, f"{account.name}: {issued.raw} (copy it now: it is not stored)",
                              messages.WARNING)


@admin.register(ApiToken)
class ApiTokenAdmin(ThroughServices, admin.ModelAdmin):
    """Read-only: tokens are issued from the service accounts' list (action "Issue a new token")
    and revoked with this list's action, both through the services."""

    list_display = ("service_account", "prefix", "label", "created_at", "last_used_at", "revoked_at")
    readonly_fields = [f.name for f in ApiToken._meta.fields]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # The list's revoke action needs it; a token's own page stays read-only.
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset) -> None:
        for token in queryset:
            try:
                services.revoke_token(token.pk, actor=request.user, reason="revoked from the admin")
            except TransitionRefused as refusal:
                self.message_user(request, f"{token.prefix}: {refusal.message}", messages.WARNING)


# --- the audit trail ----------------------------------------------------------------------------

class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("seq", "occurred_at", "actor_label", "action", "workflow_slug", "subject_type", "subject_id")
    list_filter = ("action",)
    search_fields = ("reason", "actor_label", "workflow_slug")


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "head_seq", "head_hash", "reason")
