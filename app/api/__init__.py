"""The HTTP run API (``agentq api``): submit runs, read them, follow their events (SSE).

Needs the ``api`` extra (FastAPI, uvicorn, sse-starlette). :func:`app.api.app.create_app`
builds the ASGI app; docs/api.md describes the routes.
"""
