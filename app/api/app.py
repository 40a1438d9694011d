"""The ASGI app of the HTTP run API: :func:`create_app` builds it from settings.

``agentq api`` serves it with uvicorn (:func:`app_from_environment` in each worker process).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from celery import Celery
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from app.api import inspector, problems
from app.api.health import ApiHealth
from app.api.health import router as health_router
from app.api.limits import BodyLimit, body_limit
from app.api.models import EVENT_DATA
from app.api.runs import router as runs_router
from app.api.sessions import router as sessions_router
from app.api.state import ApiState
from app.api.tenants import router as tenants_router
from app.celery_ext.context import context_of
from app.config import Settings
from app.memory.api_keys import ApiKeyStore
from app.memory.sessions import SessionStore
from app.ops import logs
from app.ops.redis_clients import async_redis_client

TITLE = "agentq run API"
API_VERSION = "1"
_PROBLEM_REF = "#/components/schemas/Problem"
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"]
CORS_RESPONSE_HEADERS = ["Location", "Idempotent-Replayed", "Retry-After"]
"""Headers other origins' pages may send and read (beyond those CORS always allows)."""


def create_app(settings: Settings, celery: Celery | None = None) -> FastAPI:
    """The API on ``settings``; ``celery``: the app runs are submitted through (default: one
    built from ``settings``, closed with the app). The session store is migrated first when
    ``auto_migrate``."""
    owned = celery is None
    if celery is None:
        from app.celery_ext.app import create_celery

        celery = create_celery(settings)
    store = SessionStore.from_url(settings.database_url, migrate=settings.auto_migrate)
    context_of(celery).store = store  # submits record accepted runs in it
    state = ApiState(settings, celery, store, ApiKeyStore(store.engine, settings.api.key_cache_s))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.aredis = async_redis_client(settings)
        app.state.health = ApiHealth(settings, store)
        try:
            yield
        finally:
            app.state.health.close()
            await state.aredis.aclose()
            store.close()
            if owned:
                celery.close()

    app = FastAPI(
        title=TITLE,
        version=API_VERSION,
        description="Submit agent runs, read them and follow their tokens (docs/api.md).",
        lifespan=lifespan,
    )
    app.state.api = state
    app.add_middleware(BodyLimit, max_bytes=body_limit(context_of(celery).registry, settings))
    if settings.api.cors_origins:  # added last: outermost, so refusals carry its headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_RESPONSE_HEADERS,
        )
    problems.install(app)
    app.include_router(health_router)  # before any key: probes carry none
    app.include_router(runs_router)
    app.include_router(sessions_router)
    app.include_router(tenants_router)
    inspector.install(app)  # pages, outside the OpenAPI document
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document of ``app``, with error bodies as ``application/problem+json`` and
    the schema of each event's data under ``x-events`` of the events route (built once)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for path in doc["paths"].values():
        for operation in path.values():
            for code, answer in operation.get("responses", {}).items():
                content = answer.get("content", {})
                if int(code) >= 400 and "application/json" in content:
                    # FastAPI's own 422 body is replaced by a problem too (app.api.problems).
                    content[problems.MEDIA_TYPE] = {"schema": {"$ref": _PROBLEM_REF}}
                    del content["application/json"]
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    events: dict[str, Any] = {}
    for name, model in EVENT_DATA.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        events[name] = {"$ref": f"#/components/schemas/{model.__name__}"}
    stream = doc["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]["200"]
    stream["content"]["text/event-stream"]["x-events"] = events
    app.openapi_schema = doc
    return doc


def app_from_environment() -> FastAPI:
    """The API on the environment's settings (uvicorn's factory in each worker process)."""
    settings = Settings()
    logs.configure(settings.log_format)
    return create_app(settings)
