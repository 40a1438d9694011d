"""``agentq runs list|show``: runs as ``GET /v1/runs`` and ``GET /v1/runs/{id}`` show them,
queued runs included (:mod:`app.ops.runs`); ids are never cut, ``--json`` prints the API's
JSON bodies."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from app.cli import console, echo_json, main, print_table
from app.cli.options import tenant_option
from app.config import Settings
from app.ops.runs import STATUSES

if TYPE_CHECKING:
    from app.api.models import ChildView, RunView, WaitingView

MAX_LIMIT = 500


@main.group()
def runs() -> None:
    """Runs: queued (submitted, no step stored yet), running, waiting (parked), succeeded,
    failed and cancelled."""


@contextmanager
def _sources() -> Iterator[tuple[Settings, Any, Any, Any]]:
    """Settings, the session store, the Redis client and the broker's client."""
    from app.memory.sessions import SessionStore
    from app.ops.redis_clients import redis_client

    settings = Settings()
    store = SessionStore.from_url(settings.database_url, migrate=False)
    client = redis_client(settings)
    broker = (
        client if settings.broker == settings.redis_url else redis_client(settings, settings.broker)
    )
    try:
        yield settings, store, client, broker
    finally:
        for opened in {id(client): client, id(broker): broker}.values():
            opened.close()
        store.close()


@runs.command("list")
@click.option("--agent", default=None, help="Only this agent type's runs.")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only these runs.")
@click.option("--session", "session_id", default=None, help="Only this session's runs.")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=50, show_default=True)
@click.option("--cursor", default=None, help="Where the previous page ended (it prints it).")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout (GET /v1/runs's body).")
@tenant_option
def runs_list(
    agent: str | None,
    status: str | None,
    session_id: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
    tenant: str,
) -> None:
    """Runs newest first: queued ones by when they were submitted, the others by when their
    first step started."""
    from app.api.models import RunItem, RunList
    from app.errors import BadCursorError
    from app.ops.runs import list_runs

    with _sources() as (settings, store, client, broker):
        try:
            page = list_runs(
                store,
                client,
                broker=broker,
                agent=agent,
                status=status,
                session_id=session_id,
                cursor=cursor,
                limit=limit,
                queued_ttl_s=settings.limits.queued_ttl_s,
                tenant=tenant,
            )
        except BadCursorError as exc:
            raise click.BadParameter(str(exc), param_hint="--cursor") from None
    if as_json:
        body = RunList(items=[RunItem.of(run) for run in page.items], next_cursor=page.next_cursor)
        echo_json(body.model_dump(mode="json"))
        return
    table = Table("run", "agent", "status", "steps", "created (UTC)", "session", "error")
    for column in table.columns[:5]:
        column.no_wrap = True  # ids whole, at any width
    for run in page.items:
        table.add_row(
            run.id,
            run.agent,
            run.status,
            str(run.steps),
            run.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            Text(run.session_id or ""),
            run.error_type or "",
        )
    print_table(table)
    if page.next_cursor is not None:
        console.print(f"next page: --cursor {page.next_cursor}", highlight=False, soft_wrap=True)


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout (GET /v1/runs/{id}'s body).")
@tenant_option
def runs_show(run_id: str, as_json: bool, tenant: str) -> None:
    """One run: status, answer or error (and traceback), its parent and what it waits for, its
    sub-agent runs as a tree, and each step's reply, tool calls with arguments and results,
    tokens, latency, worker and replica."""
    from app.api.models import RunView
    from app.memory.run_tree import MAX_NODES
    from app.ops.runs import run_detail

    with _sources() as (_settings, store, client, broker):
        detail = run_detail(store, client, run_id, broker=broker, tenant=tenant)
    if detail is None:
        raise click.ClickException(
            f"no run {run_id}: not in the session store, nor queued (submitted within "
            "limits.queued_ttl_s)"
        )
    view = RunView.of_detail(detail)
    if as_json:
        echo_json(view.model_dump(mode="json"))
        return
    fields = Table.grid(padding=(0, 2))
    fields.add_column(no_wrap=True, style="bold")
    fields.add_column(overflow="fold")
    for name, value in (
        ("run", view.id),
        ("agent", view.agent),
        ("status", view.status),
        ("session", view.session_id),
        ("parent", view.parent_id),
        ("waiting for", _waiting(view.waiting_for) if view.waiting_for else None),
        ("created", view.created_at),
        ("finished", view.finished_at),
        ("answer", view.answer),
        ("error", f"{view.error} ({view.error_type})" if view.error else None),
    ):
        if value is not None:
            fields.add_row(name, Text(str(value)))  # text as it is: no markup in answers
    console.print(fields, highlight=False)
    if view.children:
        console.print(_tree(view), highlight=False)
        if view.children_truncated:
            console.print(f"(more sub-agent runs than shown: the tree is cut at {MAX_NODES})")
    if view.steps:
        table = Table("step", "kind", "tool calls", "tokens in/out", "ms", "worker", "replica")
        for column in (table.columns[0], table.columns[1], table.columns[3]):
            column.no_wrap = True
        for step in view.steps:
            calls = "\n".join(
                f"{c.name}({_short(c.args)}) -> {'error ' if c.error else ''}{_short(c.result)}"
                for c in step.tool_calls
            )
            table.add_row(
                str(step.index),
                step.kind,
                Text(calls or _short(step.model_output)),
                f"{step.tokens_in}/{step.tokens_out}",
                f"{step.latency_ms:.0f}",
                step.worker or "",
                step.replica or "",
            )
        print_table(table)
    if view.traceback:
        console.print(view.traceback, highlight=False, markup=False)


def _waiting(wait: WaitingView) -> str:
    """What a parked run waits for, in words."""
    if wait.kind == "signal":
        text = f"signal {wait.signal!r}"
    elif wait.kind == "children":
        text = f"{wait.pending} sub-agent run(s) to end"
    else:
        text = f"a timer, due {_utc(wait.due_at)}"
    if wait.kind != "timer" and wait.due_at is not None:
        text += f", times out {_utc(wait.due_at)} ({wait.on_timeout})"
    return f"{text} (step {wait.step})"


def _utc(when: datetime | None) -> str:
    return "" if when is None else f"{when:%Y-%m-%d %H:%M:%S} UTC"


def _tree(view: RunView) -> Tree:
    """The run and its sub-agent runs, each with its own: agent, run id, status, answer or
    error cut short."""
    tree = Tree(Text.assemble((view.agent, "bold"), f"  {view.id}  {view.status}"))

    def add(node: Tree, children: list[ChildView]) -> None:
        for child in children:
            outcome = f"error: {child.error}" if child.error else _short(child.answer, 80)
            label = Text.assemble(
                (child.agent, "bold"),
                f"  {child.id}  {child.status}",
                f"  (retry {child.attempt - 1})" if child.attempt > 1 else "",
                f"  {outcome}" if child.error or child.answer is not None else "",
            )
            add(node.add(label), child.children)

    add(tree, view.children)
    return tree


def _short(value: Any, width: int = 200) -> str:
    """``value`` as one line of JSON-ish text, cut at ``width`` (``--json`` has it whole)."""
    import json

    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
