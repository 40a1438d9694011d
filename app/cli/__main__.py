"""``python -m app.cli``: the ``agentq`` command."""

from app.cli import main

main()
