"""The API root: /api/v1. Routers of the apps are mounted here; errors are problem+json."""

from __future__ import annotations

from ninja import NinjaAPI

api = NinjaAPI(
    title="Ringfence API",
    version="1",
    urls_namespace="api",
    docs_url="/docs",
)
