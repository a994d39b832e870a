"""Admin screens: read-only views of requests, decisions, policies and notices. The two actions
go through the services, so four-eyes, scope and the audit trail apply here too."""

from __future__ import annotations

from django.contrib import admin, messages

from approvals import services
from approvals.models import ApprovalRequest, Decision, Delivery, EscalationLevel, EscalationPolicy, Notice
from core.errors import TransitionRefused


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class DecisionInline(ReadOnlyInline):
    model = Decision
    fields = ("decided_by", "verdict", "reason", "justification", "level", "decided_at")


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(ReadOnlyAdmin):
    list_display = ("pk", "workflow", "kind", "action", "mode", "state", "level", "due_at", "requester_label")
    list_filter = ("state", "kind", "mode", "workflow")
    search_fields = ("action", "requester_label", "idempotency_key")
    inlines = [DecisionInline]
    actions = ["approve_selected", "cancel_selected"]

    def _each(self, request, queryset, change, done: str) -> None:
        count = 0
        for approval in queryset:
            try:
                change(approval)
                count += 1
            except TransitionRefused as refusal:
                self.message_user(request, f"#{approval.pk}: {refusal.message}", messages.WARNING)
        if count:
            self.message_user(request, f"{count} request(s) {done}.", messages.SUCCESS)

    @admin.action(description="Approve the selected requests (as yourself)")
    def approve_selected(self, request, queryset) -> None:
        self._each(request, queryset, lambda a: services.record_decision(a.pk, actor=request.user, verdict="approve"),
                   "approved")

    @admin.action(description="Cancel the selected requests")
    def cancel_selected(self, request, queryset) -> None:
        self._each(request, queryset, lambda a: services.cancel_request(a.pk, actor=request.user,
                                                                        reason="cancelled from the admin"), "cancelled")

    def has_change_permission(self, request, obj=None) -> bool:
        # The changelist actions need it; the form itself stays read-only (no editable fields).
        return obj is None and request.user.has_perm("approvals.change_approvalrequest")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]


class EscalationLevelInline(ReadOnlyInline):
    model = EscalationLevel
    fields = ("position", "timeout_seconds", "groups", "people")


@admin.register(EscalationPolicy)
class EscalationPolicyAdmin(ReadOnlyAdmin):
    """Policies change through approvals.services.define_policy, which audits the change."""

    list_display = ("__str__", "workflow", "mode", "hours", "terminal_action", "updated_at")
    list_filter = ("mode", "hours")
    inlines = [EscalationLevelInline]


class DeliveryInline(ReadOnlyInline):
    model = Delivery
    fields = ("channel", "recipient", "status", "attempts", "sent_at", "last_error")


@admin.register(Notice)
class NoticeAdmin(ReadOnlyAdmin):
    list_display = ("pk", "request", "event", "level", "created_at", "delivered_at")
    list_filter = ("event",)
    inlines = [DeliveryInline]
