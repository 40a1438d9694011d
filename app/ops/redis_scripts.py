"""Lua scripts kept in ``.lua`` files (shipped as package data), run with ``EVALSHA``.

A script's SHA1 is computed here, so a call sends only the digest. Redis forgets its scripts
when it restarts or on ``SCRIPT FLUSH``: a call that meets ``NOSCRIPT`` loads the script
(``SCRIPT LOAD``) and runs it once more. The first call after start meets it too, which is
how a script gets registered: once per Redis, not once per process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError


class Script:
    """The Lua script in file ``name`` of package ``package``."""

    def __init__(self, package: str, name: str) -> None:
        self.name = name
        self.text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.text.encode(), usedforsecurity=False).hexdigest()

    def load(self, client: Any) -> None:
        """Register the script on ``client``'s Redis (``SCRIPT LOAD``)."""
        client.script_load(self.text)

    def __call__(self, client: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """Run the script on ``client``; loaded first when Redis lost it."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.load(client)  # for the calls that follow
            # The text this once: a flush between the load and an EVALSHA would fail it.
            return client.eval(self.text, len(keys), *keys, *args)

    def queue(self, pipe: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> None:
        """Queue a run of the script on pipeline ``pipe``. If Redis lost the script, the
        pipeline's ``execute`` raises ``NoScriptError`` after running its other commands:
        call the script directly then (that loads it)."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)
