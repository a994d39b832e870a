"""Rollout endpoints of the agent API (signals, proposals, route, context tags)."""

from __future__ import annotations

from ninja import Router

router = Router(tags=["rollouts"])
