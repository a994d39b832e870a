"""The plan page's table of the latest metric provider fetches (rollouts.providers)."""

from __future__ import annotations

from django import template

from rollouts import providers
from rollouts.models import MetricFetch, RolloutPlan

register = template.Library()


@register.simple_tag
def recent_metric_fetches(plan: RolloutPlan, limit: int = 10) -> list[MetricFetch]:
    return providers.recent_fetches(plan, limit) if plan.pk else []
