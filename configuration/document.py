"""The shape of ringfence.yaml, as pydantic models: they validate a file and publish its JSON Schema.

    version: 1
    metrics: [{slug, label, unit, direction}]
    metric_providers: [{metric, kind, url, query, interval, timeout, max_failures, …}]
    service_accounts: [{name, owner, workflows, description, active}]
    workflows:
      - slug: refund-agent
        name: Refund agent
        environment: production          # staging | production
        tier: 2                          # 1 autonomous, 2 supervised, 3 gated
        off_hours_tier: 3
        business_hours: {timezone: Europe/Berlin, days: [0, 1, 2, 3, 4], start: "09:00", end: "17:00"}
        actions:
          - name: refund_customer
            risk: high
            rules:
              - {when: "double(params.amount) <= 50.0", then: allow}
              - {when: "true", then: approve, quorum: 2, approver_roles: [senior_approver]}
        escalation_policies:
          - {mode: gate, hours: any, levels: [{roles: [approver], timeout_seconds: 600}]}
        containment: {pause: {primary: olivia, backup: [oscar]}, ...}
        scope: {alice: [view, approve], rhea: [view, manage_rollouts]}
        rollout_plans: [{release_version, name, stable_version, ready, rings, criteria, triggers}]
        notify:                          # where its notices go; absent: left as they are
          - events: [requested, escalated]
            slack: "#payments-approvals"
            email: [payments-oncall@example.com]
          - {events: [last_level, rollback_failed], pagerduty: {routing_key_env: PD_PAYMENTS}}

    identity:
      groups: [{group: payments-approvers, roles: [approver], scope: {refund-agent: [view, approve]}}]

Names of people are usernames; roles are Ringfence's role groups. Tokens are never in the file.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Username = Annotated[str, StringConstraints(min_length=1, max_length=150)]
Duty = Literal["pause", "narrow", "fallback", "rollback", "escalate", "approve_expansion"]
Permission = Literal["view", "approve", "contain", "manage_rollouts"]
RoleName = Literal["approver", "senior_approver", "containment_owner", "release_manager", "manager", "auditor",
                   "administrator", "agent"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(Strict):
    """One rule of an action: when the CEL condition holds, `then` decides."""

    when: str = Field(min_length=1, max_length=2000, description="A CEL condition over params, evidence, agent, "
                                                                  "workflow, now, business_hours, tags.")
    then: Literal["allow", "deny", "approve", "tier"]
    reason: str = Field("", max_length=500, description="Shown to the agent on deny.")
    quorum: int | None = Field(None, ge=1, le=9, description="approve: distinct approvals needed (default 1).")
    approver_roles: list[RoleName] = Field(default_factory=list,
                                           description="approve: roles that must be among the approvers.")


class Action(Strict):
    name: Slug
    description: str = Field("", max_length=300)
    risk: Literal["low", "medium", "high", "critical"] = "high"
    quorum: int = Field(1, ge=1, le=9, description="Approvals the tier rule asks for.")
    rules: list[Rule] = Field(default_factory=list)
    shadow_rules: list[Rule] = Field(default_factory=list, description="Evaluated beside the rules; change nothing.")


class Level(Strict):
    roles: list[RoleName] = Field(default_factory=list)
    people: list[Username] = Field(default_factory=list)
    timeout_seconds: int = Field(ge=1, le=7 * 24 * 3600)
    replaces: bool = Field(False, description="From this level on, the earlier levels' people no longer decide "
                                              "(default: the level adds its people).")


class Policy(Strict):
    mode: Literal["gate", "override_window"]
    hours: Literal["any", "business", "off_hours"] = "any"
    terminal_action: Literal["reject", "proceed"] | None = Field(
        None, description="When the last level runs out; default: reject for a gate, proceed for an override window.")
    levels: list[Level] = Field(min_length=1, max_length=10)


class BusinessHours(Strict):
    timezone: str = "UTC"
    days: list[Annotated[int, Field(ge=0, le=6)]] = Field(default_factory=lambda: [0, 1, 2, 3, 4],
                                                          description="Monday = 0 … Sunday = 6.")
    start: dt.time = dt.time(9, 0)
    end: dt.time = dt.time(17, 0)
    holidays: list[dt.date] = Field(default_factory=list, description="Whole days off hours (local dates).")


class Owners(Strict):
    primary: Username | None = None
    backup: list[Username] = Field(default_factory=list)


SegmentKind = Literal["internal_team", "customer_group", "account_type", "workflow_path", "user_role", "traffic_slice"]
Operator = Literal["lt", "lte", "gt", "gte"]
Seconds = Annotated[int, Field(ge=1, le=30 * 24 * 3600)]


class Ring(Strict):
    segment_kind: SegmentKind
    segment_value: str = Field(min_length=1, max_length=100)
    exposure_percent: int = Field(100, ge=1, le=100)
    min_soak_seconds: Seconds = 3600
    approval_point: bool = Field(False, description="Opening this ring always waits for a person.")


class Criterion(Strict):
    metric: Slug
    operator: Operator
    threshold: float
    window_seconds: Seconds = 1800
    min_samples: int = Field(30, ge=1)


class Trigger(Strict):
    metric: Slug
    operator: Operator
    threshold: float
    off_hours_threshold: float | None = None
    sustained_for_seconds: Seconds = 300
    min_samples: int = Field(3, ge=1)
    severity: Literal["critical", "warning"] = "critical"
    breach_statistic: Literal["share", "mean"] = "share"
    breach_share: int = Field(50, ge=1, le=100, description="Percent of the window's samples beyond the threshold.")
    flap_windows: int = Field(5, ge=0, le=20)
    flap_breaches: int = Field(3, ge=0, le=20)
    allowed_lateness_seconds: int = Field(300, ge=0, le=24 * 3600)
    no_data_after_seconds: Seconds | None = Field(None, description="Default: twice the sustained-for time.")
    on_no_data: Literal["", "notify", "pause", "rollback"] = Field("", description="'': by severity.")
    reask_worse_percent: int = Field(25, ge=1, le=1000)
    on_silence: Literal["pause", "ask"] = "pause"


class Plan(Strict):
    """A rollout plan while it is a draft or ready; once started it is no longer the file's."""

    release_version: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=200)
    stable_version: str = Field(min_length=1, max_length=100)
    fallback_mode: Literal["", "human_review", "manual_path", "previous_version", "simpler_route",
                           "reduced_context", "read_only"] = ""
    executor: Literal["flag", "webhook"] = "flag"
    webhook_url: str = ""
    notes: str = ""
    ready: bool = Field(False, description="Mark it ready: launch readiness (owners of every duty, criteria, "
                                           "triggers, …) is checked.")
    rings: list[Ring] = Field(default_factory=list)
    criteria: list[Criterion] = Field(default_factory=list)
    triggers: list[Trigger] = Field(default_factory=list)


RouteEvent = Literal["requested", "window_opened", "escalated", "reminder", "decided", "autonomous_action",
                    "signals_lost", "rollback_executed", "rollback_failed", "last_level"]


class PagerDutyRoute(Strict):
    routing_key_env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]{0,99}$",
                                 description="The environment variable holding the routing key (never the key).")


class Route(Strict):
    """Where some of a workflow's notices go; at least one of email, slack, webhook, pagerduty."""

    events: list[RouteEvent] = Field(default_factory=list, description="Which events; none listed: every event. "
                                     "last_level: a request escalated to its last level, or reminded there.")
    email: list[str] = Field(default_factory=list, description="Addresses.")
    slack: str = Field("", max_length=100, description="A channel, #name or its id.")
    webhook: str = Field("", max_length=2000, description="An http(s) address; signed like the global webhook.")
    pagerduty: PagerDutyRoute | None = Field(None, description="Pages at a request's last level and when a "
                                                                "rollback fails; resolves when it is over.")


class Workflow(Strict):
    slug: Slug
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    environment: Literal["staging", "production"] = "staging"
    owning_team: str = Field("", max_length=100)
    tier: Literal[1, 2, 3] = 3
    off_hours_tier: Literal[1, 2, 3] | None = None
    business_hours: BusinessHours = Field(default_factory=BusinessHours)
    actions: list[Action] = Field(default_factory=list)
    escalation_policies: list[Policy] = Field(default_factory=list)
    containment: dict[Duty, Owners] = Field(default_factory=dict)
    scope: dict[Username, list[Permission]] = Field(default_factory=dict,
                                                    description="Object permissions per person on this workflow.")
    rollout_plans: list[Plan] = Field(default_factory=list)
    notify: list[Route] | None = Field(None, description="Notification routes; absent: left as they are, "
                                                         "[]: none (the installation's settings apply).")


class ServiceAccount(Strict):
    name: Slug
    owner: Username
    workflows: list[Slug] = Field(default_factory=list)
    description: str = Field("", max_length=300)
    active: bool = True
    permissions: list[Literal["config", "audit"]] = Field(default_factory=list,
                                                 description="config: may plan and apply configuration over the API.")


class Metric(Strict):
    slug: Slug
    label: str = Field(min_length=1, max_length=100)
    unit: str = Field("", max_length=20)
    direction: Literal["higher_is_better", "lower_is_better"] = "lower_is_better"


EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]{0,99}$")]


class MetricProvider(Strict):
    """Pull a metric from Prometheus, Datadog or a JSON endpoint (rollouts.providers) instead of waiting
    for pushes. The query (and a web URL) is a template over {{ segment }}, {{ segment_kind }},
    {{ ring }}, {{ workflow }} and {{ window }}; credentials are names of environment variables."""

    metric: Slug
    kind: Literal["prometheus", "datadog", "web"]
    url: str = Field("", max_length=500, description="Prometheus: its base URL; Datadog: the site's API URL "
                                                     "(default https://api.datadoghq.com); web: the endpoint.")
    query: str = Field(min_length=1, max_length=4000, description="PromQL, a Datadog metrics query, or (web) the "
                                                                  "JSONPath to the value.")
    segment_label: str = Field("", max_length=100, description="Prometheus: the label that names the segment "
                                                               "when the query gives one series per segment.")
    api_key_env: EnvName | Literal[""] = Field("", description="Datadog: the variable holding the API key.")
    app_key_env: EnvName | Literal[""] = Field("", description="Datadog: the variable holding the application key.")
    headers: dict[str, EnvName] = Field(default_factory=dict, description="Header name → the variable holding "
                                                                          "its value.")
    interval: int = Field(60, ge=1, le=24 * 3600, description="Seconds between pulls.")
    timeout: float = Field(10.0, ge=0.1, le=120, description="Seconds a pull may take.")
    max_failures: int = Field(3, ge=1, le=1000, description="Failed pulls in a row before the owners are told.")


class GroupMapping(Strict):
    """What one identity-provider group gives its members, at each sign-in (configuration.identity)."""

    group: str = Field(min_length=1, max_length=255, description="The group as the provider's groups claim "
                                                                 "(OIDC_GROUPS_CLAIM) names it.")
    roles: list[RoleName] = Field(default_factory=list)
    scope: dict[Slug, list[Permission]] = Field(default_factory=dict,
                                                description="Object permissions per workflow slug.")


class Identity(Strict):
    groups: list[GroupMapping] = Field(default_factory=list, description="Group mappings, one per group.")


class Document(Strict):
    """A Ringfence configuration: what `manage.py config plan|apply` compares with the live one."""

    version: Literal[1] = 1
    metrics: list[Metric] = Field(default_factory=list)
    metric_providers: list[MetricProvider] | None = Field(None, description="Metrics pulled from a provider; "
                                                                           "absent: left as they are.")
    service_accounts: list[ServiceAccount] = Field(default_factory=list)
    workflows: list[Workflow] = Field(default_factory=list)
    identity: Identity | None = Field(None, description="Sign-in through the identity provider: what its groups "
                                                        "give; absent: the live mappings are left as they are.")


def json_schema() -> dict:
    schema = Document.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "urn:ringfence:config:v1"
    schema["title"] = "ringfence.yaml"
    return schema
