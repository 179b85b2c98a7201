"""The worker's web pages (contract §7): ``/metrics``, ``/healthz``, ``/readyz``."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nextbest.metrics import Metrics


def readiness(app: faust.App) -> dict[str, bool]:
    """Ready once partitions are assigned, the table recovered, and no rebalance runs."""
    recovered = bool(app.tables.recovery.completed.is_set())  # type: ignore[attr-defined]
    assigned = bool(app.consumer.assignment()) if app.consumer else False
    ready = recovered and assigned and not app.rebalancing
    return {"ready": ready, "recovered": recovered, "assigned": assigned}


def add_pages(app: faust.App, metrics: Metrics) -> None:
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(
            generate_latest(metrics.registry),
            content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4",
        )

    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    async def readyz(web: Any, request: Any) -> Any:
        body = readiness(app)
        return web.json(body, status=200 if body["ready"] else 503)

    app.page("/metrics")(metrics_page)
    app.page("/healthz")(healthz)
    app.page("/readyz")(readyz)
