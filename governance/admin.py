from __future__ import annotations

from django.contrib import admin, messages
from guardian.admin import GuardedModelAdmin

from governance import services
from governance.errors import TransitionRefused
from governance.models import (
    ApiToken,
    AuditCheckpoint,
    AuditEvent,
    ContainmentAssignment,
    GovernedAction,
    ServiceAccount,
    Workflow,
)


class GovernedActionInline(admin.TabularInline):
    model = GovernedAction
    extra = 0
    readonly_fields = ("name", "risk", "quorum", "description")
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Workflow)
class WorkflowAdmin(GuardedModelAdmin):
    """Edits go through the services, so every change is checked and audited."""

    list_display = ("slug", "name", "environment", "autonomy_tier", "off_hours_tier", "paused")
    search_fields = ("slug", "name")
    readonly_fields = ("paused", "paused_reason", "paused_by", "paused_at")
    inlines = [GovernedActionInline]
    actions = ["resume_selected"]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        fields = {f: form.cleaned_data[f] for f in services.WORKFLOW_FIELDS if f in form.cleaned_data}
        if change:
            services.update_workflow(obj.pk, actor=request.user, **fields)
        else:
            created = services.create_workflow(actor=request.user, slug=form.cleaned_data["slug"], **fields)
            obj.pk = created.pk

    @admin.action(description="Resume the selected workflows")
    def resume_selected(self, request, queryset) -> None:
        for workflow in queryset:
            try:
                services.resume_workflow(workflow.pk, actor=request.user, reason="resumed from the admin")
            except TransitionRefused as refusal:
                self.message_user(request, f"{workflow.slug}: {refusal.message}", messages.WARNING)


@admin.register(ContainmentAssignment)
class ContainmentAssignmentAdmin(admin.ModelAdmin):
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


@admin.register(ServiceAccount)
class ServiceAccountAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "active", "created_at")
    filter_horizontal = ("workflows",)
    actions = ["issue_token"]

    @admin.action(description="Issue a new token (shown once)")
    def issue_token(self, request, queryset) -> None:
        for account in queryset:
            issued = services.issue_token(account.pk, actor=request.user, label="issued from the admin")
            self.message_user(request, f"{account.name}: {issued.raw} (copy it now: it is not stored)", messages.WARNING)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("service_account", "prefix", "label", "created_at", "last_used_at", "revoked_at")
    readonly_fields = [f.name for f in ApiToken._meta.fields]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset) -> None:
        for token in queryset:
            try:
                services.revoke_token(token.pk, actor=request.user, reason="revoked from the admin")
            except TransitionRefused as refusal:
                self.message_user(request, f"{token.prefix}: {refusal.message}", messages.WARNING)


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
