"""Plan and apply: compare a Document with the live configuration, object by object, and carry out
the difference through the same audited services as the pages, in one transaction or not at all.

Objects and their keys (what `config plan` prints):

    metric/<slug>                       label, unit, direction
    metric_provider/<slug>              where a metric is pulled from (configuration.metric_providers)
    service_account/<name>              owner, workflows, description, active
    workflow/<slug>                     name, description, environment, owning_team, tier, off_hours_tier,
                                        timezone, days, start, end
    action/<workflow>/<name>            description, risk, quorum
    rules/<workflow>/<name>             the live rule list (shadow_rules/... the shadow list)
    policy/<workflow>/<mode>/<hours>    terminal_action, levels
    scope/<workflow>/<username>         permissions
    containment/<workflow>/<duty>       primary, backup
    plan/<workflow>/<release_version>   a draft or ready rollout plan: its fields, rings, criteria,
                                        triggers, and `ready`
    routes/<workflow>                   the notification routes (`notify:`), as one list
    group_mapping/<group>               roles, scope: what an identity-provider group gives (configuration.identity)

An object in the file and not live is created; in both and different, updated with the changed
fields. An object live and not in the file is left alone, unless `prune` is asked: then actions,
scope grants and containment duties of the file's workflows that the file does not name are
removed, and so are the notification routes of a workflow without `notify:`. Workflows, service
accounts, metrics and policies are never deleted by a file (they carry history): deactivate an
account with `active: false`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, Group, User
from django.db import transaction
from guardian.shortcuts import get_users_with_perms

from approvals import routing as notification_routing
from approvals import rules as cel_rules
from approvals import services as approval_services
from approvals.models import ActionRule, EscalationPolicy
from audit import log as audit
from configuration import identity as identity_section
from configuration import metric_providers as provider_section
from configuration.document import Document, Rule
from configuration.document import Plan as DocPlan
from configuration.document import Route as DocRoute
from configuration.document import Workflow as DocWorkflow
from configuration.loading import ConfigError, Problem, Source
from core import outbound
from core.errors import TransitionRefused
from governance import services as governance_services
from governance.models import ContainmentAssignment, GovernedAction, ServiceAccount, Workflow, validate_timezone
from rollouts import metrics as rollout_metrics
from rollouts import plans as rollout_plans
from rollouts.models import Metric, RolloutPlan

SHORT = {"view_workflow": "view", "approve_workflow": "approve", "contain_workflow": "contain",
         "manage_rollouts": "manage_rollouts"}
CODENAME = {short: code for code, short in SHORT.items()}
PRUNABLE = ("action", "scope", "containment", "routes")


@dataclass
class Change:
    op: str  # create | update | delete
    kind: str
    key: str
    fields: dict[str, Any] = field(default_factory=dict)  # create: the values; update: {field: (old, new)}
    where: tuple = ()  # the document path that declared it, for errors
    wanted: dict[str, Any] = field(default_factory=dict)  # the whole object as it should be (create, update)

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.key}"

    def describe(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-"}[self.op]
        if self.op == "update":
            shown = ", ".join(f"{name}: {_short(old)} → {_short(new)}" for name, (old, new) in self.fields.items())
            return f"{sign} {self.label}  ({shown})"
        if self.op == "create":
            return f"{sign} {self.label}"
        return f"{sign} {self.label}"

    def as_dict(self) -> dict:
        fields = ({k: {"from": v[0], "to": v[1]} for k, v in self.fields.items()} if self.op == "update"
                  else self.fields)
        return {"op": self.op, "object": self.label, "fields": fields}


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "…"


@dataclass
class Plan:
    changes: list[Change]
    digest: str = ""

    @property
    def empty(self) -> bool:
        return not self.changes

    def summary(self) -> dict[str, int]:
        counts = {"create": 0, "update": 0, "delete": 0}
        for change in self.changes:
            counts[change.op] += 1
        return counts

    def text(self) -> str:
        if self.empty:
            return "No changes: the live configuration matches the file."
        counts = self.summary()
        lines = [c.describe() for c in self.changes]
        lines.append(f"Plan: {counts['create']} to create, {counts['update']} to update, {counts['delete']} to delete.")
        return "\n".join(lines)


# -- the canonical form both sides are compared in -------------------------------------------------

def _rule(rule: Rule) -> dict:
    approve = rule.then == "approve"
    return {"when": rule.when.strip(), "then": rule.then, "reason": rule.reason.strip(),
            "quorum": (rule.quorum or 1) if approve else None,
            "approver_roles": sorted(set(rule.approver_roles)) if approve else []}


PLAN_FIELDS = ("name", "stable_version", "fallback_mode", "executor", "webhook_url", "notes")
TRIGGER_PLAIN = ("metric", "operator", "severity", "min_samples", "breach_statistic", "breach_share", "flap_windows",
                 "flap_breaches", "on_no_data", "reask_worse_percent", "on_silence")


def _plan(plan: DocPlan) -> dict:
    return {**{name: getattr(plan, name) for name in PLAN_FIELDS}, "ready": plan.ready,
            "rings": [ring.model_dump() for ring in plan.rings],
            "criteria": [criterion.model_dump() for criterion in plan.criteria],
            "triggers": [trigger.model_dump() for trigger in plan.triggers]}


def _seconds(value: timedelta | None) -> int | None:
    return None if value is None else int(value.total_seconds())


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _live_plan(plan: RolloutPlan) -> dict:
    return {
        **{name: getattr(plan, name) for name in PLAN_FIELDS}, "ready": plan.state == RolloutPlan.State.READY,
        "rings": [{"segment_kind": r.segment_kind, "segment_value": r.segment_value,
                   "exposure_percent": r.exposure_percent, "min_soak_seconds": _seconds(r.min_soak),
                   "approval_point": r.approval_point} for r in plan.rings.order_by("order")],
        "criteria": [{"metric": c.metric.slug, "operator": c.operator, "threshold": _number(c.threshold),
                      "window_seconds": _seconds(c.window), "min_samples": c.min_samples}
                     for c in plan.criteria.select_related("metric").order_by("pk")],
        "triggers": [{**{name: getattr(t, name) for name in TRIGGER_PLAIN}, "metric": t.metric.slug,
                      "threshold": _number(t.threshold), "off_hours_threshold": _number(t.off_hours_threshold),
                      "sustained_for_seconds": _seconds(t.sustained_for),
                      "allowed_lateness_seconds": _seconds(t.allowed_lateness),
                      "no_data_after_seconds": _seconds(t.no_data_after)}
                     for t in plan.triggers.select_related("metric").order_by("pk")],
    }


def _live_rule(rule: ActionRule) -> dict:
    return {"when": rule.condition, "then": rule.outcome, "reason": rule.reason, "quorum": rule.quorum,
            "approver_roles": sorted(rule.approver_roles)}


def desired(doc: Document) -> dict[tuple[str, str], tuple[dict, tuple]]:
    """Every object the document declares: (kind, key) → (canonical fields, document path)."""
    out: dict[tuple[str, str], tuple[dict, tuple]] = {}
    for i, metric in enumerate(doc.metrics):
        out[("metric", metric.slug)] = ({"label": metric.label, "unit": metric.unit, "direction": metric.direction},
                                        ("metrics", i))
    for i, account in enumerate(doc.service_accounts):
        out[("service_account", account.name)] = ({
            "owner": account.owner, "workflows": sorted(set(account.workflows)), "description": account.description,
            "active": account.active, "permissions": sorted(set(account.permissions))}, ("service_accounts", i))
    for i, wf in enumerate(doc.workflows):
        at = ("workflows", i)
        hours = wf.business_hours
        out[("workflow", wf.slug)] = ({
            "name": wf.name, "description": wf.description, "environment": wf.environment,
            "owning_team": wf.owning_team, "tier": wf.tier, "off_hours_tier": wf.off_hours_tier,
            "timezone": hours.timezone, "days": sorted(set(hours.days)), "start": hours.start.strftime("%H:%M:%S"),
            "end": hours.end.strftime("%H:%M:%S"), "holidays": sorted({d.isoformat() for d in hours.holidays})}, at)
        for j, action in enumerate(wf.actions):
            where = (*at, "actions", j)
            out[("action", f"{wf.slug}/{action.name}")] = ({
                "description": action.description, "risk": action.risk, "quorum": action.quorum}, where)
            out[("rules", f"{wf.slug}/{action.name}")] = ({"rules": [_rule(r) for r in action.rules]},
                                                          (*where, "rules"))
            out[("shadow_rules", f"{wf.slug}/{action.name}")] = (
                {"rules": [_rule(r) for r in action.shadow_rules]}, (*where, "shadow_rules"))
        for j, policy in enumerate(wf.escalation_policies):
            terminal = policy.terminal_action or ("proceed" if policy.mode == "override_window" else "reject")
            out[("policy", f"{wf.slug}/{policy.mode}/{policy.hours}")] = ({
                "terminal_action": terminal,
                "levels": [{"roles": sorted(set(lv.roles)), "people": sorted(set(lv.people)),
                            "timeout_seconds": lv.timeout_seconds, "replaces": lv.replaces} for lv in policy.levels]},
                (*at, "escalation_policies", j))
        owners_of_duties = set()
        for duty, owners in wf.containment.items():
            out[("containment", f"{wf.slug}/{duty}")] = ({"primary": owners.primary,
                                                          "backup": sorted(set(owners.backup))},
                                                         (*at, "containment", duty))
            owners_of_duties.update(filter(None, [owners.primary, *owners.backup]))
        for user, perms in wf.scope.items():
            # Owning a duty gives view and contain (assign_containment grants them): never taken away here.
            implied = {"view", "contain"} if user in owners_of_duties else set()
            out[("scope", f"{wf.slug}/{user}")] = ({"permissions": sorted(set(perms) | implied)},
                                                   (*at, "scope", user))
        for user in owners_of_duties - set(wf.scope):
            out[("implied_scope", f"{wf.slug}/{user}")] = ({"permissions": ["contain", "view"]}, ())
        for j, plan in enumerate(wf.rollout_plans):
            out[("plan", f"{wf.slug}/{plan.release_version}")] = (_plan(plan), (*at, "rollout_plans", j))
        if wf.notify is not None:
            out[("routes", wf.slug)] = ({"routes": [_route(r) for r in wf.notify]}, (*at, "notify"))
    out.update(identity_section.desired(doc))
    out.update(provider_section.desired(doc))
    return out


def live(slugs: set[str] | None = None) -> dict[tuple[str, str], dict]:
    """The live configuration in the same canonical form (of the given workflows, or all)."""
    out: dict[tuple[str, str], dict] = {}
    for metric in Metric.objects.filter(builtin=False):
        out[("metric", metric.slug)] = {"label": metric.label, "unit": metric.unit, "direction": metric.direction}
    for account in ServiceAccount.objects.select_related("owner").prefetch_related("workflows"):
        out[("service_account", account.name)] = {
            "owner": account.owner.get_username(), "workflows": sorted(w.slug for w in account.workflows.all()),
            "description": account.description, "active": account.active,
            "permissions": sorted(account.permissions or [])}
    workflows = Workflow.objects.all() if slugs is None else Workflow.objects.filter(slug__in=slugs)
    for wf in workflows:
        out[("workflow", wf.slug)] = {
            "name": wf.name, "description": wf.description, "environment": wf.environment,
            "owning_team": wf.owning_team, "tier": wf.autonomy_tier, "off_hours_tier": wf.off_hours_tier,
            "timezone": wf.timezone, "days": sorted(wf.business_days), "start": wf.business_start.strftime("%H:%M:%S"),
            "end": wf.business_end.strftime("%H:%M:%S"), "holidays": sorted(wf.holidays or [])}
        for action in GovernedAction.objects.filter(workflow=wf).prefetch_related("rules"):
            key = f"{wf.slug}/{action.name}"
            out[("action", key)] = {"description": action.description, "risk": action.risk, "quorum": action.quorum}
            every = sorted(action.rules.all(), key=lambda r: r.position)
            out[("rules", key)] = {"rules": [_live_rule(r) for r in every if not r.shadow]}
            out[("shadow_rules", key)] = {"rules": [_live_rule(r) for r in every if r.shadow]}
        for policy in EscalationPolicy.objects.filter(workflow=wf).prefetch_related("levels__groups", "levels__people"):
            out[("policy", f"{wf.slug}/{policy.mode}/{policy.hours}")] = {
                "terminal_action": policy.terminal_action,
                "levels": [{"roles": sorted(g.name for g in lv.groups.all()),
                            "people": sorted(p.get_username() for p in lv.people.all()),
                            "timeout_seconds": lv.timeout_seconds, "replaces": lv.replaces_previous}
                           for lv in sorted(policy.levels.all(), key=lambda lv: lv.position)]}
        duties: dict[str, dict] = {}
        for a in ContainmentAssignment.objects.filter(workflow=wf).select_related("user"):
            entry = duties.setdefault(a.duty, {"primary": None, "backup": []})
            if a.position == ContainmentAssignment.Position.PRIMARY:
                entry["primary"] = a.user.get_username()
            else:
                entry["backup"].append(a.user.get_username())
        for duty, entry in duties.items():
            out[("containment", f"{wf.slug}/{duty}")] = {"primary": entry["primary"], "backup": sorted(entry["backup"])}
        editable = RolloutPlan.objects.filter(workflow=wf, state__in=RolloutPlan.EDITABLE_STATES).order_by("created_at")
        for plan in editable:  # the newest plan of a version stands for it
            out[("plan", f"{wf.slug}/{plan.release_version}")] = _live_plan(plan)
        for user, perms in get_users_with_perms(wf, attach_perms=True, with_group_users=False).items():
            scoped = sorted(SHORT[p] for p in perms if p in SHORT)
            if scoped:
                out[("scope", f"{wf.slug}/{user.get_username()}")] = {"permissions": scoped}
        if routes := _live_routes(wf):
            out[("routes", wf.slug)] = {"routes": routes}
    out.update(provider_section.live())
    return out


def plan(doc: Document, source: Source | None = None, *, prune: bool = False) -> Plan:
    """What applying `doc` would change, checked first: references, rules and hours (ConfigError)."""
    wanted = desired(doc)
    _check(doc, wanted, source)
    slugs = {wf.slug for wf in doc.workflows}
    current = live()
    identity_section.complete_live(current, wanted)
    changes = []
    for (kind, key), (fields, where) in wanted.items():
        if kind == "implied_scope":
            continue  # the containment assignment grants it; it only keeps prune from revoking it
        now = current.get((kind, key))
        if now is None:
            if kind in ("rules", "shadow_rules") and not fields["rules"]:
                continue  # an action without rules: nothing to create
            if kind == "routes" and not fields["routes"]:
                continue  # no routes, and none live
            changes.append(Change("create", kind, key, fields, where, fields))
        elif now != fields:
            diff = {name: (now.get(name), value) for name, value in fields.items() if now.get(name) != value}
            changes.append(Change("update", kind, key, diff, where, fields))
    if prune:
        for (kind, key), fields in current.items():
            implied = kind == "scope" and ("implied_scope", key) in wanted
            if kind in PRUNABLE and key.split("/")[0] in slugs and (kind, key) not in wanted and not implied:
                changes.append(Change("delete", kind, key, fields))
        changes.extend(Change("delete", *gone) for gone in identity_section.pruned(doc, current, wanted))
        changes.extend(Change("delete", *gone) for gone in provider_section.pruned(doc, current, wanted))
    order = ["workflow", "service_account", "action", "rules", "shadow_rules", "policy", "scope", "metric",
             "containment", "routes", "plan", identity_section.KIND, provider_section.KIND]
    changes.sort(key=lambda c: (c.op == "delete", order.index(c.kind), c.key))
    return Plan(changes)


def _check(doc: Document, wanted: dict, source: Source | None) -> None:
    problems: list[Problem] = []

    def problem(path: tuple, fieldname: str, message: str) -> None:
        name, line = (source.where(path) if source else None) or ("ringfence.yaml", None)
        problems.append(Problem(name, line, fieldname, message))

    people = set(User.objects.filter(is_active=True).values_list("username", flat=True))
    metrics = {m.slug for m in doc.metrics} | set(Metric.objects.values_list("slug", flat=True))
    workflows = {wf.slug for wf in doc.workflows} | set(Workflow.objects.values_list("slug", flat=True))
    roles = set(Group.objects.values_list("name", flat=True))
    seen: dict[tuple, tuple] = {}
    for (kind, key), (_fields, where) in wanted.items():
        if (kind, key) in seen and kind in ("workflow", "action", "metric", "service_account", "policy", "plan"):
            problem(where, "", f"{kind} {key} is declared twice")
        seen[(kind, key)] = where
    for i, account in enumerate(doc.service_accounts):
        if account.owner not in people:
            problem(("service_accounts", i, "owner"), f"service_accounts[{i}].owner",
                    f"no active user {account.owner!r}")
        for j, slug in enumerate(account.workflows):
            if slug not in workflows:
                problem(("service_accounts", i, "workflows", j), f"service_accounts[{i}].workflows[{j}]",
                        f"no workflow {slug!r} in the file or in Ringfence")
    for i, wf in enumerate(doc.workflows):
        at = ("workflows", i)
        try:
            validate_timezone(wf.business_hours.timezone)
        except Exception as exc:  # noqa: BLE001 - the validator's message is the problem
            problem((*at, "business_hours", "timezone"), f"workflows[{i}].business_hours.timezone",
                    " ".join(getattr(exc, "messages", [str(exc)])))
        if wf.business_hours.start >= wf.business_hours.end:
            problem((*at, "business_hours", "end"), f"workflows[{i}].business_hours.end",
                    "business hours must end after they start")
        if not wf.business_hours.days:
            problem((*at, "business_hours", "days"), f"workflows[{i}].business_hours.days", "name at least one day")
        for j, action in enumerate(wf.actions):
            for listname in ("rules", "shadow_rules"):
                for k, rule in enumerate(getattr(action, listname)):
                    path = (*at, "actions", j, listname, k)
                    label = f"workflows[{i}].actions[{j}].{listname}[{k}]"
                    error = cel_rules.check(rule.when)
                    if error:
                        problem((*path, "when"), f"{label}.when", error)
                    if rule.then == "deny" and not rule.reason.strip():
                        problem((*path, "reason"), f"{label}.reason", "a deny says why; the agent is shown it")
                    if rule.then != "approve" and (rule.quorum is not None or rule.approver_roles):
                        problem(path, label, "quorum and approver_roles only go with then: approve")
                    if rule.then == "approve" and len(set(rule.approver_roles)) > (rule.quorum or 1):
                        problem((*path, "quorum"), f"{label}.quorum", "fewer approvals than required roles")
        for j, policy in enumerate(wf.escalation_policies):
            if policy.mode == "gate" and policy.terminal_action == "proceed":
                problem((*at, "escalation_policies", j, "terminal_action"),
                        f"workflows[{i}].escalation_policies[{j}].terminal_action",
                        "a gate never proceeds on its own; its last level ends in reject")
            for k, level in enumerate(policy.levels):
                path = (*at, "escalation_policies", j, "levels", k)
                label = f"workflows[{i}].escalation_policies[{j}].levels[{k}]"
                if k == 0 and level.replaces:
                    problem((*path, "replaces"), f"{label}.replaces",
                            "the first level has no previous level to replace")
                if not level.roles and not level.people:
                    problem(path, label, "a level names nobody: give roles or people")
                for m, person in enumerate(level.people):
                    if person not in people:
                        problem((*path, "people", m), f"{label}.people[{m}]", f"no active user {person!r}")
                for m, role in enumerate(level.roles):
                    if role not in roles:
                        problem((*path, "roles", m), f"{label}.roles[{m}]", f"no role {role!r}")
        for duty, owners in wf.containment.items():
            path = (*at, "containment", duty)
            if owners.primary is None and not owners.backup:
                problem(path, f"workflows[{i}].containment.{duty}", "a duty names its owner (primary)")
            for person in filter(None, [owners.primary, *owners.backup]):
                if person not in people:
                    problem(path, f"workflows[{i}].containment.{duty}", f"no active user {person!r}")
            if owners.primary in owners.backup:
                problem(path, f"workflows[{i}].containment.{duty}", f"{owners.primary} is primary and backup")
        for person in wf.scope:
            if person not in people:
                problem((*at, "scope", person), f"workflows[{i}].scope.{person}", f"no active user {person!r}")
        _check_plans(i, wf, metrics, problem)
        _check_routes(i, wf, problem)
    identity_section.check(doc, workflows, roles, problem)
    provider_section.check(doc, metrics, problem)
    if problems:
        raise ConfigError(problems)


def _check_plans(i: int, wf: DocWorkflow, metrics: set[str], problem: Callable[[tuple, str, str], None]) -> None:
    at = ("workflows", i)
    duties = set(wf.containment) | set(ContainmentAssignment.objects.filter(
        workflow__slug=wf.slug, position=ContainmentAssignment.Position.PRIMARY).values_list("duty", flat=True))
    for j, plan in enumerate(wf.rollout_plans):
        path, label = (*at, "rollout_plans", j), f"workflows[{i}].rollout_plans[{j}]"
        for listname in ("criteria", "triggers"):
            for k, rule in enumerate(getattr(plan, listname)):
                if rule.metric not in metrics:
                    problem((*path, listname, k, "metric"), f"{label}.{listname}[{k}].metric",
                            f"no metric {rule.metric!r}; declare it under metrics")
        for k, trigger in enumerate(plan.triggers):
            if trigger.flap_breaches > trigger.flap_windows:
                problem((*path, "triggers", k, "flap_breaches"), f"{label}.triggers[{k}].flap_breaches",
                        "no more breaching windows than windows")
        if plan.executor == "webhook" and not plan.webhook_url.startswith(("https://", "http://")):
            problem((*path, "webhook_url"), f"{label}.webhook_url", "a webhook plan needs its http(s) address")
        elif plan.webhook_url and (why := outbound.target_problem(plan.webhook_url)):
            problem((*path, "webhook_url"), f"{label}.webhook_url", why)
        if plan.ready:
            missing = [d for d in ContainmentAssignment.Duty.values if d not in duties]
            if missing:
                problem((*path, "ready"), f"{label}.ready", "a plan marked ready needs an owner for every duty; "
                        f"{wf.slug} has none for {', '.join(missing)}")
            if not plan.rings:
                problem((*path, "ready"), f"{label}.ready", "a plan marked ready needs at least one ring")


def _route(route: DocRoute) -> dict:
    """A route of the file in the canonical form of approvals.routing (what `set_routes` stores)."""
    return {"events": sorted(set(route.events)), "emails": sorted({e.strip() for e in route.email}),
            "slack_channel": route.slack.strip(), "webhook_url": route.webhook.strip(),
            "pagerduty_routing_key_env": route.pagerduty.routing_key_env if route.pagerduty else ""}


def _live_routes(wf: Workflow) -> list[dict]:
    return [notification_routing.describe({name: getattr(r, name) for name in notification_routing.FIELDS})
            for r in notification_routing.routes_of(wf.pk)]


def _check_routes(i: int, wf: DocWorkflow, problem: Callable[[tuple, str, str], None]) -> None:
    routes = wf.notify or []
    if len(routes) > notification_routing.MAX_ROUTES:
        problem(("workflows", i, "notify"), f"workflows[{i}].notify",
                f"at most {notification_routing.MAX_ROUTES} routes per workflow")
    for j, route in enumerate(routes):
        try:
            notification_routing.clean(_route(route), j)
        except TransitionRefused as refusal:
            problem(("workflows", i, "notify", j), f"workflows[{i}].notify[{j}]",
                    refusal.message.split(": ", 1)[-1])


# -- carrying a plan out ---------------------------------------------------------------------------

def _users(names: list[str]) -> list[User]:
    found = {u.username: u for u in User.objects.filter(username__in=names)}
    return [found[n] for n in names]


def _workflow(slug: str) -> Workflow:
    return Workflow.objects.get(slug=slug)


def _apply_one(change: Change, actor: AbstractBaseUser) -> None:
    kind, op, f = change.kind, change.op, change.fields
    new = {name: value[1] for name, value in f.items()} if op == "update" else f
    if kind == "metric":
        rollout_metrics.define_metric(actor=actor, slug=change.key, **change.wanted)
    elif kind == "workflow":
        fields = {WORKFLOW_FIELD.get(name, name): value for name, value in new.items()}
        if op == "create":
            governance_services.create_workflow(actor=actor, slug=change.key, **fields)
        else:
            governance_services.update_workflow(_workflow(change.key).pk, actor=actor, **fields)
    elif kind == "service_account":
        full = change.wanted
        if op == "create":
            account = governance_services.create_service_account(
                actor=actor, name=change.key, owner=_users([full["owner"]])[0],
                workflows=list(Workflow.objects.filter(slug__in=full["workflows"])), description=full["description"])
            if not full["active"] or full["permissions"]:
                governance_services.update_service_account(account.pk, actor=actor, active=full["active"],
                                                           permissions=full["permissions"])
        else:
            account = ServiceAccount.objects.get(name=change.key)
            changes: dict[str, Any] = {}
            if "owner" in new:
                changes["owner"] = _users([new["owner"]])[0]
            if "workflows" in new:
                changes["workflows"] = list(Workflow.objects.filter(slug__in=new["workflows"]))
            for name in ("description", "active", "permissions"):
                if name in new:
                    changes[name] = new[name]
            governance_services.update_service_account(account.pk, actor=actor, **changes)
    elif kind == "action":
        slug, name = change.key.split("/")
        if op == "delete":
            governance_services.remove_action(GovernedAction.objects.get(workflow__slug=slug, name=name).pk,
                                              actor=actor)
            return
        full = change.wanted
        governance_services.define_action(_workflow(slug).pk, actor=actor, name=name, **full)
    elif kind in ("rules", "shadow_rules"):
        slug, name = change.key.split("/")
        action = GovernedAction.objects.get(workflow__slug=slug, name=name)
        approval_services.set_action_rules(action.pk, actor=actor, shadow=kind == "shadow_rules", rules=[
            {"condition": r["when"], "outcome": r["then"], "reason": r["reason"], "quorum": r["quorum"],
             "approver_roles": r["approver_roles"]} for r in new["rules"]])
    elif kind == "policy":
        slug, mode, hours = change.key.split("/")
        full = change.wanted
        approval_services.define_policy(
            actor=actor, workflow=_workflow(slug), mode=mode, hours=hours, terminal_action=full["terminal_action"],
            levels=[{"groups": lv["roles"], "people": _users(lv["people"]), "timeout_seconds": lv["timeout_seconds"],
                     "replaces": lv["replaces"]} for lv in full["levels"]])
    elif kind == "scope":
        slug, username = change.key.split("/", 1)
        workflow, user = _workflow(slug), _users([username])[0]
        if op == "delete":
            governance_services.revoke_scope(workflow.pk, actor=actor, user=user)
            return
        wanted = set(new["permissions"])
        had = set(f["permissions"][0]) if op == "update" else set()
        if wanted - had:
            governance_services.grant_scope(workflow.pk, actor=actor, user=user,
                                            permissions=[CODENAME[p] for p in sorted(wanted - had)])
        if had - wanted:
            governance_services.revoke_scope(workflow.pk, actor=actor, user=user,
                                             permissions=[CODENAME[p] for p in sorted(had - wanted)])
    elif kind == "plan":
        _apply_plan(change, actor, change.wanted)
    elif kind == "routes":
        notification_routing.set_routes(_workflow(change.key).pk, actor=actor,
                                         routes=[] if op == "delete" else change.wanted["routes"])
    elif kind == identity_section.KIND:
        identity_section.apply(op, change.key, change.wanted, actor)
    elif kind == provider_section.KIND:
        provider_section.apply(op, change.key, change.wanted, actor)
    elif kind == "containment":
        slug, duty = change.key.split("/")
        workflow = _workflow(slug)
        for assignment in ContainmentAssignment.objects.filter(workflow=workflow, duty=duty).select_related("user"):
            keep = op != "delete" and _keeps(assignment, change.wanted)
            if not keep:
                governance_services.remove_containment(assignment.pk, actor=actor)
        if op == "delete":
            return
        full = change.wanted
        present = {(a.user.username, a.position) for a in
                   ContainmentAssignment.objects.filter(workflow=workflow, duty=duty).select_related("user")}
        for username, position in [(full["primary"], "primary"), *[(b, "backup") for b in full["backup"]]]:
            if username and (username, position) not in present:
                governance_services.assign_containment(workflow.pk, actor=actor, user=_users([username])[0],
                                                       duty=duty, position=position)


# The file's name of a workflow setting → the model's.
WORKFLOW_FIELD = {"tier": "autonomy_tier", "days": "business_days", "start": "business_start", "end": "business_end"}


def _apply_plan(change: Change, actor: AbstractBaseUser, full: dict) -> None:
    slug, version = change.key.split("/", 1)
    workflow = _workflow(slug)
    metrics = {m.slug: m for m in Metric.objects.all()}
    fields = {name: full[name] for name in PLAN_FIELDS}
    rings = [{"segment_kind": r["segment_kind"], "segment_value": r["segment_value"],
              "exposure_percent": r["exposure_percent"], "min_soak": timedelta(seconds=r["min_soak_seconds"]),
              "approval_point": r["approval_point"]} for r in full["rings"]]
    criteria = [{"metric": metrics[c["metric"]], "operator": c["operator"], "threshold": Decimal(str(c["threshold"])),
                 "window": timedelta(seconds=c["window_seconds"]), "min_samples": c["min_samples"]}
                for c in full["criteria"]]
    triggers = []
    for t in full["triggers"]:
        trigger = {name: t[name] for name in TRIGGER_PLAIN}
        trigger.update(
            metric=metrics[t["metric"]], threshold=Decimal(str(t["threshold"])),
            off_hours_threshold=None if t["off_hours_threshold"] is None else Decimal(str(t["off_hours_threshold"])),
            sustained_for=timedelta(seconds=t["sustained_for_seconds"]),
            allowed_lateness=timedelta(seconds=t["allowed_lateness_seconds"]),
            no_data_after=None if t["no_data_after_seconds"] is None else timedelta(seconds=t["no_data_after_seconds"]))
        triggers.append(trigger)
    if change.op == "create":
        plan = rollout_plans.create_plan(actor=actor, workflow=workflow,
                                         fields={**fields, "release_version": version},
                                         rings=rings, criteria=criteria, triggers=triggers)
    else:
        plan = (RolloutPlan.objects.filter(workflow=workflow, release_version=version,
                                           state__in=RolloutPlan.EDITABLE_STATES).order_by("-created_at").first())
        if set(change.fields) != {"ready"} or not full["ready"]:
            # Any other change (or un-marking it) rewrites the plan, which returns it to draft.
            plan = rollout_plans.update_plan(plan.pk, actor=actor, fields=fields, rings=rings, criteria=criteria,
                                             triggers=triggers)
    if full["ready"]:
        rollout_plans.mark_ready(plan.pk, actor=actor)


def _keeps(assignment: ContainmentAssignment, full: dict) -> bool:
    if assignment.position == ContainmentAssignment.Position.PRIMARY:
        return assignment.user.username == full["primary"]
    return assignment.user.username in full["backup"]


def apply(plan_: Plan, *, actor: AbstractBaseUser, digest: str, origin: str, via: str = "") -> Plan:
    """Carry out a plan in one transaction: every change through its service (each audits itself),
    then `config.applied`. A refusal rolls everything back and is raised as ConfigError."""
    if not governance_services.is_administrator(actor):
        raise ConfigError([Problem(origin, None, "", "only administrators apply configuration")])
    with transaction.atomic():
        for change in plan_.changes:
            try:
                with transaction.atomic():
                    _apply_one(change, actor)
            except TransitionRefused as refusal:
                raise ConfigError([Problem(origin, None, change.label, refusal.message)]) from None
        audit.record(actor, "config.applied", ("configuration", digest[:16]), data={
            "sha256": digest, "file": origin, "via": via, "summary": plan_.summary(),
            "changes": [c.label for c in plan_.changes]})
    return plan_


def sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()

