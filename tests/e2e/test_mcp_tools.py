"""An agent whose tools come from real MCP servers (tests.fixtures.mcp_server, built with the
SDK), one started by the worker over stdio and one over streamable HTTP with a bearer token
from the worker's environment, run by a real worker on the local Triton: the scripted model
asks for the tools by their listed names. A server that dies mid-run is a tool error for the
model and the run goes on; a server unreachable at start is named by /readyz; the worker's
stdio servers stop with it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

pytest.importorskip("mcp")

from app.celery_ext.app import create_celery
from app.local.processes import free_port
from app.producer.submit import submit
from tests.fixtures.mcp_server import STDIO, http_server
from tests.fixtures.waiting import alive, wait_for

pytestmark = pytest.mark.e2e

TOKEN = "e2e-t0ken"


@pytest.fixture
def mcp_worker(settings, tmp_path: Path, start_worker) -> Iterator[tuple[object, int, object]]:
    """A worker serving agent ``toolsmith`` (servers: local over stdio, remote over HTTP,
    gone: nothing listens), its Celery app, health port and process."""
    with http_server(token=TOKEN) as (url, _):
        agents = {
            "agents": [
                {
                    "name": "toolsmith",
                    "max_steps": 6,
                    "mcp_servers": [
                        {"name": "local", **STDIO},
                        {
                            "name": "remote",
                            "url": url,
                            "headers_from_env": {"Authorization": "E2E_MCP_AUTH"},
                        },
                        {
                            "name": "gone",
                            "url": f"http://127.0.0.1:{free_port()}/mcp",
                            "connect_timeout_s": 3,
                        },
                    ],
                }
            ]
        }
        path = tmp_path / "agents.yaml"
        path.write_text(yaml.safe_dump(agents))
        local = settings.model_copy(update={"agents_file": path})
        app = create_celery(local)
        port = free_port()
        env = {"E2E_MCP_AUTH": f"Bearer {TOKEN}", "AGENTQ_HEALTH__PORT": str(port)}
        worker = start_worker(["toolsmith"], env=env, settings=local, celery=app)
        try:
            yield app, port, worker
        finally:
            app.close()


def test_an_agent_calls_tools_of_a_stdio_and_an_http_mcp_server(mcp_worker, store) -> None:
    app, port, _ = mcp_worker
    asks = '[tool:local__add {"a": 2, "b": 3}] [tool:remote__shout {"text": "hi"}] then answer'
    result = submit("toolsmith", asks, celery=app)
    assert result.get(timeout=90) == 'Answer: {"result":"HI"}'
    run = store.load_run(result.id)
    assert run is not None and run.status == "succeeded"
    add, shout, _ = run.steps
    assert [(c.name, c.error, c.result) for c in add.tool_calls + shout.tool_calls] == [
        ("local__add", False, {"result": 5}),
        ("remote__shout", False, {"result": "HI"}),
    ]
    # /readyz names the server that could not be reached; the others serve.
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    assert ready.status_code == 503
    check = ready.json()["checks"]["mcp_servers"]
    assert check["ok"] is False and "gone" in check["detail"]
    assert "local" not in check["detail"] and "remote" not in check["detail"]


def test_a_server_lost_mid_run_is_a_tool_error_and_the_run_goes_on(mcp_worker, store) -> None:
    app, _, worker = mcp_worker
    asks = '[tool:local__whoami {}] [tool:local__crash {}] [tool:local__add {"a": 1, "b": 1}]'
    result = submit("toolsmith", asks, celery=app)
    assert result.get(timeout=90) == 'Answer: {"result":2}'
    run = store.load_run(result.id)
    assert run is not None and run.status == "succeeded"
    who, crash, add, final = run.steps
    [lost] = crash.tool_calls
    assert lost.error and "MCP server 'local' was lost" in lost.result["error"]
    [made] = add.tool_calls
    assert (made.error, made.result) == (False, {"result": 2})  # on a reconnected server
    assert final.kind == "final"
    first_pid = who.tool_calls[0].result["pid"]
    wait_for(lambda: not alive(first_pid), 10, "the crashed server to be gone")
    # The reconnected stdio server stops with the worker.
    later = submit("toolsmith", "[tool:local__whoami {}]", celery=app).get(timeout=90)
    pid = int(later.split('"pid":')[1].split(",")[0])
    assert alive(pid)
    worker.stop()
    wait_for(lambda: not alive(pid), 15, "the worker's stdio MCP server to stop")
