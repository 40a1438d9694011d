"""A real tritonserver on CPU for the demo and tests, copied out of the nvidia-pytriton wheel.

Recipe: docs in shared/TRITON_ON_CPU.md. PyTriton itself is never installed or imported; the
wheel is only a verified source of ``tritonserver`` 2.51, its libraries and the python backend.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from app.config import ReplicaSettings, Settings, child_env
from app.errors import ConfigurationError, LocalServiceError
from app.local.processes import free_ports, log_tail, stop_process, wait_until

PYTRITON_VERSION = "0.7.0"
PYTRITON_SHA256 = "21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df"
PYTRITON_REQUIREMENT = f"nvidia-pytriton=={PYTRITON_VERSION} --hash=sha256:{PYTRITON_SHA256}"
STUB_NAME = "triton_python_backend_stub"
MARKER = ".agentq-triton"

_WHEEL_SERVER = "pytriton/tritonserver"
_WHEEL_LIBS = "nvidia_pytriton.libs/"


def _marker_text() -> str:
    # The stub is built per Python minor, so an install for another Python is stale.
    return f"nvidia-pytriton {PYTRITON_VERSION} python 3.{sys.version_info.minor}\n"


def _installed(home: Path) -> bool:
    marker = home / MARKER
    return (
        (home / "bin" / "tritonserver").is_file()
        and marker.is_file()
        and marker.read_text() == _marker_text()
    )


def _download_wheel(dest: Path) -> Path:
    if importlib.util.find_spec("pip") is None:
        raise LocalServiceError(
            "pip is not installed in this environment; install agentq[local-model] "
            "to fetch tritonserver from the nvidia-pytriton wheel"
        )
    reqfile = dest / "requirements.txt"
    reqfile.write_text(PYTRITON_REQUIREMENT + "\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
           "-r", str(reqfile), "-d", str(dest)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("nvidia_pytriton-*.whl"))
    if out.returncode != 0 or not wheels:
        tail = "\n".join((out.stdout + out.stderr).splitlines()[-15:])
        raise LocalServiceError(f"could not download nvidia-pytriton {PYTRITON_VERSION}:\n{tail}")
    return wheels[0]


def _extract(wheel: Path, staging: Path) -> None:
    """Lay out bin/, lib/ and backends/python/ from the wheel (recipe §1)."""
    stub = f"{_WHEEL_SERVER}/python_backend_stubs/3.{sys.version_info.minor}/{STUB_NAME}"
    backend = f"{_WHEEL_SERVER}/backends/python"
    wanted = {
        f"{_WHEEL_SERVER}/bin/tritonserver": "bin/tritonserver",
        f"{backend}/libtriton_python.so": "backends/python/libtriton_python.so",
        f"{backend}/triton_python_backend_utils.py": (
            "backends/python/triton_python_backend_utils.py"
        ),
        stub: f"backends/python/{STUB_NAME}",
    }
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        missing = [name for name in wanted if name not in names]
        if missing:
            raise LocalServiceError(
                f"{wheel.name} lacks {missing} (no python backend stub for "
                f"Python 3.{sys.version_info.minor}?)"
            )
        for name in names:
            if name in wanted:
                target = staging / wanted[name]
            elif name.startswith(_WHEEL_LIBS) and not name.endswith("/"):
                # The 3.13 libpython (31 MB) serves only the 3.13 stub.
                if Path(name).name.startswith("libpython3-") and ".13.so" in name:
                    continue
                target = staging / "lib" / Path(name).name
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    # zipfile drops the exec bits (pitfall 9).
    for exe in ("bin/tritonserver", f"backends/python/{STUB_NAME}"):
        (staging / exe).chmod(0o755)
    (staging / MARKER).write_text(_marker_text())


def install_triton(home: Path) -> Path:
    """Put tritonserver, its libraries and the python backend in ``home``; return ``home``.

    Idempotent: an install marked with this pytriton version and Python minor is kept. The new
    tree is built in a temp folder beside ``home`` and renamed into place, so a failed or
    interrupted install never leaves a half-filled ``home``.
    """
    home = Path(home)
    if _installed(home):
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{home.name}-", dir=home.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the install is shared
    try:
        with tempfile.TemporaryDirectory(prefix="agentq-pytriton-") as download:
            _extract(_download_wheel(Path(download)), staging)
        if home.exists():
            # A stale install (other version or Python): move it aside, then drop it.
            old = Path(tempfile.mkdtemp(prefix=f".{home.name}-old-", dir=home.parent))
            home.rename(old / "tree")
            shutil.rmtree(old, ignore_errors=True)
        staging.rename(home)
    except LocalServiceError:
        raise
    except (OSError, zipfile.BadZipFile) as exc:
        raise LocalServiceError(f"could not install tritonserver into {home}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return home


def server_env(home: Path, base: dict[str, str]) -> dict[str, str]:
    """``base`` plus what the python backend stub needs (recipe §2)."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    # LIBDIR first: otherwise a system libpython of the same minor may win silently.
    ld_path = os.pathsep.join(p for p in (libdir, str(home / "lib")) if p)
    # The stub takes sys.prefix from the first python3 on PATH: this environment's.
    path = os.pathsep.join(p for p in (str(Path(sys.executable).parent), base.get("PATH")) if p)
    return {**base, "LD_LIBRARY_PATH": ld_path, "PATH": path}


_NAME_LINE = re.compile(r'^name:\s*"[^"]*"', re.MULTILINE)
_INSTANCES = re.compile(r"instance_group\s*\[[^\]]*\]")


def repository_with_copies(source: Path, dest: Path, copies: Mapping[str, str]) -> Path:
    """A copy of the model repository ``source`` at ``dest``, plus a model per ``copies``
    entry (new name -> model of ``source`` it copies): same files, renamed, one instance.

    Several models on one local Triton, e.g. two agents each served by a model of its own. A
    copied ``ensemble_stream`` still loads the scripted logic from ``dest/ensemble``.
    """
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for name, original in copies.items():
        if not (source / original / "config.pbtxt").is_file():
            raise LocalServiceError(f"no model {original!r} in {source} to copy as {name!r}")
        shutil.copytree(
            source / original, dest / name, ignore=shutil.ignore_patterns("__pycache__")
        )
        config = dest / name / "config.pbtxt"
        text = _NAME_LINE.sub(f'name: "{name}"', config.read_text(), count=1)
        # One stub process per instance: one is enough for a second model.
        text = _INSTANCES.sub("instance_group [ { count: 1 kind: KIND_CPU } ]", text, count=1)
        config.write_text(text)
    return dest


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent PID, start time) of a process from /proc, or None if it is gone."""
    try:
        # The name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> dict[int, int]:
    """PID -> start time of every process below ``pid`` (empty where there is no /proc).

    The python backend starts each stub through ``sh -c``, so stubs are children or
    grandchildren of the server.
    """
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(int(entry.name))
        if stat is not None:
            parents.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child, started in parents.get(todo.pop(), []):
            found[child] = started
            todo.append(child)
    return found


def _is_stub(pid: int) -> bool:
    try:  # /proc comm holds the first 15 characters of the executable's name
        return Path(f"/proc/{pid}/comm").read_text().strip() == STUB_NAME[:15]
    except OSError:
        return False


def _shm_regions(pids: list[int]) -> set[Path]:
    """The python backend's shared-memory files mapped by ``pids``."""
    found: set[Path] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                if path.startswith("/dev/shm/triton_python_backend_shm_region"):
                    found.add(Path(path.removesuffix(" (deleted)")))
    return found


def _kill_leftovers(procs: dict[int, int]) -> None:
    for pid, started in procs.items():
        stat = _stat(pid)
        # Same start time: still the process we saw, not a new one that reused the PID.
        if stat is not None and stat[1] == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


class TritonServer:
    """tritonserver on free loopback ports, serving ``model_repository``; stopped by its PID."""

    def __init__(
        self,
        home: Path,
        model_repository: Path,
        *,
        log_path: Path | None = None,
        ready_timeout_s: float = 60,
        env: dict[str, str] | None = None,
        ports: tuple[int, int, int] | None = None,
    ) -> None:
        """``ports`` (http, grpc, metrics) fixes the ports, e.g. to restart a replica where its
        clients expect it; by default free ports are picked at each start."""
        self.home = Path(home)
        self.model_repository = Path(model_repository)
        self.ready_timeout_s = ready_timeout_s
        self.base_env = env if env is not None else child_env({})
        self.proc: subprocess.Popen[bytes] | None = None
        self.fixed_ports = ports
        self.ports: tuple[int, int, int] = ports or (0, 0, 0)  # http, grpc, metrics
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log_path = log_path
        self._tree: dict[int, int] = {}  # the server's stubs (and their sh wrappers)

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr."""
        if self._log_path is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="agentq-triton-")
            self._log_path = Path(self._tmp.name) / "triton.log"
        return self._log_path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:<port>``, as tritonclient.grpc takes it."""
        return f"127.0.0.1:{self.ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[2]}/metrics"

    @property
    def ready_url(self) -> str:
        return f"{self.http_url}/v2/health/ready"

    def replica(self, weight: float = 1.0) -> ReplicaSettings:
        """This server as a replica of agentq's pool: gRPC, readiness and metrics URLs."""
        return ReplicaSettings(
            url=self.grpc_url,
            health_url=self.ready_url,
            metrics_url=self.metrics_url,
            weight=weight,
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        """The tritonserver command line (recipe §3)."""
        http, grpc, metrics = self.ports
        return [
            str(self.home / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.home / 'backends'}",
            "--http-address=127.0.0.1", f"--http-port={http}",
            "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
            "--metrics-address=127.0.0.1", f"--metrics-port={metrics}",
            "--log-verbose=0", "--exit-timeout-secs=5", "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
        ]  # fmt: skip

    def start(self) -> TritonServer:
        """Start the server and wait until ``/v2/health/ready`` answers 200 (all models loaded)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not (self.home / "bin" / "tritonserver").is_file():
            raise LocalServiceError(f"no tritonserver in {self.home}: run `agentq triton install`")
        if not self.model_repository.is_dir():
            raise LocalServiceError(f"model repository {self.model_repository} does not exist")
        for attempt in range(2):
            self.ports = self.fixed_ports or tuple(free_ports(3))  # type: ignore[assignment]
            outcome = self._launch()
            if outcome == "ready":
                return self
            # A port taken between picking and binding ends the server at once: pick anew.
            retry = self.fixed_ports is None and attempt == 0
            if retry and "already in use" in log_tail(self.log_path).lower():
                continue
            break
        raise LocalServiceError(
            f"tritonserver {outcome} (log {self.log_path}):\n{log_tail(self.log_path)}"
        )

    def _launch(self) -> str:
        """Run the server once: "ready", or why not (the process is stopped then)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_env(self.home, self.base_env),
                cwd=self.log_path.parent,
            )
        if wait_until(self._ready, self.ready_timeout_s, self.proc):
            # Remember the stubs now: a hard exit of the server reparents them.
            self._tree = descendants(self.proc.pid)
            return "ready"
        code = self.proc.poll()
        self._terminate()  # stubs it started may outlive it
        if code is not None:
            return f"exited with code {code}"
        # A stub that cannot start leaves the server "loading" forever (pitfall 1).
        return f"was not ready within {self.ready_timeout_s:.0f} s"

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.ready_url, timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _terminate(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server by PID, then its leftover stubs and their shared memory."""
        if self.proc is None:
            return
        tree = {**self._tree, **descendants(self.proc.pid)}
        regions = _shm_regions([self.proc.pid, *tree]) if self.proc.poll() is None else set()
        stop_process(self.proc, timeout_s=10.0, sig=sig)
        _kill_leftovers(tree)
        self._tree = {}
        for region in regions:  # a stub that did not exit cleanly leaves it (pitfall 8)
            region.unlink(missing_ok=True)

    @property
    def stub_pids(self) -> list[int]:
        """PIDs of the python backend stubs (one per model instance) while the server runs."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [p for p in descendants(self.proc.pid) if _is_stub(p)]

    def kill(self) -> None:
        """SIGKILL the server, as a crashed replica; its stubs and shared memory go too."""
        self._terminate(signal.SIGKILL)

    def stop(self) -> int | None:
        """SIGTERM, up to 10 s, then SIGKILL; leftover stubs are killed. Idempotent."""
        if self.proc is None:
            return None
        self._terminate()
        code = self.proc.returncode
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._log_path = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Stop(Exception):
    """SIGINT or SIGTERM reached ``serve``."""


def _stop_on(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def serve(home: Path, model_repository: Path) -> int:
    """Run tritonserver until SIGINT or SIGTERM, then stop it and every process it started
    (by PID). Both are handled even when SIGINT came ignored, as in a background job."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_on)
    server = TritonServer(home, model_repository)
    try:
        server.start()
        print(f"grpc {server.grpc_url}  http {server.http_url}  metrics {server.metrics_url}")
        print(f"log {server.log_path}; Ctrl-C or SIGTERM stops it", flush=True)
        code = server.proc.wait()  # type: ignore[union-attr]
        print(f"tritonserver exited with code {code}", file=sys.stderr)
        return 1
    except _Stop as stop:
        print(f"{stop}: stopping tritonserver and its stubs", flush=True)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        server.stop()


def with_embedding(repository: Path, tmp: Path) -> Path:
    """``repository`` plus long-term memory's embedding model (``minilm``, ``minilm_tokenizer``)
    when the ``embedding`` extra is installed (a copy in ``tmp``, or ``repository`` itself when
    it already lies in ``tmp``); else ``repository`` as it is."""
    from app.local import embedding

    if not embedding.available():
        return repository
    dest = repository if repository.is_relative_to(tmp) else tmp / "models"
    embedding.repository_with_embedding(repository, dest)
    print(f"embedding model served too: {', '.join(embedding.MODELS)}", flush=True)
    return dest


def serve_local_model(home: Path) -> int:
    """:func:`serve` the real local model (the ``llm`` extra), after printing the variables
    that make workers render and count for it (its tokenizer folder lives while it runs)."""
    from app.local import llm

    with tempfile.TemporaryDirectory(prefix="agentq-llm-") as tmp:
        folder = llm.prepare_model(Path(tmp) / "tokenizer")
        repository = with_embedding(llm.llm_repository(Path(tmp) / "models"), Path(tmp))
        print("workers and producers calling it need:")
        for name, value in llm.worker_env(folder).items():
            print(f"  export {name}={shlex.quote(value)}")
        return serve(home, repository)


_USAGE = "usage: python -m app.local.triton install | serve [--model scripted|local]"


def run_serve(settings: Settings, model: str = "scripted") -> int:
    """``agentq triton serve``: install tritonserver if needed, then :func:`serve` the scripted
    model or the real local one (``model``: ``scripted`` or ``local``); its exit code."""
    if model == "local":
        from app.local.llm import gguf_path

        try:
            gguf_path()
        except ConfigurationError as exc:
            print(f"agentq: {exc}", file=sys.stderr)
            return 2
    home = install_triton(settings.triton.home)
    print(f"tritonserver in {home}", flush=True)
    if model == "local":
        return serve_local_model(home)
    with tempfile.TemporaryDirectory(prefix="agentq-triton-") as tmp:
        return serve(home, with_embedding(settings.triton.model_repository, Path(tmp)))


def main(argv: list[str] | None = None) -> int:
    """``python -m app.local.triton install|serve [--model scripted|local]``: extract
    tritonserver, or run it with the scripted model or the real local one (as ``agentq
    triton install|serve`` do)."""
    args = sys.argv[1:] if argv is None else argv
    settings = Settings()
    if args == ["install"]:
        print(f"tritonserver in {install_triton(settings.triton.home)}", flush=True)
        return 0
    if args[:1] != ["serve"] or args[1:] not in ([], ["--model", "scripted"], ["--model", "local"]):
        print(_USAGE, file=sys.stderr)
        return 2
    return run_serve(settings, args[2] if args[1:] else "scripted")


if __name__ == "__main__":
    sys.exit(main())
