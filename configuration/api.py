"""Configuration as code for CI and GitOps: the schema, a plan, and an apply, over the API.

The body is the file: YAML (`application/yaml`) or JSON (`application/json`), UTF-8 (a `charset`, if
sent, is `utf-8`); JSON is read as strictly as every API body (core.jsonbody: a member named twice
is refused, as the YAML loader refuses a repeated key). A token whose service
account holds the `config` permission may plan; applying acts as the account's owner, who must be
an administrator (the services audit each change as that person, and `config.applied` names the
account it came through).
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from ninja import Router, Schema
from pydantic import Field

from configuration import document, loading, planning
from core import jsonbody
from core.idempotency import idempotent
from core.problems import FieldError, Problem
from governance import services as governance_services
from governance.api_auth import require_account_permission, service_account_of

router = Router(tags=["configuration"])
MAX_BODY = 2 * 1024 * 1024
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


@router.get("/config/schema.json", auth=None, summary="The JSON Schema of ringfence.yaml")
def schema(request: HttpRequest) -> JsonResponse:
    return JsonResponse(document.json_schema(), json_dumps_params={"indent": 2})


class ConfigChangeOut(Schema):
    op: str = Field(description="create, update or delete")
    object: str = Field(description="kind/key, e.g. workflow/refund-agent")
    fields: dict = Field(description="create: the values; update: {field: {from, to}}; delete: what goes")


class ConfigPlanOut(Schema):
    changes: list[ConfigChangeOut]
    summary: dict[str, int]
    text: str = Field(description="The plan as `manage.py config plan` prints it.")
    sha256: str = Field(description="SHA-256 of the body that was planned.")
    applied: bool


def _body(request: HttpRequest) -> tuple[document.Document, loading.Source, bytes]:
    media = jsonbody.check_media_type(request.content_type or "", request.content_params or {},
                                      accepted=(*YAML_TYPES, jsonbody.JSON_MEDIA_TYPE))
    if len(request.body) > MAX_BODY:
        raise Problem(413, "payload_too_large", "A configuration is at most 2 MiB.")
    text = jsonbody.decode(request.body, utf8_bom=media in YAML_TYPES)
    try:
        if media == jsonbody.JSON_MEDIA_TYPE:
            data = jsonbody.loads(text)
            source = loading.Source(data if isinstance(data, dict) else {}, {(): ("body", 1)})
            if not isinstance(data, dict):
                raise loading.ConfigError([loading.Problem("body", 1, "", "a configuration is an object")])
            doc = loading.validate(source)
        else:
            doc, source = loading.load_text(text, "body")
    except loading.ConfigError as exc:
        raise _invalid(exc) from None
    return doc, source, request.body


def _invalid(exc: loading.ConfigError) -> Problem:
    return Problem(422, "invalid_configuration", f"{len(exc.problems)} problem(s) in the configuration; "
                   "nothing was changed. " + "; ".join(str(p) for p in exc.problems[:3]),
                   errors=[FieldError(p.field or "", f"line {p.line}: {p.message}" if p.line else p.message)
                           for p in exc.problems])


def _account_with_config(request: HttpRequest):
    account = service_account_of(request)
    if account is None:
        raise Problem(403, "forbidden", "This token's service account does not hold the config permission.")
    require_account_permission(account, "config")
    return account


def _out(plan: planning.Plan, digest: str, applied: bool) -> ConfigPlanOut:
    return ConfigPlanOut(changes=[ConfigChangeOut(**c.as_dict()) for c in plan.changes], summary=plan.summary(),
                   text=plan.text(), sha256=digest, applied=applied)


@router.post("/config/plan", response=ConfigPlanOut, summary="What applying this configuration would change")
def plan(request: HttpRequest, prune: bool = False) -> ConfigPlanOut:
    """Changes nothing. 422 `invalid_configuration` names each problem's field and line."""
    _account_with_config(request)
    doc, source, raw = _body(request)
    try:
        planned = planning.plan(doc, source, prune=prune)
    except loading.ConfigError as exc:
        raise _invalid(exc) from None
    return _out(planned, planning.sha256(raw), applied=False)


@router.post("/config/apply", response=ConfigPlanOut, summary="Apply this configuration, all of it or nothing")
@idempotent(required=True)
def apply(request: HttpRequest, prune: bool = False) -> ConfigPlanOut:
    """One transaction: every change through its audited service, then `config.applied`. Acts as the
    service account's owner, who must be an administrator."""
    account = _account_with_config(request)
    if not governance_services.is_administrator(account.owner):
        raise Problem(403, "forbidden", f"Applying acts as the account's owner, {account.owner.get_username()}, "
                      "who is not an administrator.")
    doc, source, raw = _body(request)
    digest = planning.sha256(raw)
    try:
        planned = planning.plan(doc, source, prune=prune)
        if not planned.empty:
            planning.apply(planned, actor=account.owner, digest=digest, origin="body",
                           via=f"api: service account {account.name}")
    except loading.ConfigError as exc:
        raise _invalid(exc) from None
    return _out(planned, digest, applied=not planned.empty)
