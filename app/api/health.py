"""The API's probes, outside every API key: ``/healthz`` (the process answers) and ``/readyz``
(the broker and the session store answer: 200, else a 503 problem naming the failed checks).

The checks are the workers' (:mod:`app.ops.health`): each within ``health.check_timeout_s``, in
parallel, results reused for ``health.cache_s``; a hung dependency never piles up threads.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api import problems
from app.config import Settings
from app.memory.sessions import SessionStore
from app.ops.health import CheckResult, Checks, redis_checks

router = APIRouter(include_in_schema=False)  # probes for orchestrators, not the run API


class ApiHealth:
    """The readiness checks of one app: broker (and Redis), session store."""

    def __init__(self, settings: Settings, store: SessionStore) -> None:
        self._clients, checks = redis_checks(settings)

        def store_check() -> CheckResult:
            store.ping()
            return CheckResult(True, "SELECT 1 answered")

        checks["session_store"] = store_check
        h = settings.health
        self.checks = Checks(checks, h.check_timeout_s, h.cache_s)

    def close(self) -> None:
        self.checks.close()
        for client in self._clients:
            client.close()


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    """200 while the process serves requests (a liveness probe)."""
    return {"live": True}


@router.get("/readyz")
async def readyz(request: Request) -> Any:
    """200 with each check when the broker and the session store answer; else 503."""
    health: ApiHealth = request.app.state.health
    results = await run_in_threadpool(health.checks.results)
    failed = [f"{name} ({r.detail})" for name, r in results.items() if not r.ok]
    if failed:
        detail = "not ready: " + "; ".join(failed)
        return problems.response(problems.problem(problems.UNAVAILABLE, detail))
    checks = {name: {"ok": r.ok, "detail": r.detail} for name, r in results.items()}
    return JSONResponse({"ready": True, "checks": checks})
