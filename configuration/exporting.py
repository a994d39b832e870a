"""The live configuration as a ringfence.yaml document: `config export | config plan -` shows no change."""

from __future__ import annotations

from typing import Any

import yaml

from configuration import identity as identity_section
from configuration import metric_providers as provider_section
from configuration.planning import live


def _time(value: str) -> str:
    return value[:5] if value.endswith(":00") else value


def _rules(rules: list[dict]) -> list[dict]:
    out = []
    for rule in rules:
        entry: dict[str, Any] = {"when": rule["when"], "then": rule["then"]}
        if rule["reason"]:
            entry["reason"] = rule["reason"]
        if rule["then"] == "approve":
            entry["quorum"] = rule["quorum"]
            if rule["approver_roles"]:
                entry["approver_roles"] = rule["approver_roles"]
        out.append(entry)
    return out


def _route(route: dict) -> dict:
    """A notification route as `notify:` writes it."""
    names = {"events": "events", "emails": "email", "slack_channel": "slack", "webhook_url": "webhook"}
    entry: dict[str, Any] = {names[name]: route[name] for name in names if route[name]}
    if route["pagerduty_routing_key_env"]:
        entry["pagerduty"] = {"routing_key_env": route["pagerduty_routing_key_env"]}
    return entry


def document() -> dict:
    state = live()
    identity_section.complete_live(state, {})  # a mapping's grants are the identity provider's, not the file's
    by_kind: dict[str, dict[str, dict]] = {}
    for (kind, key), fields in sorted(state.items()):
        by_kind.setdefault(kind, {})[key] = fields
    workflows = []
    for slug, wf in by_kind.get("workflow", {}).items():
        entry: dict[str, Any] = {"slug": slug, "name": wf["name"]}
        for name in ("description", "owning_team"):
            if wf[name]:
                entry[name] = wf[name]
        entry.update(environment=wf["environment"], tier=wf["tier"])
        if wf["off_hours_tier"] is not None:
            entry["off_hours_tier"] = wf["off_hours_tier"]
        entry["business_hours"] = {"timezone": wf["timezone"], "days": wf["days"], "start": _time(wf["start"]),
                                   "end": _time(wf["end"])}
        if wf["holidays"]:
            entry["business_hours"]["holidays"] = wf["holidays"]
        actions = []
        for key, action in by_kind.get("action", {}).items():
            if key.split("/")[0] != slug:
                continue
            item: dict[str, Any] = {"name": key.split("/")[1], "risk": action["risk"], "quorum": action["quorum"]}
            if action["description"]:
                item["description"] = action["description"]
            for listname, kind in (("rules", "rules"), ("shadow_rules", "shadow_rules")):
                rules = by_kind.get(kind, {}).get(key, {}).get("rules", [])
                if rules:
                    item[listname] = _rules(rules)
            actions.append(item)
        if actions:
            entry["actions"] = actions
        policies = [{"mode": key.split("/")[1], "hours": key.split("/")[2],
                     "terminal_action": policy["terminal_action"],
                     "levels": [{k: v for k, v in level.items() if v or k == "timeout_seconds"}
                                for level in policy["levels"]]}
                    for key, policy in by_kind.get("policy", {}).items() if key.split("/")[0] == slug]
        if policies:
            entry["escalation_policies"] = policies
        containment = {key.split("/")[1]: {k: v for k, v in owners.items() if v}
                       for key, owners in by_kind.get("containment", {}).items() if key.split("/")[0] == slug}
        if containment:
            entry["containment"] = containment
        scope = {key.split("/", 1)[1]: grant["permissions"]
                 for key, grant in by_kind.get("scope", {}).items() if key.split("/")[0] == slug}
        if scope:
            entry["scope"] = scope
        plans = [{"release_version": key.split("/", 1)[1], **plan}
                 for key, plan in by_kind.get("plan", {}).items() if key.split("/")[0] == slug]
        if plans:
            entry["rollout_plans"] = plans
        if routes := by_kind.get("routes", {}).get(slug):
            entry["notify"] = [_route(route) for route in routes["routes"]]
        workflows.append(entry)
    return {
        "version": 1,
        "metrics": [{"slug": slug, **m} for slug, m in by_kind.get("metric", {}).items()],
        **provider_section.exported(state),
        "service_accounts": [{"name": name, **{k: v for k, v in a.items() if k != "permissions" or v}}
                             for name, a in by_kind.get("service_account", {}).items()],
        "workflows": workflows,
        **identity_section.exported(state),
    }


def export_yaml() -> str:
    header = "# Ringfence configuration, exported from the live installation (tokens are never exported).\n"
    return header + yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=110)
