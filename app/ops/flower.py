"""``agentq flower``: Flower on the broker, refusing to start without HTTP basic auth.

Flower runs in this process (no child process): the credentials come from
``AGENTQ_FLOWER__BASIC_AUTH`` (or the file ``AGENTQ_FLOWER__BASIC_AUTH_FILE`` names) and are
handed to Flower in memory, so they never appear on a command line (``ps``) or in a log line.

What Flower shows of a step travels in Celery's own task fields, so its HTTP API shows it too
(its ``format_task`` hook reaches the pages only): the name is the agent type (the message's
``shadow``), the task id is the run id (step 0) or ``<run id>:<step>``, the result names what
the step did (``step 0: tool search``), the root id is the run id and the parent id the step
before, and the arguments are shown as :mod:`app.ops.masking` wrote them, secrets masked.
"""

from __future__ import annotations

from app.config import FlowerSettings, Settings
from app.errors import ConfigurationError


def basic_auth_credentials(flower: FlowerSettings) -> str:
    """The ``user:password`` Flower requires; raise ConfigurationError when missing or malformed."""
    if flower.basic_auth is None:
        raise ConfigurationError(
            "Flower needs credentials: set AGENTQ_FLOWER__BASIC_AUTH='user:password' (or "
            "AGENTQ_FLOWER__BASIC_AUTH_FILE to a file holding it); without them anyone who "
            "reaches the port could read task arguments and revoke tasks"
        )
    credentials = flower.basic_auth.get_secret_value()
    user, colon, password = credentials.partition(":")
    if not (colon and user and password):
        # The value itself is never quoted: it may be the password alone.
        raise ConfigurationError(
            "AGENTQ_FLOWER__BASIC_AUTH must be 'user:password' with a non-empty user and password"
        )
    return credentials


# The task list's columns: agent type, run id and step, what the step did, then Flower's own.
TASKS_COLUMNS = "name,uuid,state,result,received,runtime,worker,kwargs"


def flower_options(flower: FlowerSettings) -> list[str]:
    """Flower's command-line options for ``flower`` (nothing secret among them)."""
    options = [
        f"--address={flower.address}",
        f"--port={flower.port}",
        f"--max_tasks={flower.max_tasks}",
        f"--enable_events={flower.enable_events}",
        f"--tasks_columns={TASKS_COLUMNS}",
    ]
    if flower.url_prefix:
        options.append(f"--url_prefix={flower.url_prefix.strip('/')}")
    if flower.purge_offline_workers_s:
        options.append(f"--purge_offline_workers={flower.purge_offline_workers_s}")
    return options


def run_flower(settings: Settings) -> int | None:
    """Serve Flower for the broker of ``settings`` until SIGTERM or Ctrl-C."""
    credentials = basic_auth_credentials(settings.flower)
    import flower.options  # noqa: F401  (defines Flower's tornado options)
    from tornado.options import options

    from app.celery_ext.app import create_celery

    # Set before Flower parses its options: only those on its command line are overwritten.
    options.basic_auth = [credentials]
    app = create_celery(settings)
    return app.start(["flower", *flower_options(settings.flower)])  # type: ignore[no-any-return]
