"""``GET /metrics``: Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(registry: MetricsDep) -> Response:
    """Requests by route and status, latency, cells predicted, errors by kind, the served model's version."""
    content, content_type = registry.render()
    return Response(content, media_type=content_type)
