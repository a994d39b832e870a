"""Rollout endpoints of the agent API: signals, proposals, the route, context tags, containment.

Mounted by governance/api.py under /api/v1. Errors are problem+json; rules live in the services.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, NoReturn

from django.conf import settings
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Path, Query, Router, Schema, Status
from pydantic import BaseModel, Field

from core import clock
from core.api_schemas import STRICT, Command, Finite, JsonObject, Text, Timestamp
from core.idempotency import header_value, idempotent
from core.problems import FieldError, Problem
from governance.api_auth import TOKEN_OR_SESSION, actor_of, workflows_in_scope
from governance.models import Workflow, slug_validator
from rollouts import containment, proposals, review_signals, selectors, signals
from rollouts import tags as rollout_tags
from rollouts.models import ContextTag, FallbackMode, MetricProvider, RolloutAction, RolloutPlan, SegmentKind

router = Router(tags=["rollouts"])

SLUG = slug_validator.regex.pattern
SEGMENT = r"^([a-z_]{1,20}:[^\x00]{1,100})?$"
MAX_ID = 2**63 - 1
# A sample stamped further in the future than this, or before EARLIEST_OBSERVED_AT, is refused:
# the clock of its sender is wrong (or a unit is: seconds sent as milliseconds).
FUTURE_SKEW = timedelta(minutes=5)
EARLIEST_OBSERVED_AT = datetime(2000, 1, 1, tzinfo=UTC)
MAX_FIELD_ERRORS = 20
# No metric needs more; sums and means over a window stay far from float overflow.
MAX_VALUE = 1e15


def _workflow(request: HttpRequest, slug: str) -> Workflow:
    return get_object_or_404(workflows_in_scope(request), slug=slug)


def _plans(request: HttpRequest):
    return RolloutPlan.objects.filter(workflow__in=workflows_in_scope(request)).select_related("workflow")


def _plan_for(request: HttpRequest, workflow: Workflow, plan_id: int | None) -> RolloutPlan:
    if plan_id is not None:
        return get_object_or_404(_plans(request), pk=plan_id, workflow=workflow)
    plan = selectors.live_plan(workflow)
    if plan is None:
        raise Problem(409, "no_live_rollout", f"{workflow.slug} has no live rollout; name the plan or start one.",
                      errors=[FieldError("plan", "No live plan to attach this to.")])
    return plan


# -- signals ---------------------------------------------------------------------------------

class SampleIn(BaseModel):
    """A plain pydantic model: ninja's Schema wraps every object it validates, which costs ~6x on
    a batch of 10,000 samples."""

    model_config = STRICT

    metric: str = Field(pattern=SLUG, max_length=63, description="A registered metric slug, e.g. latency_p95_ms.")
    value: Finite = Field(ge=-MAX_VALUE, le=MAX_VALUE,
                          description="A finite number within ±1e15: NaN, Infinity and overflowing values are refused.")
    observed_at: Timestamp = Field(description="When the sample was measured: an RFC 3339 date-time with its offset, "
                                               "from 2000 to 5 minutes ahead of the server's clock.")
    segment: str = Field(default="", max_length=120, pattern=SEGMENT,
                         description="`kind:value` of the segment it was measured in, e.g. internal_team:support-ops.")
    ring: int | None = Field(default=None, ge=0, le=100,
                             description="Ring order; derived from the segment when absent.")


class SignalsIn(BaseModel):
    """Plain pydantic too: ninja's Schema validates a model that forbids extra fields twice."""

    model_config = STRICT

    workflow: str = Field(pattern=SLUG)
    plan: int | None = Field(default=None, ge=1, le=MAX_ID, description="Defaults to the workflow's live rollout.")
    samples: list[SampleIn] = Field(min_length=1, max_length=10_000, description="At most 10,000 samples per batch.")


class SignalsOut(Schema):
    plan: int
    received: int
    stored: int
    duplicates: int = Field(description="Samples already stored (or repeated in the batch) under the same "
                                        "(metric, observed_at, segment); the first value is kept.")
    late: int = Field(default=0, description="Stored samples received more than their metric's allowed lateness "
                                             "after they were measured: recorded, never counted.")
    evaluation: Literal["scheduled"]


SEGMENT_KINDS = frozenset(SegmentKind.values)  # Choices.values builds a new list on every read


def _ring_of(rings: list, segment: str) -> int | None:
    """The ring a segment belongs to: the most specific match, the earliest of equals."""
    kind, _, value = segment.partition(":")
    matching = [r for r in rings if r.matches(kind, value)]
    best = max(matching, key=lambda r: (r.segment_kind != SegmentKind.TRAFFIC_SLICE, -r.order), default=None)
    return best.order if best else None


@dataclass(frozen=True)
class _SampleRules:
    """What a batch's samples are held to: known metrics, segment kinds, the clock, the plan's rings."""

    metrics: dict[str, int]
    orders: set[int]
    horizon: datetime
    plan: RolloutPlan

    def problem(self, field: str, value: Any) -> str | None:
        """Why one field's value is refused, or None."""
        if field == "metric" and value not in self.metrics:
            return f"Unknown metric {value!r}; register it before sending it."
        if field == "segment" and value and value.partition(":")[0] not in SEGMENT_KINDS:
            return f"Segment kinds are {', '.join(SegmentKind.values)}."
        if field == "observed_at" and value > self.horizon:
            return "More than 5 minutes in the future; check the sender's clock."
        if field == "observed_at" and value < EARLIEST_OBSERVED_AT:
            return "Before 2000; check the sender's clock."
        if field == "ring" and value is not None and value not in self.orders:
            return f"Plan {self.plan.pk} has rings {', '.join(map(str, sorted(self.orders)))}."
        return None

    def refuse(self, samples: list[SampleIn]) -> NoReturn:
        """422 naming each refused sample's first refused field (at most MAX_FIELD_ERRORS)."""
        errors = []
        for index, sample in enumerate(samples):
            for field in ("metric", "segment", "observed_at", "ring"):
                if message := self.problem(field, getattr(sample, field)):
                    errors.append(FieldError(f"samples.{index}.{field}", message))
                    break
            if len(errors) >= MAX_FIELD_ERRORS:
                break
        raise Problem(422, "invalid_samples", "Some samples were refused; nothing was stored. See errors.",
                      errors=errors)


def _refuse_pulled(slugs: set[str], metric_col: list[str]) -> None:
    """409 when the batch holds samples of a metric Ringfence measures itself: one pulled from a
    provider, or a human-review metric (rollouts.review_signals). An agent never writes those."""
    own = (slugs & set(review_signals.METRICS)) | set(
        MetricProvider.objects.filter(metric__slug__in=slugs).values_list("metric__slug", flat=True))
    if not own:
        return
    names = ", ".join(sorted(own))
    errors = [FieldError(f"samples.{index}.metric", f"{slug} is measured by Ringfence; it is not pushed.")
              for index, slug in enumerate(metric_col) if slug in own][:MAX_FIELD_ERRORS]
    raise Problem(409, "metric_not_pushed", f"Ringfence measures {names} itself (a provider or the reviews); "
                                            "samples of it are not accepted here. Nothing was stored.", errors=errors)


@router.post("/signals", response=SignalsOut, summary="Post a batch of metric samples of a rollout")
def post_signals(request: HttpRequest, payload: SignalsIn) -> SignalsOut:
    """Stores the batch in one statement and schedules a (debounced) evaluation of the plan.

    Refused with 422, naming each field: unknown metric slugs (register custom ones first),
    segments of an unknown kind, samples stamped before 2000 or more than 5 minutes in the future, rings the
    plan does not have. Non-finite numbers are refused by the parser. Refused with 409
    `metric_not_pushed` for a metric Ringfence measures itself (pulled from a provider, or one of the
    human-review metrics). Nothing is stored unless the whole batch is valid. Duplicates (same metric,
    time and segment) are skipped, first value kept.
    """
    if len(payload.samples) > settings.ROLLOUT_SIGNALS_MAX_BATCH:
        raise Problem(413, "payload_too_large", f"Send at most {settings.ROLLOUT_SIGNALS_MAX_BATCH} samples per batch.",
                      errors=[FieldError("samples", "Too many samples.")])
    workflow = _workflow(request, payload.workflow)
    plan = _plan_for(request, workflow, payload.plan)
    samples = payload.samples
    metric_col, segment_col = [s.metric for s in samples], [s.segment for s in samples]
    observed_col, ring_col = [s.observed_at for s in samples], [s.ring for s in samples]
    metrics = selectors.metric_ids(slugs := set(metric_col))
    rings = list(plan.rings.all())
    rules = _SampleRules(metrics, {r.order for r in rings}, clock.now() + FUTURE_SKEW, plan)
    segments, given_rings = set(segment_col), set(ring_col) - {None}
    # The rules are applied to the distinct values of each field (a batch repeats a few metrics and
    # segments); only a refused batch is walked sample by sample, to name each refused field.
    distinct = {"metric": slugs, "segment": segments, "observed_at": [min(observed_col), max(observed_col)],
                "ring": given_rings}
    if any(rules.problem(field, value) for field, values in distinct.items() for value in values):
        rules.refuse(samples)
    _refuse_pulled(slugs, metric_col)
    ring_of_segment = {seg: _ring_of(rings, seg) if seg else None for seg in segments}
    derived = map(ring_of_segment.__getitem__, segment_col)
    ring_values = derived if not given_rings else (  # a sample's own ring comes first
        ring if ring is not None else of_segment for ring, of_segment in zip(ring_col, derived, strict=True))
    rows = list(zip(map(metrics.__getitem__, metric_col), ring_values, segment_col, observed_col,
                    [s.value for s in samples], strict=True))
    result = signals.ingest_signals(plan, rows)
    return SignalsOut(plan=plan.pk, received=result.received, stored=result.stored, duplicates=result.duplicates,
                      late=result.late, evaluation="scheduled")


# -- proposals -------------------------------------------------------------------------------

class ProposalIn(Command):
    workflow: str = Field(pattern=SLUG)
    plan: int | None = Field(default=None, ge=1, le=MAX_ID, description="Defaults to the workflow's live rollout.")
    kind: Literal["rollback", "fallback"]
    confidence: Annotated[Finite, Field(ge=0, le=1)]
    reason: Text = Field(min_length=1, max_length=2000, description="What the agent saw, for the people who decide.")
    metric: str | None = Field(default=None, pattern=SLUG, description="The metric the evidence is about; a context "
                                                                         "tag on it turns the proposal into a request.")
    evidence: JsonObject = Field(default_factory=dict)


class ActionOut(Schema):
    id: int
    plan: int
    kind: str
    state: str
    origin: str
    handling: str = Field(description="execute (tier 1), override_window (tier 2), gate (tier 3 or tagged), direct.")
    tier: int | None
    approval_id: int | None
    poll_url: str | None
    idempotency_key: str = Field(description="The key the executor sends to the webhook receiver.")
    attempts: int
    plan_state: str
    created_at: datetime


class ProposalOut(ActionOut):
    created: bool = Field(description="False when an open proposal of the same kind already existed.")
    context_tag: dict | None


def _action_out(action: RolloutAction, schema: type[ActionOut] = ActionOut, **extra: object) -> ActionOut:
    approval_id = action.approval_request_id
    return schema(
        id=action.pk, plan=action.plan_id, kind=action.kind, state=action.state, origin=action.origin,
        handling=action.handling, tier=action.tier, approval_id=approval_id,
        poll_url=reverse("api:approval_status", kwargs={"approval_id": approval_id}) if approval_id else None,
        idempotency_key=action.idempotency_key, attempts=action.attempts, plan_state=action.plan.state,
        created_at=action.created_at, **extra,
    )


@router.post("/proposals", response={200: ProposalOut, 201: ProposalOut}, summary="Propose a rollback or fallback")
@idempotent(required=True)
def propose(request: HttpRequest, payload: ProposalIn) -> Status:
    """Handled as the workflow's autonomy tier says now: tier 1 executes at once (and files a
    review), tier 2 opens an override window, tier 3 waits for an approval. A context tag in
    force on `metric` makes it wait for an approval at any tier; a migration or maintenance
    window turns tier 1's execution into an override window."""
    workflow = _workflow(request, payload.workflow)
    plan = _plan_for(request, workflow, payload.plan)
    now = clock.now()
    tier, handling, tag = proposals.handling_for(plan, now, metric=payload.metric)
    evidence = {**payload.evidence, "agent_reason": payload.reason, "metric": payload.metric}
    if tag:
        evidence["context_tag"] = tag
    proposal = proposals.propose_action(
        plan.pk, kind=payload.kind, handling=handling, tier=tier, origin=RolloutAction.Origin.AGENT,
        evidence=evidence, reason=payload.reason, requester=actor_of(request),
        confidence=Decimal(str(payload.confidence)).quantize(Decimal("0.001")),
        client_key=header_value(request) or "",
    )
    out = _action_out(proposal.action, ProposalOut, created=proposal.created, context_tag=tag)
    return Status(201 if proposal.created else 200, out)


# -- the route -------------------------------------------------------------------------------

class RouteOut(Schema):
    workflow: str
    plan: int | None
    state: str | None = Field(description="The plan's state; null when the workflow never had one.")
    version: str | None = Field(description="The version to serve this call.")
    mode: str = Field(description="normal, or the fallback mode to use (human_review, manual_path, …).")
    exposed: bool = Field(description="Whether this segment (and key) gets the release.")
    exposure_percent: int = Field(description="Share of the segment exposed; apply it yourself when no key is sent.")
    ring: int | None
    workflow_paused: bool = Field(description="The workflow's kill switch: dispatch is denied while true.")


@router.get("/route", response=RouteOut, auth=TOKEN_OR_SESSION, summary="Which version and mode serve a segment now")
def route(
    request: HttpRequest,
    workflow: Annotated[str, Query(pattern=SLUG, max_length=63)],
    segment_kind: Annotated[Literal[tuple(SegmentKind.values)], Query()],  # type: ignore[valid-type]
    segment_value: Annotated[str, Query(min_length=1, max_length=100)],
    key: Annotated[str, Query(max_length=200, description="A stable id (user, account) to apply the exposure "
                                                          "percent by hash.")] = "",
) -> RouteOut:
    """Read on every agent call: a rollback or fallback takes effect on the next one."""
    return RouteOut(**selectors.current_route(_workflow(request, workflow), segment_kind, segment_value, key))


# -- context tags ----------------------------------------------------------------------------

class ContextTagIn(Command):
    workflow: str = Field(pattern=SLUG)
    plan: int | None = Field(default=None, ge=1, le=MAX_ID,
                             description="Only this plan; all the workflow's when absent.")
    kind: Literal[tuple(ContextTag.Kind.values)]  # type: ignore[valid-type]
    metric: str | None = Field(default=None, pattern=SLUG)
    expected_change_percent: Annotated[Finite, Field(gt=0, le=1000)] | None = None
    starts_at: Timestamp | None = None
    ends_at: Timestamp
    reason: Text = Field(min_length=1, max_length=2000)


class ContextTagOut(Schema):
    id: int
    workflow: str
    plan: int | None
    kind: str
    label: str
    metric: str | None
    expected_change_percent: float | None
    starts_at: datetime
    ends_at: datetime
    reason: str
    author: str


def _tag_out(tag: ContextTag) -> ContextTagOut:
    return ContextTagOut(
        id=tag.pk, workflow=tag.workflow.slug, plan=tag.plan_id, kind=tag.kind, label=tag.label,
        metric=tag.metric.slug if tag.metric_id else None,
        expected_change_percent=float(tag.expected_change_percent) if tag.expected_change_percent is not None else None,
        starts_at=tag.starts_at, ends_at=tag.ends_at, reason=tag.reason, author=tag.author_label,
    )


@router.post("/context-tags", response={201: ContextTagOut}, auth=TOKEN_OR_SESSION,
             summary="Tag a deployment with what it is expected to change")
@idempotent(required=False)
def add_context_tag(request: HttpRequest, payload: ContextTagIn) -> Status:
    """`expected_latency_increase` with 15 (%) widens latency triggers by 15 % for the window (a
    breach beyond that is handled as if untagged); `migration_window` turns automatic rollbacks
    into override windows: a person can stop them, silence proceeds."""
    workflow = _workflow(request, payload.workflow)
    plan = get_object_or_404(_plans(request), pk=payload.plan, workflow=workflow) if payload.plan else None
    percent = payload.expected_change_percent
    tag = rollout_tags.create_context_tag(
        actor=actor_of(request), workflow=workflow, plan=plan, kind=payload.kind, metric=payload.metric,
        expected_change_percent=Decimal(str(percent)).quantize(Decimal("0.01")) if percent is not None else None,
        starts_at=payload.starts_at, ends_at=payload.ends_at, reason=payload.reason,
    )
    return Status(201, _tag_out(tag))


# -- plans and containment -------------------------------------------------------------------

class PlanOut(Schema):
    id: int
    workflow: str
    name: str
    release_version: str
    stable_version: str
    state: str
    current_ring: int | None
    rings: int
    fallback_mode: str
    active_fallback_mode: str
    open_actions: list[ActionOut]


@router.get("/rollouts/{plan_id}", response=PlanOut, auth=TOKEN_OR_SESSION, summary="A rollout plan's state")
def plan_state(request: HttpRequest, plan_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> PlanOut:
    plan = get_object_or_404(_plans(request), pk=plan_id)
    return PlanOut(
        id=plan.pk, workflow=plan.workflow.slug, name=plan.name, release_version=plan.release_version,
        stable_version=plan.stable_version, state=plan.state, current_ring=plan.current_ring,
        rings=plan.rings.count(), fallback_mode=plan.fallback_mode, active_fallback_mode=plan.active_fallback_mode,
        open_actions=[_action_out(a) for a in selectors.open_actions(plan)],
    )


class ContainmentIn(Command):
    reason: Text = Field(default="", max_length=2000, description="Required for pause, narrow, fallback and rollback.")
    mode: Literal[tuple(FallbackMode.values)] | None = Field(  # type: ignore[valid-type]
        default=None, description="fallback: the mode to engage (the plan's own by default).")
    to_ring: int | None = Field(default=None, ge=0, le=100, description="narrow: back to this ring.")
    exposure_percent: int | None = Field(default=None, ge=0, le=100,
                                         description="narrow: lower the current ring's exposure.")


ContainmentAction = Literal["pause", "resume", "narrow", "expand", "complete", "fallback", "rollback"]


@router.post("/rollouts/{plan_id}/{action}", response={200: ActionOut, 202: ActionOut}, auth=TOKEN_OR_SESSION,
             summary="Take a containment action (owners of that duty only)")
@idempotent(required=False)
def contain(request: HttpRequest, plan_id: Annotated[int, Path(ge=1, le=MAX_ID)], action: ContainmentAction,
            payload: ContainmentIn) -> Status:
    """Only the owner of the action's duty may take it (a token acts for its service account's
    owner). Fallback and rollback answer 202: the executor runs them, see the action's state. So does
    resume out of a fallback on a webhook plan: the plan stays in fallback until the receiver answered."""
    plan = get_object_or_404(_plans(request), pk=plan_id)
    kwargs: dict = {"actor": actor_of(request), "reason": payload.reason}
    if action == "fallback":
        kwargs["mode"] = payload.mode or ""
    if action == "narrow":
        kwargs.update(to_ring=payload.to_ring, exposure_percent=payload.exposure_percent)
    done = containment.CONTAINMENT[action](plan.pk, **kwargs)
    return Status(202 if done.state == RolloutAction.State.SCHEDULED else 200, _action_out(done))
